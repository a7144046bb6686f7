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

local function tmpdir()
  return io.popen("mktemp -d /tmp/nomba-one-session.XXXXXX"):read("*l")
end

-- Runs `n` fleet workers (spec/fleet_worker.lua) for `seconds` on one store
-- and one driver; returns their summaries.
local function fleet(sim, n, seconds, store, driver, port)
  local procs = {}
  for i = 1, n do
    procs[i] = io.popen(("%s spec/fleet_worker.lua '%s' '%s' 127.0.0.1 %d %d %s %s 1 2 2>&1"):format(
      LUA, sim.url, sim.cafile, port or 0, seconds, store, driver))
    H.sleep(0.2)
  end
  local out = {}
  for i = 1, n do
    local text = procs[i]:read("*a")
    assert(procs[i]:close(), text)
    out[i] = assert(cjson.decode(text:match("{.*}$") or "null"), text)
  end
  return out
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
        assert(H.client {}:revoke(t))                  -- revoked elsewhere
        local res = assert(c:request { path = "/v1/accounts/balance" })
        assert.are.equal(200, res.status, "round " .. round)
        assert.are_not.equal(t, c:token())
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

  it("a Redis that accepts and never answers costs one store wait, not two", function()
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
    local c = H.client { timeout = 1, store = oauth.store.redis({ host = "127.0.0.1", port = redis.port }) }
    local tok, err = c:token()                        -- the store fails: the client renews alone
    assert.is_string(tok, tostring(err))
    os.execute("kill -CONT " .. redis.pid)
    -- one connection for the store's first call (and one for this INFO):
    -- no second connection tried after the first call's wait ran out
    assert.are.equal(before + 2, connections())
  end)
end)
