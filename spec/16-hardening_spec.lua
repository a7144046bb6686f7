-- The adversarial review's defects (issue "Hardening"), one block per item:
-- each fails on the code before the fix. Items 3 (memory), 7 (OpenResty
-- bounds) and 13 (CLI) live in 17-memory, 12-openresty and 08-cli.
local oauth = require "nomba.oauth"
local core = require "nomba.oauth.core"
local H = require "helpers"

local LUA = arg and arg[-1] or "lua5.4"

-- A name this machine resolves to 127.0.0.1 that the library must treat as
-- remote: the host's own name from /etc/hosts (never another address).
local function remote_name()
  local f = io.open("/etc/hosts")
  local text = f and f:read("*a") or ""
  if f then f:close() end
  for line in text:gmatch("[^\n]+") do
    local addr, names = line:match("^%s*(127%.[%d%.]+)%s+(.+)$")
    if addr then
      for name in names:gmatch("%S+") do
        if name ~= "localhost" and not name:find("localhost", 1, true) then return name end
      end
    end
  end
  return nil
end

local function new_error(opts)
  local ok, err = pcall(oauth.new, opts)
  assert.is_false(ok, "oauth.new accepted it")
  return tostring(err)
end

-- Runs a Lua snippet in a child interpreter with the test build and extra
-- environment; returns its standard output.
local function child(code, env)
  local parts = { "env -u NO_PROXY -u no_proxy" }
  for k, v in pairs(env or {}) do parts[#parts + 1] = k .. "='" .. v .. "'" end
  local f = assert(io.open(os.tmpname(), "w"))
  local script = os.tmpname()
  f:close()
  f = assert(io.open(script, "w"))
  f:write(code)
  f:close()
  local p = io.popen(table.concat(parts, " ") .. " " .. LUA .. " " .. script .. " 2>&1")
  local out = p:read("*a")
  p:close()
  os.remove(script)
  return out
end

describe("hardening", function()
  local sim
  before_each(function()
    sim = H.sim()
    H.reset()
  end)

  describe("1. URLs are judged on libcurl's parse", function()
    local host = remote_name()

    it("refuses user info that hides a remote host behind a loopback name", function()
      assert.is_string(host, "no name for 127.0.0.1 other than localhost in /etc/hosts")
      local o = sim:client_options()
      for _, u in ipairs { "http://localhost:x@" .. host .. ":18090", "http://127.0.0.1:80@" .. host,
                           "http://localhost:@" .. host, "http://[::1]@" .. host,
                           "https://user:pw@" .. host } do
        o.base_url = u
        assert.matches("'base_url' must not contain user info", new_error(o), 1, true)
      end
    end)

    it("treats a name that resolves to loopback as remote: no plain http", function()
      local o = sim:client_options()
      o.base_url = "http://" .. host .. ":" .. sim.port
      assert.matches("plain http:// is allowed only for a loopback host", new_error(o), 1, true)
    end)

    it("refuses a query or a fragment in base_url, and paths that leave the host", function()
      local o = sim:client_options()
      o.base_url = sim.url .. "/?a=1"
      assert.matches("must not contain a query", new_error(o), 1, true)
      o.base_url = sim.url .. "#x"
      assert.matches("must not contain a fragment", new_error(o), 1, true)
      o.base_url = "https://localhost"
      o.paths = { issue = "/@" .. host .. "/x" }
      local c = oauth.new(o)          -- "/@host" is a path on localhost, which libcurl agrees with
      assert.matches("localhost", tostring(c))
    end)

    it("hands drivers the parts libcurl sees", function()
      local p = assert(core.url("http://127.1:8080/api"))
      assert.are.same({ "http", "127.0.0.1", 8080, "/api", true },
                      { p.scheme, p.host, p.port, p.path, p.loopback })
      assert.is_nil((core.url("http://localhost:x@" .. host)))
    end)
  end)

  describe("2. proxies only when the proxy option names one", function()
    local script = [[
      local oauth = require "nomba.oauth"
      local o = require("nomba.oauth.simulator").attach {
        url = os.getenv("NOMBA_SIM_URL"), cafile = os.getenv("NOMBA_SIM_CAFILE") }:client_options()
      o.proxy = os.getenv("WANT_PROXY")
      o.retries = 0
      local t, err = oauth.new(o):issue()
      io.write(t and "issued" or err.kind)
    ]]

    it("ignores http_proxy, https_proxy and ALL_PROXY", function()
      local env = { NOMBA_SIM_URL = sim.url, NOMBA_SIM_CAFILE = sim.cafile,
                    http_proxy = "http://127.0.0.1:9", https_proxy = "http://127.0.0.1:9",
                    HTTPS_PROXY = "http://127.0.0.1:9", ALL_PROXY = "http://127.0.0.1:9" }
      assert.are.equal("issued", child(script, env))
      assert.are.equal(1, H.count("issue"))
      env.WANT_PROXY = "env"                   -- the explicit opt-in uses them
      assert.are.equal("transport", child(script, env))
      assert.are.equal(1, H.count("issue"))
    end)
  end)

  describe("4. a misbehaving store never raises out of token()", function()
    local function store_of(get)
      local s = oauth.store.memory()
      local calls = { unlock = 0 }
      local real_get, real_unlock = s.get, s.unlock
      s.get = function(self, k)
        calls.get = (calls.get or 0) + 1
        return get(self, k, calls.get, real_get)
      end
      s.unlock = function(self, k)
        calls.unlock = calls.unlock + 1
        return real_unlock(self, k)
      end
      return s, calls
    end

    local answers = {
      ["a table"] = function() return {} end,
      ["true"] = function() return true end,
      ["a function"] = function() return print end,
      ["a raise"] = function() error("boom") end,
      ["a raise whose value raises when printed"] = function()
        error(setmetatable({}, { __tostring = function() error("no") end }))
      end,
      ["an error whose __tostring is not a string"] = function()
        return nil, setmetatable({}, { __tostring = function() return {} end })
      end,
      -- garbage only on the re-read made after the lock was taken
      ["garbage after the lock"] = function(self, k, n, real)
        if n >= 3 and not k:find(":gen", 1, true) then return {} end
        return real(self, k)
      end,
    }
    for name, get in pairs(answers) do
      it("answering " .. name .. ": store_error, the lock released, a token", function()
        local store, calls = store_of(get)
        local events = {}
        local c = H.client { store = store, on_event = function(e) events[#events + 1] = e end }
        local tok, err = c:token()
        assert.is_string(tok, tostring(err))
        local seen = false
        for _, e in ipairs(events) do if e.kind == "store_error" then seen = true end end
        assert.is_true(seen)
        assert.is_nil(store.data[core.store_id(c) .. ":lock"], "the lock is still held")
        assert.is_true(calls.unlock <= 1)
      end)
    end

    it("a store whose lock closes the client gives a closed error", function()
      local store = oauth.store.memory()
      local c, lkey
      local lock = store.lock
      store.lock = function(self, k, ttl)
        lkey = k
        c:close()
        return lock(self, k, ttl)
      end
      c = H.client { store = store }
      local tok, err = c:token()
      assert.is_nil(tok)
      H.assert_error(err, { kind = "closed" })
      assert.is_string(lkey)
      assert.is_nil(store.data[lkey])
    end)
  end)

  describe("5. a hung Redis is bounded by the client's timeout", function()
    it("a server that accepts and never answers", function()
      local socket = require "socket"
      local server = assert(socket.bind("127.0.0.1", 0))   -- never accept(): the kernel completes the handshake
      local _, port = server:getsockname()
      local r = H.redis_client(port)
      local events = {}
      local c = H.client { store = oauth.store.redis(r), timeout = 0.5,
                           on_event = function(e) events[#events + 1] = e end }
      local tok, err = c:token()
      assert.is_string(tok, tostring(err))
      assert.are.equal("store_error", events[1].kind)
      assert.matches("timeout", events[1].message)
      server:close()
    end)
  end)

  describe("6. a child of fork never drives its parent's transfer", function()
    it("five runs: the parent gets its token, the child gets an error", function()
      for _ = 1, 5 do
        H.reset()
        assert(sim:fault { endpoint = "issue", delay = 0.3, pass = true })
        local c = H.client { nonblocking = true }
        local got
        assert(c:start("issue", nil, function(res, err) got = { res, err } end))
        c:step()
        local pid = core._test.fork()
        if pid == 0 then
          -- the child: step as an event loop would
          local deadline = core.now() + 1.5
          while not got and core.now() < deadline do c:step() H.sleep(0.01) end
          local ok = got and got[1] == nil and got[2].message:find("parent process", 1, true)
          core._test.exit(ok and 0 or 1)
        end
        local deadline = core.now() + 5
        while not got and core.now() < deadline do c:step() c:wait(0.05) end
        assert.is_table(got)
        assert.is_table(got[1], tostring(got[2]))
        assert.matches("^eyJ", got[1].access_token)
        assert.are.equal(0, core._test.wait(pid), "the child drove the parent's transfer")
        c:close()
      end
    end)
  end)

  describe("8 and 9. hostile token answers", function()
    local function answer(data)
      return '{"code":"00","description":"Success","data":' .. data .. '}'
    end
    local AT = '"access_token":"abc.def"'
    local bad = {
      ["CR/LF in the access token"] = {
        answer('{"access_token":"abc\\r\\nX-Injected: yes","expiresAt":"2099-01-01T00:00:00Z"}'),
                                        "access_token has bytes outside printable ASCII" },
      ["a space in the access token"] = { answer('{"access_token":"abc def","expires_in":60}'),
                                          "access_token has bytes outside printable ASCII" },
      ["a control byte in the refresh token"] = { answer('{' .. AT .. ',"refresh_token":"r\\u0001","expires_in":60}'),
                                                  "refresh_token has bytes outside printable ASCII" },
      ["non-ASCII in the business id"] = { answer('{' .. AT .. ',"businessId":"b\\u00e9","expires_in":60}'),
                                           "businessId has bytes outside printable ASCII" },
      ["expires_in 1e308"] = { answer('{' .. AT .. ',"expires_in":1e308}'), "lifetime is over a year" },
      ["expires_in 1e400"] = { answer('{' .. AT .. ',"expires_in":1e400}'), "not a Nomba JSON body" },
      ["a number no double holds, anywhere"] = { answer('{' .. AT .. ',"expires_in":60,"x":[-1e400]}'),
                                                 "not a Nomba JSON body" },
      ["expires_in Infinity"] = { answer('{' .. AT .. ',"expires_in":Infinity}'), nil },
      ["expires_in NaN"] = { answer('{' .. AT .. ',"expires_in":NaN}'), nil },
      ["expires_in \"1e999\""] = { answer('{' .. AT .. ',"expires_in":"1e999"}'), "expires_in is not a number" },
      ["expiresAt in year 9999"] = { answer('{' .. AT .. ',"expiresAt":"9999-12-31T23:59:59Z"}'),
                                     "lifetime is over a year" },
    }
    for name, case in pairs(bad) do
      it(name .. " is a protocol error, and nothing is kept", function()
        assert(sim:fault { endpoint = "issue", status = 200, body = case[1] })
        local c = H.client()
        local t, err = c:issue()
        assert.is_nil(t)
        H.assert_error(err, { kind = "protocol", op = "issue" })
        if case[2] then assert.matches(case[2], err.message, 1, true) end
        assert.matches("token none", tostring(c))
      end)
    end

    it("an explicit bearer with CR/LF never reaches a header: refresh raises, the builder refuses", function()
      local c = H.client()
      assert.has_error(function() c:refresh { refresh_token = "r", access_token = "a\r\nX-Injected: yes" } end)
      local r, err = core.perform(c, "refresh", { refresh_token = "r", access_token = "a\r\nX: y" }, 1)
      assert.is_nil(r)
      H.assert_error(err, { kind = "config", op = "refresh" })
      assert.are.equal(0, H.count("refresh"))
    end)

    it("a control byte in an auth code is a protocol error", function()
      assert(sim:fault { endpoint = "authorize", status = 200,
                         body = answer('{"auth_code":"ab\\ncd"}') })
      local o = sim:client_options()
      o.client_secret = nil
      local _, err = oauth.new(o):authorize { code_challenge = select(2, oauth.pkce.pair()) }
      H.assert_error(err, { kind = "protocol", op = "authorize" })
    end)
  end)

  describe("10. sockets() above fd 1023, every socket close-on-exec", function()
    it("lists the socket of a transfer whose fd is over 1023", function()
      assert.is_true(core._test.nofile(4096) >= 1200)
      local held = {}
      collectgarbage()
      assert.is_true(core._test.close_idle())   -- no pooled connection below fd 1024 ...
      for i = 1, 1100 do held[i] = assert(io.open("/dev/null")) end   -- ... nor a free fd
      assert(sim:fault { endpoint = "issue", delay = 0.5, pass = true })
      local c = H.client { nonblocking = true }
      assert(c:start("issue"))
      local socks
      for _ = 1, 100 do
        c:step()
        socks = c:sockets()
        if #socks > 0 then break end
        c:wait(0.01)
      end
      assert.are.equal(1, #socks)
      assert.is_true(socks[1].fd > 1023)
      local info = assert(io.open("/proc/self/fdinfo/" .. socks[1].fd)):read("*a")
      local flags = tonumber(info:match("flags:%s*(%d+)"), 8)
      assert.is_true(math.floor(flags / 0x80000) % 2 == 1, "not close-on-exec")  -- O_CLOEXEC 02000000
      while c:step() do c:wait(0.05) end
      assert.matches("^eyJ", c:token())
      for _, f in ipairs(held) do f:close() end
      c:close()
    end)

    it("marks every descriptor a client opens close-on-exec, the wakeup socketpairs too", function()
      local function sockets_now()
        local out = {}
        local pid = assert(io.open("/proc/self/stat")):read("*n")
        local l = io.popen("ls /proc/" .. pid .. "/fd")
        for name in l:lines() do
          local link = io.popen("readlink /proc/" .. pid .. "/fd/" .. name):read("*l") or ""
          if link:match("^socket:") then
            local info = io.open("/proc/" .. pid .. "/fdinfo/" .. name)
            if info then
              out[tonumber(name)] = tonumber(info:read("*a"):match("flags:%s*(%d+)"), 8)
              info:close()
            end
          end
        end
        l:close()
        return out
      end
      collectgarbage()
      assert.is_true(core._test.close_idle())   -- the pool starts afresh: a new multi handle
      local before = sockets_now()
      local a = H.client()
      assert(a:issue())
      local b = H.client { nonblocking = true }
      assert(b:token())
      local seen = 0
      for fd, flags in pairs(sockets_now()) do
        if not before[fd] then
          seen = seen + 1
          assert.is_true(math.floor(flags / 0x80000) % 2 == 1, "fd " .. fd .. " is inherited by exec")
        end
      end
      -- per Lua state, not per client: one connection and the multi handle's
      -- wakeup socketpair, shared by both clients
      assert.are.equal(3, seen)
      a:close()
      b:close()
    end)
  end)

  describe("11. redaction covers every secret of the request", function()
    local function echo_fault(ep, text)
      assert(sim:fault { endpoint = ep, status = 400, body = { code = "02", description = "you sent " .. text } })
    end

    it("explicit refresh and revoke tokens, a verifier, and pieces of the secret", function()
      local a = assert(H.client():issue())
      local c = H.client()
      local secret = sim.client.client_secret
      local cases = {
        { "refresh", a.refresh_token, function()
          return c:refresh { refresh_token = a.refresh_token, access_token = a.access_token } end },
        { "refresh", a.refresh_token:sub(1, -2), function()
          return c:refresh { refresh_token = a.refresh_token, access_token = a.access_token } end },
        { "refresh", a.access_token, function()
          return c:refresh { refresh_token = a.refresh_token, access_token = a.access_token } end },
        { "revoke", a.access_token, function() return c:revoke(a.access_token) end },
        { "issue", secret:sub(1, -2), function() return c:issue() end },
        { "issue", secret:sub(1, 10) .. "\1" .. secret:sub(12), function() return c:issue() end },
      }
      for _, case in ipairs(cases) do
        echo_fault(case[1], case[2])
        local _, err = case[3]()
        assert.matches("you sent %[redacted%]", err.message)
        local text = tostring(err)
        for _, s in ipairs { a.refresh_token, a.access_token, secret } do
          assert.is_nil(text:find(s:sub(3, 12), 1, true), text)
        end
      end
      local o = sim:client_options()
      o.client_secret = nil
      local p = oauth.new(o)
      local v = oauth.pkce.verifier()
      echo_fault("issue", v)
      local _, err = p:exchange("code-0001", v)
      assert.matches("you sent %[redacted%]", err.message)
      assert.is_nil(tostring(err):find(v:sub(1, 10), 1, true))
    end)
  end)

  describe("12. sealed values cannot be replayed", function()
    it("a revoked token written back to the store is never adopted", function()
      local store = oauth.store.memory()
      local a = H.client { store = store }
      assert(a:token())
      local key = core.store_id(a)
      local old = store.data[key]
      assert.matches("^n1%.", old)
      assert(a:revoke())
      assert.is_nil(store.data[key])
      store.data[key] = old                      -- replayed by someone with write access
      local b = H.client { store = store }
      local tok = assert(b:token())
      assert.are.equal(2, H.count("issue"))     -- b issued afresh: it did not adopt the old one
      assert.are.equal(200, H.protected { Authorization = "Bearer " .. tok, accountId = sim.client.account_id })
    end)

    it("non-canonical base64 does not open", function()
      local a = H.client()
      assert(a:issue())
      local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
      local tried = 0
      for business = 0, 3 do                     -- vary the length until it leaves unused bits
        a = H.client()
        assert(sim:fault { endpoint = "issue", status = 200, body = {
          code = "00", data = { access_token = "abc.def", expires_in = 600, businessId = ("b"):rep(business) } } })
        assert(a:issue())
        local sealed = assert(core.seal(a, "k"))
        local n = #sealed - 3
        if n % 4 ~= 0 then
          local last = sealed:sub(-1)
          local v = B64:find(last, 1, true) - 1
          local w = v % 2 == 0 and v + 1 or v - 1      -- the lowest bit flipped: an unused bit
          local flipped = sealed:sub(1, -2) .. B64:sub(w + 1, w + 1)
          local b = H.client()
          assert.is_false(core.adopt(b, "k", flipped))
          assert.is_true(core.adopt(b, "k", sealed))
          tried = tried + 1
        end
      end
      assert.is_true(tried >= 2)
    end)
  end)

  describe("15. a transport's status is judged before anything reads it", function()
    for _, status in ipairs { 0 / 0, 200.5, 1e300, -1, 99, 1000, math.huge, -math.huge } do
      it("status " .. tostring(status) .. ": a protocol error for a token operation and a call, not a raise", function()
        local curl = H.curl_transport(sim.cafile)
        local function bad()
          return { status = status, headers = { ["Content-Type"] = "application/json" },
                   body = '{"code":"00","data":{}}' }
        end
        -- a token operation answered with it
        local t = H.client { retries = 0, transport = bad }
        local ok, tok, err = pcall(t.issue, t)
        assert.is_true(ok, tostring(tok))
        assert.is_nil(tok)
        H.assert_error(err, { kind = "protocol", op = "issue" })
        -- an API call answered with it, the token from the simulator
        local c = H.client { retries = 0, transport = function(req)
          if req.op == "request" then return bad(req) end
          return curl(req)
        end }
        local res
        ok, res, err = pcall(c.request, c, { path = "/v1/accounts/balance" })
        assert.is_true(ok, tostring(res))
        assert.is_nil(res)
        H.assert_error(err, { kind = "protocol", op = "request" })
      end)
    end
  end)

  describe("14. smaller", function()
    it("bounds timeouts and sizes, and refuses a long account id", function()
      local o = sim:client_options()
      for k, v in pairs { timeout = math.huge, connect_timeout = 1e300, refresh_skew = math.huge,
                          max_response_bytes = 1e300, retries = 0 / 0 } do
        local t = {}
        for a, b in pairs(o) do t[a] = b end
        t[k] = v
        assert.matches("option '" .. k .. "'", new_error(t), 1, true)
      end
      o.account_id = ("a"):rep(150)
      assert.matches("'account_id' must be at most 128 bytes", new_error(o), 1, true)
    end)

    it("a 300 KB response header is a protocol error", function()
      assert(sim:fault { endpoint = "issue", status = 200, headers = { ["X-Big"] = ("a"):rep(300000) },
                         body = { code = "00" } })
      local _, err = H.client():issue()
      H.assert_error(err, { kind = "protocol" })
      assert.matches("headers are too large", err.message)
      local many = {}
      for i = 1, 40 do many["X-H" .. i] = ("d"):rep(1000) end   -- 40 KB in lines of 1 KB
      assert(sim:fault { endpoint = "issue", status = 200, headers = many, body = { code = "00" } })
      _, err = H.client():issue()
      H.assert_error(err, { kind = "protocol" })
      assert.matches("headers are too large", err.message)
    end)

    it("error tables with absurd numbers print safely", function()
      local e = core.error("http", "issue", "x", { status = 1e300, retry_after = 0 / 0 })
      assert.are.equal("nomba.oauth: issue failed: http: x", tostring(e))
      assert.is_nil(e.retry_after)
      e.status = -1e308
      assert.are.equal("nomba.oauth: issue failed: HTTP 0: x", tostring(e))
    end)
  end)
end)
