-- Driver parity: every scenario of spec/parity.lua (the fault matrix for
-- issue(), the API calls' retries, Retry-After in both forms, post-send
-- resets, truncated headers and bodies, echoed bearers, hostile rate-limit
-- headers, 401s and a 401 race through a shared store, the pause after a
-- failed renewal) runs on all four drivers and must give the same outcome:
-- the requests the simulator saw, the result or the error's kind,
-- retryable, maybe_sent, the attempts, and what else the scenario names.
--   libcurl easy (blocking), libcurl multi (start + step()), a plain Lua
--   transport (the curl command line tool), cosockets in nginx.
local oauth = require "nomba.oauth"
local cjson = require "cjson"
local core = require "nomba.oauth.core"
local H = require "helpers"
local P = require "parity"

local sim = H.sim()

-- The requests the simulator saw, per endpoint; `last`: the last one
-- (its method and URI, as they came on the wire).
local function seen()
  local n = {}
  for _, r in ipairs(H.log()) do
    n[r.endpoint] = (n[r.endpoint] or 0) + 1
    n.last = r
  end
  return n
end

local function prepare(c)
  H.reset()
  if c.config then assert(sim:config(c.config)) end
  for _, f in ipairs(c.faults or {}) do assert(sim:fault(f)) end
end

-- The differences between what a driver gave and what the scenario wants.
local function differences(c, o, counts)
  local out = {}
  for k, want in pairs(c.want) do
    if k == "sent_as" then
      for field, v in pairs(want) do
        local got = counts.last and counts.last[field]
        if got ~= v then out[#out + 1] = ("sent %s: %s, want %s"):format(field, tostring(got), v) end
      end
    elseif k == "seen" then
      for ep, n in pairs(want) do
        if (counts[ep] or 0) ~= n then
          out[#out + 1] = ("%s requests seen: %d, want %d"):format(ep, counts[ep] or 0, n)
        end
      end
    else
      local got = o[k]
      local same = got == want
      if type(want) == "table" and type(got) == "table" then
        same = true
        for kk, vv in pairs(want) do same = same and got[kk] == vv end
        for kk in pairs(got) do same = same and want[kk] ~= nil end
      end
      if not same then
        out[#out + 1] = ("%s: %s, want %s"):format(k, cjson.encode(got == nil and cjson.null or got),
                                                   cjson.encode(want))
      end
    end
  end
  return out
end

local function close_idle()
  for _ = 1, 50 do
    if core._test.close_idle() then return end
    H.sleep(0.01)
  end
end

local function libcurl(extra)
  return function(opts)
    for k, v in pairs(extra) do opts[k] = v end
    return oauth.new(sim:client_options(opts))
  end
end

local function revoke(tok) return H.client {}:revoke(tok) end

-- libcurl over HTTP/2 (the simulator's second listener): every scenario
-- that is not HTTP/1.1 bytes written by hand
local function h2(extra)
  local make = libcurl(extra)
  return function(opts)
    assert(sim.url_h2, "the simulator has no HTTP/2 listener")
    opts.base_url = opts.base_url or sim.url_h2
    return make(opts)
  end
end

local DRIVERS = {
  { name = "libcurl easy", make = libcurl {}, store = oauth.store.memory, revoke = revoke, after_prime = close_idle },
  { name = "libcurl multi (step)", make = libcurl { nonblocking = true }, step = true, store = oauth.store.memory,
    revoke = revoke, after_prime = close_idle },
  { name = "a plain Lua transport", make = libcurl { transport = H.curl_transport(sim.cafile) },
    store = oauth.store.memory, revoke = revoke },
  { name = "libcurl easy, HTTP/2", make = h2 {}, store = oauth.store.memory, revoke = revoke,
    after_prime = close_idle, http1_bytes = false, protocol = "HTTP/2.0" },
  { name = "libcurl multi (step), HTTP/2", make = h2 { nonblocking = true }, step = true,
    store = oauth.store.memory, revoke = revoke, after_prime = close_idle, http1_bytes = false,
    protocol = "HTTP/2.0" },
}

-- A scenario whose answers are HTTP/1.1 bytes written by hand (raw faults).
local function http1_bytes(c)
  for _, f in ipairs(c.faults or {}) do
    if f.raw then return true end
  end
  return false
end

describe("driver parity", function()
  local app

  lazy_setup(function()
    app = H.openresty_app { workers = 1 }
  end)

  lazy_teardown(function()
    if app then app:stop() end
  end)

  -- cosockets in nginx: the same runner, in the app (spec/openresty/app.lua)
  local function cosockets(c)
    local file = os.tmpname()
    local f = assert(io.open(file, "w"))
    f:write(cjson.encode(c))
    f:close()
    local out = H.sh("curl -s --max-time 60 -H 'Content-Type: application/json' --data-binary @" .. file ..
                     " " .. app.url .. "/parity")
    os.remove(file)
    local o = cjson.decode(out)
    if type(o) ~= "table" then error("the app answered " .. out .. "\n" .. app:error_log()) end
    return o
  end

  for _, c in ipairs(P.CASES) do
    it(c.name, function()
      local report = {}
      local hole
      if c.blackhole then       -- a listening socket never accepted from: TCP comes up, TLS never does
        hole = assert(require("socket").bind("127.0.0.1", 0, 64))
        c.client.base_url = "https://localhost:" .. select(2, hole:getsockname())
      end
      for _, d in ipairs(DRIVERS) do
        if d.http1_bytes ~= false or not http1_bytes(c) then
          prepare(c)
          local o = P.run(c, d)
          local counts = seen()
          for _, line in ipairs(differences(c, o, counts)) do report[#report + 1] = d.name .. ": " .. line end
          if d.protocol and counts.last and counts.last.protocol ~= d.protocol then
            report[#report + 1] = d.name .. ": spoke " .. tostring(counts.last.protocol)
          end
        end
      end
      prepare(c)
      local o = cosockets(c)
      for _, line in ipairs(differences(c, o, seen())) do report[#report + 1] = "cosockets: " .. line end
      if #report > 0 and o.message then report[#report + 1] = "cosockets said: " .. o.message end
      if hole then hole:close() end
      assert(#report == 0, table.concat(report, "\n"))
    end)
  end
end)
