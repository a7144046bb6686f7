--- Exercises every method, error path, close and GC once, for valgrind
-- (make valgrind). Needs a simulator: run it under tools/with-simulator.lua.
local oauth = require "nomba.oauth"
local simulator = require "nomba.oauth.simulator"

local sim = simulator.attach { url = assert(os.getenv("NOMBA_SIM_URL")),
                               cafile = assert(os.getenv("NOMBA_SIM_CAFILE")) }
assert(sim:reset())
local events = 0
local function client(extra)
  local o = sim:client_options(extra)
  o.on_event = function() events = events + 1 end
  if o.retries == nil then o.retries = 0 end
  return oauth.new(o)
end

local c = client()
local t = assert(c:issue())
assert(c:token() == t.access_token)
assert(c:headers())
assert(c:refresh())
c:invalidate()
assert(c:token())
assert(c:refresh(select(1, c:issue()).refresh_token))
assert(c:revoke())
assert(c:token())
tostring(c)

-- PKCE
local v, ch = oauth.pkce.pair(64)
assert(oauth.pkce.verify(v, ch))
assert(oauth.pkce.challenge(oauth.pkce.verifier(), "plain"))
-- Redis Cluster's slots (src/slot.c): a hash tag, none, an empty one, a long key
local slot = require("nomba.oauth.core").redis_slot
assert(slot("{user1000}.following") == 3443 and slot("123456789") == 12739)
assert(slot("foo{}{bar}") == 8363 and slot(("k"):rep(100000)) >= 0)
local po = sim:client_options { retries = 0 }
po.client_secret = nil
local p = oauth.new(po)
local code = assert(p:authorize { code_challenge = ch, state = "s" })
assert(p:exchange(code, v))
assert(not p:issue())

-- error paths
local faults = {
  { status = 500, body = "<html>x</html>", content_type = "text/html" },
  { status = 401, body = { code = "401", description = "no" } },
  { status = 200, body = "not json" },
  { status = 200, truncate = true, body = '{"code":"00"' },
  { status = 200, size = 70000 },
  { drop = true, times = 2 },
  { status = 429, headers = { ["Retry-After"] = "0" }, body = "" },
  { delay = 0.6 },
}
for _, ep in ipairs { "issue", "refresh", "revoke" } do
  for _, f in ipairs(faults) do
    f.endpoint = ep
    assert(sim:fault(f))
    local cc = client { timeout = 0.3 }
    assert(cc:issue() or true)
    local r, err = cc[ep](cc)
    assert(r or err)
    tostring(err)
    assert(sim:control("/_sim/clear_faults", {}))
  end
end
assert(not client { client_secret = "bad" }:issue())
assert(not client { base_url = "https://127.0.0.1:" .. sim.port }:issue())
assert(not client { base_url = "https://localhost:1" }:issue())
local o = sim:client_options()
o.cafile = nil
assert(not oauth.new(o):issue())

-- custom transport
local tc = client { transport = function() return { status = 200, headers = { Date = "x" },
  body = '{"code":"00","data":{"access_token":"a","refresh_token":"b","expires_in":60}}' } end }
assert(tc:issue())
assert(tc:refresh())

-- the non-blocking mode: a transfer to the end, one closed and one
-- collected while in flight
local nb = client { nonblocking = true }
assert(nb:token())
assert(nb:start("refresh"))
while nb:step() do nb:wait(0.05) end
assert(sim:fault { endpoint = "issue", delay = 0.5, pass = true, times = 3 })
local nb2 = client { nonblocking = true }
assert(nb2:start("issue"))
nb2:step()
nb2:close()
do
  local nb3 = client { nonblocking = true }
  assert(nb3:start("issue"))
  nb3:step()
end
collectgarbage()
collectgarbage()
assert(sim:control("/_sim/clear_faults", {}))

-- shared stores and sealing: publish, adopt, revoke (a new generation), a
-- store that misbehaves in every way, a Redis that never answers
local core = require "nomba.oauth.core"
local store = oauth.store.memory()
local s1, s2 = client { store = store }, client { store = store }
assert(s1:token())
assert(s2:token() == s1:token())
local sealed = store.data[core.store_id(s1)]
assert(s1:revoke())
store.data[core.store_id(s1)] = sealed
assert(client { store = store }:token())
assert(not core.adopt(s2, "another key", sealed))
assert(not core.adopt(s2, core.store_id(s2), sealed:sub(1, -2)))
local bad = oauth.store.memory()
bad.get = function() return {} end
bad.lock = function() error(setmetatable({}, { __tostring = function() error("no") end })) end
assert(client { store = bad }:token())
do
  local socket = require "socket"
  local silent = assert(socket.bind("127.0.0.1", 0))
  local _, port = silent:getsockname()
  if not package.path:find("/usr/share/lua/5.1/", 1, true) then
    package.path = package.path .. ";/usr/share/lua/5.1/?.lua"
  end
  local r = require("redis").connect("127.0.0.1", port)
  assert(client { store = oauth.store.redis(r), timeout = 0.3 }:token())
  silent:close()
