-- One token for a fleet through a real redis-server: the store over
-- redis-lua, sealed values at rest, 8 processes on two loopback addresses,
-- chaos (a SIGKILLed lock holder, garbage, a foreign value, Redis stopped and
-- restarted), and lua-resty-redis inside nginx.
local oauth = require "nomba.oauth"
local core = require "nomba.oauth.core"
local simulator = require "nomba.oauth.simulator"
local cjson = require "cjson"
local H = require "helpers"

local LUA = arg and arg[-1] or "lua5.4"

local function spawn_worker(sim, host, port, seconds, mode)
  -- the workers load our module, so they keep any sanitizer runtime (make asan)
  local cmd = ("%s spec/fleet_worker.lua '%s' '%s' %s %d %s %s 2>&1"):format(
    LUA, sim.url, sim.cafile, host, port, seconds, mode or "")
  return io.popen(cmd)
end

local function collect(p)
  local out = p:read("*a")
  local ok = p:close()
  local summary = cjson.decode(out:match("{.*}$") or "null")
  assert(ok and summary, "a fleet process failed: " .. out)
  return summary
end

describe("Redis store", function()
  local sim, redis
  before_each(function()
    sim = H.sim()
    H.reset()
  end)
  after_each(function()
    if redis then redis.cleanup() end
    redis = nil
  end)

  it("implements the store contract on redis-lua", function()
    redis = assert(H.redis())
    local store = oauth.store.redis(H.redis_client(redis.port), { prefix = "t:" })
    assert.is_false(store:get("k"))
    assert.is_true(store:set("k", "v", 5))
    assert.are.equal("v", store:get("k"))
    assert.matches("^%d+", redis.cli("pttl t:k"))
    assert.is_true(store:delete("k"))
    assert.is_false(store:get("k"))
    assert.is_true(store:lock("l", 5))
    local other = oauth.store.redis(H.redis_client(redis.port), { prefix = "t:" })
    assert.is_false(other:lock("l", 5))
    assert.is_true(other:unlock("l"))            -- not its lock: nothing happens
    assert.matches("%S", redis.cli("get t:l"))
    assert.is_true(store:unlock("l"))
    assert.are.equal("\n", redis.cli("get t:l"))
    assert.is_true(other:lock("l", 0.2))
    H.sleep(0.3)
    assert.is_true(store:lock("l", 5))            -- the TTL freed it
  end)

  it("leaves the connection a connect function hands out open: the function owns it", function()
    redis = assert(H.redis())
    local conn = H.redis_client(redis.port)
    local calls = 0
    local store = oauth.store.redis(function()
      calls = calls + 1
      return conn
    end, { prefix = "t:" })
    for i = 1, 3 do assert.is_true(store:set("k" .. i, "v", 5)) end
    for i = 1, 3 do assert.are.equal("v", store:get("k" .. i)) end
    assert.are.equal(6, calls)
    assert.is_true(conn:ping())                  -- still the caller's, still open
  end)

  it("keeps tokens sealed at rest: the plaintext never appears in Redis", function()
    redis = assert(H.redis())
    local a = H.client { store = oauth.store.redis(H.redis_client(redis.port)) }
    local b = H.client { store = oauth.store.redis(H.redis_client(redis.port)) }
    local t = assert(a:token())
    assert.are.equal(t, b:token())
    assert.are.equal(1, H.count("issue"))
    local keys, marker = {}, nil
    for k in redis.cli("--scan"):gmatch("%S+") do
      if k == "nomba-oauth:epoch" then marker = k else keys[#keys + 1] = k end
    end
    assert.are.equal(1, #keys)
    assert.are.equal("nomba-oauth:epoch", marker)      -- the data-loss marker (no secret in it)
    assert.matches("^[%w%-_]+\n$", redis.cli("get " .. marker))
    assert.matches("^nomba%-oauth:[%w%-_]+$", keys[1])
    local value = redis.cli("get " .. keys[1])
    assert.matches("^n1%.", value)
    assert.is_nil(value:find(t, 1, true))
    assert.is_nil(value:find(sim.client.client_secret, 1, true))
  end)

  it("notices that Redis lost its data (FLUSHALL, a restart without persistence) and says so", function()
    redis = assert(H.redis())
    local found, events, lines = {}, {}, {}
    local store = oauth.store.redis({ host = "127.0.0.1", port = redis.port },
                                    { on_data_lost = function(info) found[#found + 1] = info end })
    local c = H.client { store = store, on_event = function(ev) events[#events + 1] = ev end,
                         log = function(level, line) lines[#lines + 1] = level .. " " .. line end }
    assert(c:token())
    assert.are.equal("first", oauth.webhook.claim(store, "req-1", 30))
    assert.is_true(oauth.webhook.done(store, "req-1"))
    assert.are.equal("done", oauth.webhook.claim(store, "req-1", 30))
    assert.are.equal(0, store.data_lost)
    -- FLUSHALL: the redelivery is "first" again (nothing can know it was done), and the store says why
    redis.cli("flushall")
    H.sleep(1.1)
    assert.are.equal("first", oauth.webhook.claim(store, "req-1", 30))
    assert.are.equal(1, store.data_lost)
    assert.are.same({ { node = "127.0.0.1:" .. redis.port, count = 1 } }, found)
    -- the client that shares the store says so at its next store call: an event, a count, an error line
    assert(c:issue())
    local lost = {}
    for _, ev in ipairs(events) do if ev.kind == "store_data_lost" then lost[#lost + 1] = ev end end
    assert.are.equal(1, #lost)
    assert.are.equal(1, lost[1].count)
    assert.matches("FLUSHALL", lost[1].message)
    assert.are.equal(1, c:status().counts.store_data_lost)
    assert.matches('nomba_oauth_store_data_lost_total{[^}]*} 1\n', oauth.metrics())
    assert.matches("^error nomba.oauth: the store found its data lost", lines[#lines])
    -- a restart without persistence: found on the new connection, at once
    assert.is_true(oauth.webhook.done(store, "req-1"))
    redis.stop()
    assert(redis.restart())
    assert.are.equal("first", oauth.webhook.claim(store, "req-1", 30))
    assert.are.equal(2, store.data_lost)
    assert.are.equal(2, #found)
    -- and nothing is reported while the data stays
    H.sleep(1.1)
    assert.are.equal("held", oauth.webhook.claim(store, "req-1", 30))
    assert.are.equal(2, store.data_lost)
    -- a new store (a process started after the loss) cannot know: it plants the marker, reports nothing
    local late = oauth.store.redis({ host = "127.0.0.1", port = redis.port })
    assert.are.equal("held", oauth.webhook.claim(late, "req-1", 30))
    assert.are.equal(0, late.data_lost)
    c:close()
  end)

  it("8 processes on two addresses renew once per lifetime window for the whole fleet #slow", function()
    redis = assert(H.redis { "127.0.0.1", "127.0.0.2" })
    assert(sim:config { lifetime = 4 })
    local baseline = assert(simulator.start { lifetime = 4 })
    local seconds = 20
    local fleet, alone = {}, {}
    for i = 1, 8 do
      fleet[i] = spawn_worker(sim, i <= 4 and "127.0.0.1" or "127.0.0.2", redis.port, seconds)
      alone[i] = spawn_worker(baseline, "127.0.0.1", redis.port, seconds, "alone")
    end
    for i = 1, 8 do
      local s = collect(fleet[i])
      assert.are.equal(0, s.failures, cjson.encode(s))
      assert.is_true(s.final_valid)
      assert.is_true(s.ok > 100)
      collect(alone[i])
    end
    local counts = assert(sim:counts())
    local base = assert(baseline:counts())
    baseline:stop()
    local fleet_renewals = (counts.issue or 0) + (counts.refresh or 0)
    local alone_renewals = (base.issue or 0) + (base.refresh or 0)
    print(("\n  fleet of 8 sharing Redis: %d renewals in %d s (4 s tokens); 8 alone: %d (%.1f per process)")
          :format(fleet_renewals, seconds, alone_renewals, alone_renewals / 8))
    -- a renewal per 2 s window (the refresh window of a 4 s token), plus the first issue
    assert.is_true(fleet_renewals <= seconds / 2 + 2, "fleet renewals: " .. fleet_renewals)
    assert.are.equal(1, counts.issue)
    assert.is_true(alone_renewals >= 6 * fleet_renewals)
  end)

  it("survives a SIGKILLed lock holder, garbage, a foreign value and a Redis restart", function()
    redis = assert(H.redis())
    assert(sim:config { lifetime = 4 })
    -- a first process takes the lock and hangs in its issue: kill it there
    assert(sim:fault { endpoint = "issue", delay = 6, pass = true })
    local holder = io.popen(("%s spec/fleet_worker.lua '%s' '%s' 127.0.0.1 %d 30 & echo $!")
                            :format(LUA, sim.url, sim.cafile, redis.port))
    local holder_pid = tonumber(holder:read("*l"))
    H.sleep(0.7)
    assert.matches("%S", redis.cli("--scan --pattern 'fleet:*:lock'"))
    os.execute("kill -KILL " .. holder_pid)
    holder:close()
    -- half the fleet on a connected redis-lua client (the README's first
    -- form), half on the store's own connection (parameters)
    local procs = {}
    for i = 1, 6 do procs[i] = spawn_worker(sim, "127.0.0.1", redis.port, 17, i > 3 and "params" or nil) end
    local key = redis.cli("--scan --pattern 'fleet:*:lock'"):match("fleet:([^:%s]+):lock")
    H.sleep(6)                                  -- the lock TTL (2 s x 2 + 1) ran out; one renewed
    local shared = "fleet:" .. key
    assert.matches("^n1%.", redis.cli("get " .. shared))
    redis.cli("set " .. shared .. " garbage")   -- garbage
    H.sleep(1.5)
    -- a real value sealed by a client with another secret, written under our key
    local other = oauth.new(sim:client_options { client_secret = "another-secret-entirely",
      transport = function()
        return { status = 200, headers = {}, body = cjson.encode { code = "00", data = {
          access_token = "foreign-token", refresh_token = "foreign-refresh", expires_in = 3600 } } }
      end })
    assert(other:issue())
    local foreign = assert(core.seal(other, key))
    redis.cli("set " .. shared .. " " .. foreign)
    H.sleep(1.5)
    redis.stop()                                 -- Redis goes away
    H.sleep(1.5)
    assert.is_true(redis.restart())              -- and comes back, empty
    -- the fleet rejoins: the next renewal (every 2 s) is shared through Redis again
    local rejoined = false
    for _ = 1, 50 do
      if redis.cli("get " .. shared):match("^n1%.") then rejoined = true break end
      H.sleep(0.1)
    end
    assert.is_true(rejoined, "the fleet did not publish a token after Redis came back")
    -- and shares again: one renewal per window (2 s), not one per process (six
    -- alone, which is what a store that never reconnects does)
    local counts0 = assert(sim:counts())
    H.sleep(4.2)
    local counts1 = assert(sim:counts())
    local renewals = ((counts1.refresh or 0) + (counts1.issue or 0)) - ((counts0.refresh or 0) + (counts0.issue or 0))
    assert.is_true(renewals <= 3, "after the restart the fleet made " .. renewals .. " renewals in two windows")
    local errors = 0
    for i = 1, 6 do
      local s = collect(procs[i])
      assert.are.equal(0, s.failures, cjson.encode(s))
      assert.is_true(s.final_valid)
      errors = errors + s.store_errors
    end
    assert.is_true(errors > 0)                   -- they noticed the outage, and went on
  end)

  it("authenticates with an ACL user; a wrong password is a store error that names no password", function()
    redis = assert(H.redis(nil, "--user default off --user nomba on '>s3cret-pass-9' '~*' '&*' '+@all'"))
    redis.auth = "--user nomba --pass s3cret-pass-9 --no-auth-warning "
    assert(sim:config { lifetime = 4 })
    local procs = {}
    for i = 1, 4 do procs[i] = spawn_worker(sim, "127.0.0.1", redis.port, 6, "acl:nomba:s3cret-pass-9") end
    for i = 1, 4 do
      local s = collect(procs[i])
      assert.are.equal(0, s.failures, cjson.encode(s))
      assert.are.equal(0, s.store_errors, cjson.encode(s))
    end
    local counts = assert(sim:counts())
    assert.are.equal(1, counts.issue)            -- one login for the four, then a refresh per window
    assert.is_true((counts.refresh or 0) <= 4)
    -- refused by Redis: it goes alone (its own login), and says why without the password
    local w = collect(spawn_worker(sim, "127.0.0.1", redis.port, 1, "acl:nomba:not-the-password-1"))
    assert.are.equal(0, w.failures)
    assert.is_true(w.store_errors > 0)
    for _, m in ipairs(w.store_messages) do
      assert.is_nil(m:find("not-the-password-1", 1, true), m)
      assert.matches("AUTH", m)
    end
    assert.matches("^n1%.", redis.cli("--scan --pattern 'fleet:*' | grep -E '^fleet:[A-Za-z0-9_-]{22}$' | " ..
                                      "head -1 | xargs -r redis-cli -p " ..
                                      redis.port .. " --user nomba --pass s3cret-pass-9 --no-auth-warning get"))
  end)
end)
