-- Hostile answers against every driver: libcurl blocking, libcurl
-- non-blocking (curl multi) and cosockets inside nginx. One deadline bounds
-- a whole attempt (a drip of headers or body never keeps it alive), bodies
-- are refused while they are read (a 300 MB stream never fills memory),
-- tokens with control bytes and absurd lifetimes are protocol errors, and
-- the OpenResty driver bounds name resolution by the same deadline.
local cjson = require "cjson"
local H = require "helpers"

local sh = H.sh

-- A name this machine resolves to 127.0.0.1 through /etc/hosts (nginx's
-- resolver does not read that file, so it asks the silent DNS server).
local function remote_name()
  for line in io.lines("/etc/hosts") do
    local names = line:match("^%s*127%.[%d%.]+%s+(.+)$")
    for name in (names or ""):gmatch("%S+") do
      if not name:find("localhost", 1, true) then return name end
    end
  end
end

local function peak_kib(pid)
  local f = io.open(("/proc/%d/status"):format(pid))
  local text = f and f:read("*a") or ""
  if f then f:close() end
  return tonumber(text:match("VmHWM:%s*(%d+)"))
end

-- A token answer of exactly n bytes (spaces before its last brace).
local function token_body(n)
  local b = '{"code":"00","data":{"access_token":"abc","expires_in":60}'
  return b .. (" "):rep(n - #b - 1) .. "}"
end
local function raw(head, body)
  return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n" .. head .. "\r\n\r\n" .. body
end

local CASES = {
  -- a reader that took "-5" as a length kept all but the last 4 bytes: a token
  { name = "a negative Content-Length", kind = "protocol",
    fault = { raw = "text", text = raw("Content-Length: -5", token_body(100) .. "XXXX") } },
  -- one that took "1e2" as a number read exactly this 100-byte token answer
  { name = "a Content-Length written as 1e2", kind = "protocol",
    fault = { raw = "text", text = raw("Content-Length: 1e2", token_body(100)) } },
  { name = "an endless drip of header lines", fault = { raw = "header_drip", every = 0.1 }, kind = "timeout" },
  { name = "a body that drips one byte at a time", fault = { raw = "body_drip", every = 0.1 }, kind = "timeout" },
  { name = "300 MB without Content-Length", fault = { raw = "stream" }, kind = "protocol",
    message = "exceeds max_response_bytes" },
  { name = "CR/LF in the access token", kind = "protocol", message = "outside printable ASCII",
    fault = { status = 200, body = '{"code":"00","data":{"access_token":"a\\r\\nX-Injected: yes","expires_in":60}}' } },
  { name = "expires_in 1e308", kind = "protocol", message = "over a year",
    fault = { status = 200, body = '{"code":"00","data":{"access_token":"abc","expires_in":1e308}}' } },
  { name = "expiresAt in year 9999", kind = "protocol", message = "over a year",
    fault = { status = 200, body = '{"code":"00","data":{"access_token":"abc","expiresAt":"9999-12-31T23:59:59Z"}}' } },
}

describe("hostile answers", function()
  local sim
  before_each(function()
    sim = H.sim()
    H.reset()
  end)

  local function check(case, t, err)
    assert.is_nil(t, case.name)
    H.assert_error(err, { kind = case.kind })
    if case.message then assert.matches(case.message, err.message, 1, true) end
  end

  describe("libcurl, blocking", function()
    for _, case in ipairs(CASES) do
      it(case.name, function()
        case.fault.endpoint = "issue"
        assert(sim:fault(case.fault))
        check(case, H.client { timeout = 1 }:issue())
      end)
    end
  end)

  describe("libcurl, non-blocking", function()
    for _, case in ipairs(CASES) do
      it(case.name, function()
        case.fault.endpoint = "issue"
        assert(sim:fault(case.fault))
        local c = H.client { timeout = 1, nonblocking = true }
        local got
        assert(c:start("issue", nil, function(res, err) got = { res, err } end))
        for _ = 1, 400 do
          if got then break end
          c:step()
          c:wait(0.05)
        end
        assert.is_table(got, "the attempt never ended")
        check(case, got[1], got[2])
      end)
    end
  end)

  describe("OpenResty cosockets", function()
    local a, dns
    setup(function()
      local socket = require "socket"
      dns = assert(socket.udp())                 -- a DNS server that never answers
      assert(dns:setsockname("127.0.0.1", 0))
      local _, dns_port = dns:getsockname()
      a = H.openresty_app { extra = "resolver 127.0.0.1:" .. dns_port .. " ipv6=off;" }
    end)
    teardown(function()
      if a then a:stop() end
      if dns then dns:close() end
    end)

    local function hostile(query)
      local out = sh("curl -s --max-time 60 '" .. a.url .. "/hostile?" .. (query or "") .. "'")
      return assert(cjson.decode(out), out)
    end

    for _, case in ipairs(CASES) do
      it(case.name, function()
        case.fault.endpoint = "issue"
        assert(sim:fault(case.fault))
        local r = hostile("timeout=1")
        assert.is_false(r.ok)
        assert.are.equal(case.kind, r.kind, r.message)
        if case.message then assert.matches(case.message, r.message, 1, true) end
        if case.fault.raw == "stream" then
          -- the worker read at most max_response_bytes of it
          assert.is_true(peak_kib(r.pid) < 100 * 1024, "the worker's peak RSS grew to " .. peak_kib(r.pid) .. " KiB")
        end
      end)
    end

    it("refuses a chunk size of more than 15 hex digits, whatever follows", function()
      local wrapped = "10000000000000004"        -- 2^64 + 4: no double holds it, Lua 5.4 would wrap it to 4
      assert(sim:fault { endpoint = "issue", raw = "text",
                         text = raw("Transfer-Encoding: chunked", wrapped .. "\r\n" .. token_body(100) ..
                                    "\r\n0\r\n\r\n") })
      local r = hostile("timeout=1")
      assert.is_false(r.ok)
      assert.are.equal("protocol", r.kind, r.message)
      assert.matches("chunk", r.message, 1, true)
    end)

    it("bounds name resolution by the same deadline", function()
      local host = remote_name()
      assert.is_string(host, "no name for 127.0.0.1 other than localhost in /etc/hosts")
      local r = hostile("timeout=1&base_url=https://" .. host .. ":" .. sim.port)
      assert.is_false(r.ok)
      assert.are.equal("timeout", r.kind, r.message)
      assert.matches("resolving", r.message, 1, true)
      assert.is_nil(a:error_log():find("%[alert%]"))
    end)

    it("bounds name resolution by connect_timeout, not by the whole timeout", function()
      local host = remote_name()
      local r = hostile("timeout=20&connect_timeout=0.5&base_url=https://" .. host .. ":" .. sim.port)
      assert.is_false(r.ok)
      assert.are.equal("timeout", r.kind, r.message)
      assert.matches("resolving", r.message, 1, true)
      -- the 20 s deadline of the attempt was not the one that ended it
      assert.is_true(r.elapsed < 10, "resolving took " .. r.elapsed .. " s")
    end)
  end)

  describe("OpenResty without a resolver", function()
    local a
    setup(function() a = H.openresty_app {} end)
    teardown(function() if a then a:stop() end end)

    it("fails at once with a config error naming the resolver directive", function()
      local host = remote_name()
      local out = sh("curl -s --max-time 60 '" .. a.url .. "/hostile?timeout=20&base_url=https://" ..
                     host .. ":" .. sim.port .. "'")
      local r = assert(cjson.decode(out), out)
      assert.is_false(r.ok)
      assert.are.equal("config", r.kind, r.message)
      assert.matches("resolver", r.message, 1, true)
      assert.is_true(r.elapsed < 10, "took " .. r.elapsed .. " s")
    end)
  end)
end)
