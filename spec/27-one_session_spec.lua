-- The fleet's one session under faults (issue 31): a renewal bounded by one
-- deadline that its lock covers (kept alive by its holder through a long
-- Retry-After), a store read again before a login, the 401 rule (a 401 that
-- renewing cannot cure renews once for the fleet, never per call), and one
-- store wait per store call.
local oauth = require "nomba.oauth"
local core = require "nomba.oauth.core"
local cjson = require "cjson"
local H = require "helpers"

local LUA = arg and arg[-1] or "lua5.4"

local function tmpdir() return H.tmpdir("one-session") end

-- Runs `n` fleet workers (spec/fleet_worker.lua) for `seconds` on one store
-- and one driver; returns their summaries.
local function fleet(sim, n, seconds, store, driver, port)
  return H.fleet(sim, n, seconds, store, driver, port, 0.2)()
end

describe("one session for the fleet", function()
  local sim
  before_each(function()
    sim = H.sim()
    H.reset()
  end)
  after_each(function() assert(sim:config { lifetime = 1800 }) end)

  -- The holder's refresh answers 503 with Retry-After 10: longer than the
  -- lock lived before (timeout 1, retries 2: 4 s) and than the others
  -- waited for it (5 s), who then renewed alone: logins, an ended session.
  -- Now the holder keeps its lease through the wait, and the others wait
  -- for it (their tokens expired meanwhile): one login, no session ended.
  local cases = {
    { "libcurl easy, file store", "easy", "file" },
    { "libcurl easy, Redis", "easy", "params" },
    { "libcurl multi (step), Redis", "multi", "params" },
    { "a Lua transport, file store", "transport", "file" },
  }
  for _, case in ipairs(cases) do
    it("a Retry-After longer than the old lock costs no login: " .. case[1], function()
      local redis, dir, store
      if case[3] == "params" then
        redis = assert(H.redis())
        store = "params"
      else
        dir = tmpdir()
        store = "file:" .. dir .. "/store"
      end
      finally(function()
        if redis then redis.cleanup() end
        if dir then os.execute("rm -rf " .. dir) end
      end)
      assert(sim:config { lifetime = 4 })
      assert(sim:fault { endpoint = "refresh", status = 503, headers = { ["Retry-After"] = "10" },
                         body = { code = "503", description = "busy", data = cjson.null } })
      local out = fleet(sim, 3, 17, store, case[2], redis and redis.port)
      for _, s in ipairs(out) do
        assert.are.equal(0, s.failures, cjson.encode(s))
        assert.is_true(s.final_valid)
      end
      local counts = assert(sim:counts())
      assert.are.equal(1, counts.issue)               -- no login where none was needed
      assert.is_nil(counts.sessions_ended)            -- no session ended
      assert.is_true(H.count("refresh") >= 2)         -- the 503, then the refresh it waited for
    end)
  end

  it("a Retry-After longer than the old lock costs no login: cosockets in nginx, a shared dict", function()
    assert(sim:config { lifetime = 4 })
    local a = H.openresty_app { workers = 2, config = { retries = 2, timeout = 1 } }
    finally(function() a:stop() end)
    assert.matches("^eyJ", H.sh("curl -s --max-time 10 " .. a.url .. "/token"))
    assert(sim:fault { endpoint = "refresh", status = 503, headers = { ["Retry-After"] = "10" },
                       body = { code = "503", description = "busy", data = cjson.null } })
    -- calls through the renewal's wait, several at a time (the workers' tokens expire meanwhile:
    -- they wait for the holder)
    local dir = tmpdir()
    finally(function() os.execute("rm -rf " .. dir) end)
    local N = 45
    for i = 1, N do
      os.execute(("env -u LD_PRELOAD curl -s -o /dev/null -w '%%{http_code}' --max-time 40 %s/token > %s/%d.tmp " ..
                  "&& mv %s/%d.tmp %s/%d &"):format(a.url, dir, i, dir, i, dir, i))
      H.sleep(0.3)
    end
    local deadline = core.now() + 45
    for i = 1, N do
      local f = io.open(dir .. "/" .. i)
      while not f do
        assert(core.now() < deadline, "call " .. i .. " never ended")
        H.sleep(0.1)
        f = io.open(dir .. "/" .. i)
      end
      assert.are.equal("200", f:read("*a"), "call " .. i .. " of " .. N)
      f:close()
    end
    local counts = assert(sim:counts())
    assert.are.equal(1, counts.issue)
    assert.is_nil(counts.sessions_ended)
    assert.is_true(H.count("refresh") >= 2)
  end)

  it("a holder whose refresh is refused adopts the token another member published instead of logging in", function()
    local store = oauth.store.memory()
    local other = H.client { store = store }
    assert(other:token())                             -- the fleet's token, published
    local c = H.client { store = store, nonblocking = true }
    assert(c:token())                                 -- adopted from the store: no request
    assert.are.equal(1, H.count("issue"))
    c:invalidate()
    -- c renews under the lock; the simulator holds its refresh while
    -- another member refreshes the same session (explicitly) and publishes
    assert(sim:fault { endpoint = "refresh", hold = true, pass = true })
    local deadline = core.now() + 5
    while H.count("refresh") == 0 do
      assert(core.now() < deadline, "the refresh never reached the simulator")
      c:step()
    end
    local newer = assert(other:refresh()).access_token
    assert(sim:release("refresh"))
    deadline = core.now() + 5
    while c:step() do assert(core.now() < deadline, "the renewal never ended") end
    -- c's refresh was refused (its refresh token retired): it read the store
    -- before issuing, and took the newer token
    assert.are.equal(newer, c:token { wait = false })
    assert.are.equal(1, H.count("issue"))
    assert.is_nil(assert(sim:counts()).sessions_ended)
  end)

  for _, d in ipairs { { "libcurl easy", {} }, { "a Lua transport", { transport = true } } } do
    it("a holder whose refresh is refused adopts the token another process published instead of logging in: " ..
       d[1], function()
      local dir = tmpdir()
      finally(function() os.execute("rm -rf " .. dir) end)
      local function client()
        return H.client { store = oauth.store.file(dir .. "/store"), timeout = 15,
                          transport = d[2].transport and H.curl_transport(sim.cafile) or nil }
      end
      assert(client():token())                           -- the fleet's token, published
      local c = client()
      assert(c:token())                                  -- adopted
      c:invalidate()
      assert(sim:fault { endpoint = "refresh", hold = true, pass = true })
      -- another process: once c's refresh is held at the simulator, it refreshes the session
      -- itself (publishing to the same directory), then lets c's go on
      local script, out = dir .. "/other.lua", dir .. "/other.out"
      local f = assert(io.open(script, "w"))
      f:write(([[
local oauth, core = require "nomba.oauth", require "nomba.oauth.core"
local simulator = require "nomba.oauth.simulator"
local sim = simulator.attach { url = %q, cafile = %q }
local C = simulator.CLIENT
for _ = 1, 500 do
  local held = false
  for _, r in ipairs(sim:log() or {}) do held = held or r.endpoint == "refresh" end
  if held then break end
  core.sleep(0.02)
end
local b = oauth.new { account_id = C.account_id, client_id = C.client_id, client_secret = C.client_secret,
                      base_url = %q, cafile = %q, store = oauth.store.file(%q), retries = 0 }
assert(b:token())
local t = assert(b:refresh()).access_token
sim:release("refresh")
local o = assert(io.open(%q, "w")); o:write(t); o:close()
]]):format(sim.url, sim.cafile, sim.url, sim.cafile, dir .. "/store", out))
      f:close()
      os.execute(LUA .. " " .. script .. " > " .. dir .. "/other.log 2>&1 &")
      local tok = assert(c:token())                      -- held, then refused: the store read first
      local deadline, theirs = core.now() + 10, nil
      while not theirs do
        assert(core.now() < deadline, "the other process did not finish")
        local g = io.open(out)
        theirs = g and g:read("*a")
        if g then g:close() end
        if theirs == "" then theirs = nil end
        H.sleep(0.05)
      end
      assert.are.equal(theirs, tok)
      assert.are.equal(1, H.count("issue"))
      assert.is_nil(assert(sim:counts()).sessions_ended)
    end)
  end

  -- (the 3-minute soak: a member's forced refresh in the first second of the session gave a
  -- token with about the issue's expiry; the others kept the issue's, refreshed with its retired
  -- refresh token, were refused and logged in: a session ended outside every fault)
  it("a token published since a member last looked is adopted even with about the same expiry", function()
    -- (expires_in: both tokens' expiries then differ by the milliseconds between them exactly)
    assert(sim:config { lifetime = 4, expires_in = true })   -- the refresh window: the last 2 s
    local store = oauth.store.memory()
    local a = H.client { store = store }
    local b = H.client { store = store }
    -- the issue and the refresh in one second of the server's clock (its Date counts seconds)
    while core.time() % 1 > 0.3 do H.sleep(0.01) end
    local t1 = assert(a:token())
    assert.are.equal(t1, b:token())                    -- b adopted the fleet's token
    assert(a:refresh())                                -- a moment later: about the same expiry
    H.sleep(2.3)                                       -- b's token is due
    assert(b:token())
    -- b took a's published token (and refreshed it when due), never its retired refresh token
    assert.are.equal(2, H.count("refresh"))
    assert.are.equal(1, H.count("issue"))
    assert.is_nil(assert(sim:counts()).sessions_ended)
  end)

  describe("the lock's lease", function()
    -- a store's extend contract: the owner's lock kept, another's never touched, a lapsed one false
    local function contract(store, lapses)
      local got, owner = store:lock("lease-k", 0.3)
      assert.is_true(got)
      assert.is_not_nil(owner)
      assert.is_false(store:lock("lease-k", 0.3))
      assert.is_true(store:extend("lease-k", 0.3, owner))
      assert.is_false(store:extend("lease-k", 0.3, "someone-else"))
      store:unlock("lease-k", "someone-else")        -- not its lock: nothing released
      assert.is_false(store:lock("lease-k", 0.3))
      if lapses then
        H.sleep(0.5)                                   -- not kept alive: lapsed
        assert.is_false(store:extend("lease-k", 0.3, owner))
        local again, other = store:lock("lease-k", 5)
        assert.is_true(again)
        store:unlock("lease-k", owner)                 -- the old holder's release leaves the new lock
        assert.is_false(store:lock("lease-k", 5))
        store:unlock("lease-k", other)
      else
        store:unlock("lease-k", owner)
      end
      assert.is_true((store:lock("lease-k", 0.3)))
    end

    it("every built-in store keeps a lock alive for its owner only (memory, file, Redis)", function()
      contract(oauth.store.memory(), true)
      local dir = tmpdir()
      finally(function() os.execute("rm -rf " .. dir) end)
      contract(oauth.store.file(dir .. "/store"), false)   -- an flock: it lapses when its holder dies
      local redis = assert(H.redis())
      finally(function() redis.cleanup() end)
      contract(oauth.store.redis({ host = "127.0.0.1", port = redis.port }), true)
    end)

    it("a store without extend is locked for the renewal's whole deadline", function()
      local inner, ttls = oauth.store.memory(), {}
      local store = {
        get = function(_, k) return inner:get(k) end,
        set = function(_, k, v, t) return inner:set(k, v, t) end,
        delete = function(_, k) return inner:delete(k) end,
        lock = function(_, k, t) ttls[#ttls + 1] = t return (inner:lock(k, t)) end,
        unlock = function(_, k) return inner:unlock(k) end,
      }
      local c = H.client { store = store, timeout = 2, retries = 1 }
      assert(c:token())
      -- the deadline, (retries + 2) * timeout + retries * 30 + 2 = 38 s, less the moment before
      -- the lock, and a margin of 1 s
      assert.are.equal(1, #ttls)
      assert.is_true(ttls[1] > 38 and ttls[1] <= 39, "lock ttl " .. tostring(ttls[1]))
    end)

    it("a holder whose lease lapsed adopts the newer token another member published, never overwrites it",
       function()
      local store = oauth.store.memory()
      local curl = H.curl_transport(sim.cafile)
      local b = H.client { store = store }
      local a, lapsed
      a = H.client { store = store, transport = function(req)
        local res, err = curl(req)
        if req.url:find("/refresh", 1, true) and not lapsed then
          -- the answer is on its way back; meanwhile a's lease lapses and b renews
          lapsed = true
          store:delete(core.store_id(a) .. ":lock")
          b:invalidate()
          assert(b:token())
        end
        return res, err
      end }
      assert(a:token())
      assert(b:token())                                  -- b shares a's token
      a:invalidate()
      assert(a:token())                                  -- a's refresh, b's renewal inside it
      assert.is_true(lapsed)
      -- b's refresh was refused (a's rotated the refresh token), so b logged in: b's token is
      -- the live one, issued after a's; a adopted it instead of publishing its own over it
      local live = b:token()
      assert.are.equal(live, a:token())
      assert.are.equal(live, H.client { store = store }:token())
    end)
  end)

  -- (the soak's unexplained "pending": a member's call met the renewal step() had begun in the
  -- refresh window, the one transfer in flight, and was refused though the token was valid)
  it("a non-blocking call started while step() renews in the background runs after it, never 'pending'", function()
    assert(sim:config { lifetime = 4 })             -- the refresh window: the last 2 s
    local c = H.client { nonblocking = true }
    assert(c:token())
    H.sleep(2.3)                                    -- in the window: valid, not fresh
    assert(sim:fault { endpoint = "refresh", hold = true, pass = true })
    local deadline = core.now() + 5
    while H.count("refresh") == 0 do                -- step() began the renewal; its refresh is held
      assert(core.now() < deadline, "no renewal began")
      c:step()
    end
    local res, err, done
    local ok, serr = c:start("request", { path = "/v1/accounts/balance" },
                             function(r, e) res, err, done = r, e, true end)
    assert.is_true(ok, tostring(serr))
    -- one call waits so; a second one is refused while the first waits
    local again, aerr = c:start("request", { path = "/v1/accounts/balance" })
    assert.is_nil(again)
    assert.are.equal("pending", aerr.kind)
    assert(sim:release("refresh"))
    deadline = core.now() + 5
    while not done do
      assert(core.now() < deadline, "the call never ended")
      c:step()
      c:wait(0.05)
    end
    assert.are.equal(200, res and res.status, tostring(err))
    assert.are.equal(1, H.count("refresh"))
    assert.are.equal(1, H.count("protected"))
  end)

  describe("the 401 rule", function()
    local transports = {
      { "libcurl easy", function(extra) return H.client(extra) end },
      { "a Lua transport", function(extra)
          extra.transport = H.curl_transport(sim.cafile)
          return H.client(extra)
        end },
      { "libcurl multi", function(extra)
          extra.nonblocking = true
          return H.client(extra)
        end },
    }
    -- a call on the client's driver: blocking, or started and stepped
    local function call(c, opts)
      if not c:status().nonblocking then return c:request(opts) end
      local res, err, done
      local ok, serr = c:start("request", opts, function(r, e) res, err, done = r, e, true end)
      if not ok then return nil, serr end
      local deadline = core.now() + 10
      while not done do
        assert(core.now() < deadline, "the call never ended")
        c:step()
        c:wait(0.05)
      end
      return res, err
    end

    for _, t in ipairs(transports) do
      it("ten calls naming a foreign accountId renew once, not ten times: " .. t[1], function()
        local c = t[2] { store = oauth.store.memory() }
        assert(c:token())
        assert(call(c, { path = "/v1/accounts/balance" }))
        local renewals = H.count("issue") + H.count("refresh")
        for i = 1, 10 do
          local res, err = call(c, { path = "/v1/accounts/balance", account_id = "someone-else" })
          assert.is_nil(res)
          H.assert_error(err, { kind = "api", op = "request", status = 401 })
          assert.matches("accountId someone%-else", err.message, 1)
          assert.is_false(err.retryable, "call " .. i)
        end
        -- the first call renewed once and tried again: the accountId's fault
        assert.are.equal(renewals + 1, H.count("issue") + H.count("refresh"))
        -- the client's own calls still work, on the renewed token
        assert.are.equal(200, assert(call(c, { path = "/v1/accounts/balance" })).status)
        assert.are.equal(renewals + 1, H.count("issue") + H.count("refresh"))
      end)
    end

    for _, kind in ipairs { "a shared dict", "Redis (lua-resty-redis)" } do
      it("on cosockets, 16 calls naming a foreign accountId across 4 nginx workers renew once: " .. kind,
         function()
        local redis = kind:find("Redis") and assert(H.redis())
        local a = H.openresty_app { workers = 4, config = { redis_port = redis and redis.port } }
        finally(function()
          a:stop()
          if redis then redis.cleanup() end
        end)
        assert.matches("^eyJ", H.sh("curl -s --max-time 10 " .. a.url .. "/token"))
        local renewals = H.count("issue") + H.count("refresh")
        local N, urls = 16, {}
        for i = 1, N do urls[i] = "'" .. a.url .. "/request_as?account=someone-else&n=" .. N .. "'" end
        local out = H.sh("curl -s --no-progress-meter --max-time 20 --parallel --parallel-immediate " ..
                         "--parallel-max " .. N .. " " .. table.concat(urls, " "))
        local answers = 0
        for line in out:gmatch("[^\n]+") do
          local r = assert(cjson.decode(line), line)
          assert.are.same({ "api", 401 }, { r.kind, r.err_status }, line)
          assert.matches("accountId someone%-else", r.message)
          answers = answers + 1
        end
        assert.are.equal(N, answers)
        assert.are.equal(renewals + 1, H.count("issue") + H.count("refresh"))
        assert.are.equal(1, H.count("issue"))
      end)
    end

    it("is the fleet's: another member's 401 for a refused accountId renews nothing", function()
      local dir = tmpdir()
      finally(function() os.execute("rm -rf " .. dir) end)
      local a = H.client { store = oauth.store.file(dir .. "/store") }
      local b = H.client { store = oauth.store.file(dir .. "/store") }
      local _, err = a:request { path = "/v1/accounts/balance", account_id = "someone-else" }
      H.assert_error(err, { kind = "api", status = 401 })
      local renewals = H.count("issue") + H.count("refresh")
      for _ = 1, 3 do
        _, err = b:request { path = "/v1/accounts/balance", account_id = "someone-else" }
        H.assert_error(err, { kind = "api", status = 401 })
      end
      assert.are.equal(renewals, H.count("issue") + H.count("refresh"))
      assert.are.equal(1, H.count("issue"))             -- b adopted a's token: no login of its own
    end)

    it("a genuine revocation still renews once, every time", function()
      local c = H.client { store = oauth.store.memory() }
      for round = 1, 2 do
        local t = assert(c:token())
        local issues, calls = H.count("issue"), H.count("protected")
        assert(H.client {}:revoke(t))                  -- revoked elsewhere
        local res = assert(c:request { path = "/v1/accounts/balance" })
        assert.are.equal(200, res.status, "round " .. round)
        assert.are_not.equal(t, c:token())
        -- one renewal (the revoked session's refresh refused, one issue) and one retry
        assert.are.equal(issues + 1, H.count("issue"), "round " .. round)
        assert.are.equal(calls + 2, H.count("protected"), "round " .. round)
      end
    end)
  end)

  describe("a token the server issued is kept", function()
    -- as lua.c's SIGINT hook does: an error at the first Lua instruction
    -- after the C core kept the new token (the hook checks for it)
    local function interrupted(c, f)
      local jit = rawget(_G, "jit")
      if jit then jit.off() end                    -- LuaJIT calls hooks in its interpreter only
      debug.sethook(function()
        if core.fresh(c, 0) then
          debug.sethook()
          error("interrupted!")
        end
      end, "", 1)
      local ok, err = pcall(f)
      debug.sethook()
      if jit then jit.on() end
      assert.is_false(ok)
      assert.matches("interrupted!", tostring(err), 1, true)
    end
    local drivers = {
      { "libcurl easy", {} },
      { "a Lua transport", { transport = true } },
      { "libcurl multi", { nonblocking = true } },
    }
    for _, d in ipairs(drivers) do
      it("an error raised on the way back from a renewal loses no rotation: " .. d[1], function()
        local dir = tmpdir()
        finally(function() os.execute("rm -rf " .. dir) end)
        local function client()
          local extra = { store = oauth.store.file(dir .. "/store"), nonblocking = d[2].nonblocking }
          if d[2].transport then extra.transport = H.curl_transport(sim.cafile) end
          return H.client(extra)
        end
        local c = client()
        local t1 = assert(c:token())
        c:invalidate()
        interrupted(c, function() return c:token() end)
        local t2 = assert(core.fresh(c, 0))              -- Nomba rotated the session: c keeps it
        assert.are_not.equal(t1, t2)
        assert.are.equal(1, H.count("refresh"))
        -- the store has it (the refresh token before it is retired): the
        -- next process adopts it, no refresh refused, no login
        local next_process = client()
        assert.are.equal(t2, next_process:token())
        next_process:invalidate()                        -- its renewal: a refresh with the live refresh token
        assert.is_string(next_process:token())
        assert.are.equal(2, H.count("refresh"))
        assert.are.equal(1, H.count("issue"))
        assert.is_nil(assert(sim:counts()).sessions_ended)
      end)
    end

    it("an error raised on the way back from an explicit refresh loses no rotation", function()
      local dir = tmpdir()
      finally(function() os.execute("rm -rf " .. dir) end)
      local tokens = {}
      local c = H.client { store = oauth.store.file(dir .. "/store"),
                           on_token = function(t) tokens[#tokens + 1] = t.access_token end }
      assert(c:token())
      c:invalidate()
      interrupted(c, function() return c:refresh() end)
      local t2 = assert(core.fresh(c, 0))
      assert.are.equal(t2, tokens[#tokens])              -- on_token had it
      assert.are.equal(t2, H.client { store = oauth.store.file(dir .. "/store") }:token())
    end)
  end)

  it("a Redis that reads but refuses writes: no renewal alone while the shared token is valid", function()
    local redis = assert(H.redis())
    finally(function() redis.cleanup() end)
    local LIFETIME, OUTAGE = 6, 9
    assert(sim:config { lifetime = LIFETIME })
    local procs = {}
    for i = 1, 4 do
      procs[i] = io.popen(("%s spec/fleet_worker.lua '%s' '%s' 127.0.0.1 %d 16 params easy 1 2 2>&1"):format(
        LUA, sim.url, sim.cafile, redis.port))
    end
    local samples, issued = {}, nil                  -- {t, counts}
    local function sample()
      local c = assert(sim:counts())
      samples[#samples + 1] = { core.now(), c }
      if not issued and (c.issue or 0) > 0 then issued = core.now() end
    end
    local t0 = core.now()
    while not issued do
      assert(core.now() - t0 < 5, "no issue")
      sample()
      H.sleep(0.05)
    end
    -- the fleet's token published (the shared key, not its lock or generation)
    while not H.token_key(redis.cli("--scan --pattern 'fleet:*'"), "fleet:") do
      assert(core.now() - t0 < 5, "nothing published")
      sample()
      H.sleep(0.05)
    end
    -- writes refused (maxmemory reached, noeviction) from within the token's first half-life
    -- until well after it expired
    assert.matches("OK", redis.cli("config set maxmemory-policy noeviction"))
    assert.matches("OK", redis.cli("config set maxmemory 1"))
    local outage_from, outage_wall = core.now(), core.time()
    while core.now() - outage_from < OUTAGE do
      sample()
      H.sleep(0.1)
    end
    assert.matches("OK", redis.cli("config set maxmemory 0"))
    local outs = {}
    for i = 1, 4 do
      outs[i] = procs[i]:read("*a")
      assert(procs[i]:close(), outs[i])
    end
    sample()
    -- until the shared token expired, nobody renewed alone: one issue, no refresh, no session ended
    local before_expiry
    for _, sm in ipairs(samples) do
      -- (expiresAt counts whole seconds: the members' token expires up to 1 s before the simulator's)
      if sm[1] < issued + LIFETIME - 1.3 then before_expiry = sm[2] end
    end
    assert.are.same({ 1, 0, 0 }, { before_expiry.issue or 0, before_expiry.refresh or 0,
                                   before_expiry.sessions_ended or 0 }, (function()
      local lines = {}
      for _, r in ipairs(H.log()) do
        if r.endpoint == "issue" or r.endpoint == "refresh" then
          lines[#lines + 1] = ("%s %+.3f conn %s"):format(r.endpoint, r.time - outage_wall, tostring(r.connection))
        end
      end
      return "relative to the outage: " .. table.concat(lines, "; ")
    end)())
    local final, failures = samples[#samples][2], 0
    for i = 1, 4 do
      local s = assert(cjson.decode(outs[i]:match("{.*}$") or "null"), outs[i])
      assert.is_true(s.final_valid, outs[i])
      failures = failures + s.failures
    end
    print(("\n  writes refused for %d s, %.1f s past the shared token's expiry (4 processes, %d s tokens): " ..
           "%d logins, %d refreshes, %d sessions ended, %d failed token() calls of the fleet")
          :format(OUTAGE, outage_from + OUTAGE - (issued + LIFETIME), LIFETIME, (final.issue or 0) - 1,
                  final.refresh or 0, final.sessions_ended or 0, failures))
  end)

  describe("leases across wall-clock steps", function()
    local LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
    local step_file
    local function step(offset)
      local f = assert(io.open(step_file, "w"))
      f:write(offset, "\n")
      f:close()
    end
    before_each(function()
      assert.is_not_nil(io.open(LIB), "libfaketime (Debian libfaketime) is needed")
      step_file = os.tmpname()
      step("+0")
    end)
    after_each(function() os.remove(step_file) end)

    it("a shared dict's leases run on the monotonic clock: nginx's wall clock stepping +90 s or -1 h " ..
       "neither ends nor stretches them #preload", function()
      local pre = os.getenv("LD_PRELOAD")
      local a = H.openresty_app {
        workers = 2, env = { "LD_PRELOAD", "FAKETIME_TIMESTAMP_FILE", "FAKETIME_NO_CACHE", "DONT_FAKE_MONOTONIC" },
        exec_prefix = ("env LD_PRELOAD='%s' FAKETIME_TIMESTAMP_FILE=%s FAKETIME_NO_CACHE=1 DONT_FAKE_MONOTONIC=1 ")
                      :format((pre and pre ~= "" and pre .. " " or "") .. LIB, step_file),
      }
      finally(function() a:stop() end)
      local function add(key, ttl, lock)
        local out = H.sh(("curl -s --max-time 5 '%s/store_add?key=%s&ttl=%s%s'"):format(a.url, key, ttl,
                                                                                       lock and "&lock=1" or ""))
        return assert(require("cjson.safe").decode(out), out)
      end
      local wall0 = add("probe", 1).wall
      -- a 60 s claim and a 60 s lock, then the wall clock 90 s ahead: both still held
      assert.is_true(add("claim", 60).got)
      assert.is_true(add("lock", 60, true).got)
      step("+90")
      H.sleep(0.3)
      local after = add("probe2", 1)
      assert.is_true(after.wall - wall0 >= 89, "nginx's clock did not step: " .. (after.wall - wall0))
      assert.is_false(add("claim", 60).got)
      assert.is_false(add("lock", 60, true).got)
      -- short claims, then the wall clock an hour back: over on time all the same
      assert.is_true(add("short", 1).got)
      assert.is_true(add("shortlock", 1, true).got)
      step("-3600")
      H.sleep(1.3)
      assert.is_true(add("short", 1).got)
      assert.is_true(add("shortlock", 1, true).got)
    end)

    it("Redis keeps its TTLs on the server: a member's wall clock stepping +90 s or -1 h changes nothing #preload",
       function()
      local redis = assert(H.redis())
      finally(function() redis.cleanup() end)
      local store = oauth.store.redis({ host = "127.0.0.1", port = redis.port })
      assert.is_true(store:add("claim", "v", 60))
      assert.is_true(store:add("short", "v", 1))
      local pre = os.getenv("LD_PRELOAD")
      local function stepped_add(key)
        local script = os.tmpname()
        local f = assert(io.open(script, "w"))
        f:write(([[
package.path = package.path .. ";/usr/share/lua/5.1/?.lua"
local s = require("nomba.oauth").store.redis({ host = "127.0.0.1", port = %d })
io.write(tostring(s:add(%q, "w", 60)))]]):format(redis.port, key))
        f:close()
        local out = H.sh(("env LD_PRELOAD='%s' FAKETIME_TIMESTAMP_FILE=%s FAKETIME_NO_CACHE=1 " ..
                          "DONT_FAKE_MONOTONIC=1 %s %s"):format((pre and pre ~= "" and pre .. " " or "") .. LIB,
                                                                step_file, LUA, script))
        os.remove(script)
        return out
      end
      step("+90")
      assert.are.equal("false", stepped_add("claim"))       -- held: Redis counts the lease
      step("-3600")
      H.sleep(1.2)
      assert.are.equal("true", stepped_add("short"))        -- over on Redis' clock
    end)
  end)

  -- (the 30-minute soak: the Lua members' descriptors grew through the Redis restarts)
  it("a Redis connection that broke is closed when the store connects again, not left to the collector",
     function()
    local redis = assert(H.redis())
    finally(function()
      collectgarbage("restart")
      redis.cleanup()
    end)
    local store = oauth.store.redis({ host = "127.0.0.1", port = redis.port })
    local function fds() return (select(2, require("procfs").fds())) end   -- the sockets
    assert(store:set("k", "v", 60))
    collectgarbage("collect")
    collectgarbage("stop")                           -- what the collector would close stays open
    local before = fds()
    for _ = 1, 3 do
      redis.stop()
      assert(redis.restart())
      assert.is_false((store:get("k")))               -- a broken connection, a new one (no persistence)
    end
    assert.are.equal(before, fds())
  end)

  for _, d in ipairs { { "libcurl easy", {} }, { "libcurl multi", { nonblocking = true } },
                        { "a Lua transport", { transport = true } } } do
    it("a Redis that accepts and never answers costs one store wait, not two: " .. d[1], function()
      local redis = assert(H.redis())
      finally(function()
        os.execute("kill -CONT " .. redis.pid .. " 2>/dev/null")
        redis.cleanup()
      end)
      local function connections()
        return tonumber(redis.cli("info stats"):match("total_connections_received:(%d+)"))
      end
      local before = connections()
      os.execute("kill -STOP " .. redis.pid)           -- the kernel still accepts its connections
      local c = H.client { timeout = 1, store = oauth.store.redis({ host = "127.0.0.1", port = redis.port }),
                           nonblocking = d[2].nonblocking,
                           transport = d[2].transport and H.curl_transport(sim.cafile) or nil }
      local tok, err = c:token()                        -- the store fails: the client renews alone
      assert.is_string(tok, tostring(err))
      os.execute("kill -CONT " .. redis.pid)
      -- one connection for the store's first call (and one for this INFO):
      -- no second connection tried after the first call's wait ran out
      assert.are.equal(before + 2, connections())
    end)
  end
end)