end

-- hostile answers through the C JSON reader
for _, body in ipairs {
  '{"code":"00","data":{"access_token":"a\\r\\nb","expires_in":60}}',
  '{"code":"00","data":{"access_token":"abc","expires_in":1e400}}',
  '{"code":"00","data":{"access_token":"abc","expiresAt":"9999-12-31T23:59:59Z"}}',
  '{"code":"00","data":{"access_token":"\\ud83d\\ude00","expires_in":60}}',
  '{"code":"00","data":{"access_token":"abc","expires_in":Infinity}}',
  '{"code":"00","data":' .. ("["):rep(40) .. ("]"):rep(40) .. '}',
} do
  assert(sim:fault { endpoint = "issue", status = 200, body = body })
  assert(not client():issue())
end

-- API calls (headers parsed in C, the answer's JSON), a refused one, and
-- webhooks: verified, refused for each reason, signed from a table and
-- from text; JSON decoded and refused
do
  assert(c:request { path = "/v1/accounts/balance", query = { a = 1 } })
  assert(sim:fault { endpoint = "protected", status = 400, body = '{"code":"02"}',
                     headers = { ["X-Dup"] = { "a", "b" } } })
  assert(not c:request { path = "/v1/accounts/balance" })
  local key, ts = "whsec-lifecycle", "2024-01-01T00:00:00Z"
  local ev = { event_type = "payment_success", requestId = "r-1", data = { merchant = { userId = 1.5e-7 },
               transaction = { transactionId = "t", time = ts, items = { 1, "two", { three = true } } } } }
  local h, body = oauth.webhook.sign { key = key, event = ev, timestamp = ts }
  assert(oauth.webhook.verify { key = key, body = body, headers = h, now = 1704067200 })
  assert(oauth.webhook.sign { key = key, event = body, timestamp = ts })
  assert(not oauth.webhook.verify { key = key .. "x", body = body, headers = h, now = 1704067200 })
  assert(not oauth.webhook.verify { key = key, body = "{", headers = h, now = 1704067200 })
  assert(not oauth.webhook.verify { key = key, body = body, headers = {}, now = 1704067200 })
  assert(not oauth.webhook.verify { key = key, body = body, headers = h, now = 1704067200 + 9000 })
  local wh = oauth.store.memory()
  assert(oauth.webhook.claim(wh, "r-1") == "first" and oauth.webhook.claim(wh, "r-1") == "held")
  assert(oauth.webhook.done(wh, "r-1") and oauth.webhook.claim(wh, "r-1") == "done")
  assert(oauth.webhook.claim(wh, "r-2") == "first" and oauth.webhook.release(wh, "r-2"))
  assert(not oauth.webhook.claim(wh, "r\0"))
  local recut = core.json_decode(body)
  recut.requestId = "r:1"
  local h2, body2 = oauth.webhook.sign { key = key, event = recut, timestamp = "1704067200" }
  assert(not oauth.webhook.verify { key = key, body = body2, headers = h2, now = 1704067200 })
  assert(core.json_decode('[1, 2.5, "\\u00e9", {"a": null}, true]'))
  assert(not core.json_decode(("["):rep(100)))
  assert(not core.json_decode("1e400"))
  assert(core.webhook_check(key, "m", core.webhook_mac(key, "m")))
end

-- fork: a child abandons the parent's handles, blocking and non-blocking
if core._test.fork then
  local fc = client { nonblocking = true }
  assert(fc:token())
  assert(sim:fault { endpoint = "issue", delay = 0.3, pass = true })
  assert(fc:start("issue"))
  fc:step()
  local blocking = client()
  assert(blocking:issue())
  -- the child reports through a file: under valgrind its exit status also
  -- counts the handles it abandons on purpose (they are the parent's)
  local verdict = os.tmpname()
  local pid = core._test.fork()
  if pid == 0 then
    local ok = blocking:issue() ~= nil
    fc:step()
    fc:close()
    blocking:close()
    local f = io.open(verdict, "w")
    f:write(ok and "ok" or "failed")
    f:close()
    core._test.exit(0)
  end
  while fc:step() do fc:wait(0.05) end
  core._test.wait(pid)
  local f = assert(io.open(verdict))
  assert(f:read("*a") == "ok", "the child could not issue on its own handle")
  f:close()
  os.remove(verdict)
end

-- close, double close, use after close, GC with and without requests
c:close()
c:close()
assert(not c:token())
for i = 1, 200 do
  local x = client()
  if i % 50 == 0 then assert(x:issue()) end
  if i % 2 == 0 then x:close() end
end
pcall(require("nomba.oauth.core").new, { account_id = "a", client_id = "b" }, {})
collectgarbage()
collectgarbage()
assert(events > 20)
print("lifecycle: ok, " .. events .. " events")
