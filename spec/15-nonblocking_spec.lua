-- The non-blocking mode on libcurl's multi interface: a game loop never
-- stalls, faults end in the same typed errors as the blocking path, retries
-- are timers, token() yields inside a coroutine, close and GC mid-transfer.
local oauth = require "nomba.oauth"
local core = require "nomba.oauth.core"
local H = require "helpers"

local now = core.now

-- Runs step() every `tick` seconds until `done()` or `limit` seconds pass;
-- returns the number of ticks.
local function loop(c, done, limit, tick)
  local ticks, deadline = 0, now() + (limit or 5)
  while not done() and now() < deadline do
    c:step()
    ticks = ticks + 1
    H.sleep(tick or 0.01)
  end
  return ticks
end

-- The proof that step() never waits for the network, without a clock: the
-- simulator holds the request (a fault with `hold`) until the test releases
-- it. Steps until the simulator has the request, then a few more; every one
-- must come back with the job still `pending()`. A step that waited for the
-- answer would never come back before the release (only when the client's
-- timeout ends the transfer, and then the job is no longer pending).
local function steps_while_held(c, endpoint, pending)
  local deadline = now() + 5
  while H.count(endpoint) == 0 do
    assert(now() < deadline, "the request never reached the simulator")
    c:step()
    assert.is_true(pending(), "a step came back with the answer the simulator holds")
  end
  for _ = 1, 5 do
    c:step()
    assert.is_true(pending(), "a step came back with the answer the simulator holds")
  end
end

describe("non-blocking mode", function()
  local sim
  before_each(function()
    sim = H.sim()
    H.reset()
  end)

  it("keeps the loop going while a renewal is in flight: step() never waits for the answer", function()
    assert(sim:fault { endpoint = "issue", hold = true, pass = true })
    local events = {}
    local c = H.client { nonblocking = true, on_event = function(ev) events[#events + 1] = ev end }
    local tok, err = c:token { wait = false }
    assert.is_nil(tok)
    assert.are.equal("pending", err.kind)
    steps_while_held(c, "issue", function() return c:token { wait = false } == nil end)
    assert.are.equal(0, #events)
    assert(sim:release("issue"))
    loop(c, function() return c:token { wait = false } ~= nil end, 5)
    assert.matches("^eyJ", c:token { wait = false })
    assert.are.equal(c:token(), c:token { wait = false })
    assert.are.same({ "issue", true, 200 }, { events[1].op, events[1].ok, events[1].status })
    assert.is_false(c:step())                  -- nothing left to do
    assert.are.equal(1, H.count("issue"))
  end)

  it("renews at once after invalidate(), even a moment after the last renewal, as the blocking path does", function()
    local c = H.client { nonblocking = true }
    local a = assert(c:token())
    c:invalidate()
    local b, err = c:token()                   -- outside a coroutine: waits on curl_multi_poll
    assert.is_string(b, tostring(err))
    assert.are_not.equal(a, b)
    assert.are.equal(2, H.count("issue") + H.count("refresh"))
  end)

  it("hands out the kept token during a renewal, then the new one", function()
    assert(sim:config { lifetime = 4 })
    local c = H.client { nonblocking = true }
    local a = assert(c:token())                -- outside a coroutine: waits on curl_multi_poll
    H.sleep(2.3)                               -- inside the refresh window
    assert(sim:fault { endpoint = "refresh", delay = 0.5, pass = true })
    assert.are.equal(a, c:token { wait = false })   -- starts the refresh, returns at once
    assert.is_true(c:step())
    local b
    loop(c, function()
      b = c:token { wait = false }
      return b ~= a
    end, 3)
    assert.are_not.equal(a, b)
    assert.are.equal(1, H.count("refresh"))
  end)

  local ROWS = {
    { "500 HTML", { status = 500, body = "<html>x</html>", content_type = "text/html" } },
    { "401 Nomba", { status = 401, body = { code = "01", description = "Invalid client credentials" } } },
    { "200 code 05", { status = 200, body = { code = "05", description = "No" } } },
    { "truncated", { status = 200, truncate = true, body = '{"code":"00"' } },
    { "oversized", { status = 200, size = 70000 } },
    { "dropped", { drop = true } },
    { "timeout", { delay = 4 } },
    { "429 Retry-After 99", { status = 429, headers = { ["Retry-After"] = "99" }, body = "" } },
  }
  for _, row in ipairs(ROWS) do
    it("ends a fault in the same typed error as the blocking path, never waiting in step(): " .. row[1], function()
      local f = row[2]
      f.endpoint, f.times = "issue", 1
      assert(sim:fault(f))
      local _, blocking = H.client { timeout = 0.4 }:issue()
      H.sleep(0.5)
      H.reset()
      -- the same fault, held until the steps have shown they never wait for it
      -- (the client's timeout is longer here, so that it cannot end the hold)
      f.hold = true
      assert(sim:fault(f))
      f.hold = nil
      local events, result, err = {}, nil, nil
      local c = H.client { timeout = 3, on_event = function(ev) events[#events + 1] = ev end }
      assert.is_true(c:start("issue", nil, function(r, e) result, err = r, e end))
      steps_while_held(c, "issue", function() return err == nil and result == nil end)
      assert(sim:release("issue"))
      loop(c, function() return err ~= nil or result ~= nil end, 8, 0.005)
      assert.is_nil(result)
      for _, k in ipairs { "kind", "op", "status", "code", "retryable", "retry_after" } do
        assert.are.same(blocking[k], err[k], row[1] .. ": " .. k)
      end
      assert.are.equal(1, #events)
      assert.are.same({ "issue", false, blocking.kind }, { events[1].op, events[1].ok, events[1].kind })
      assert.are.equal(1, H.count("issue"))
    end)
  end

  -- the same rows through a renewal under a memory store's lock: the store
  -- is read, the lock tried without waiting, and released after the fault
  for _, row in ipairs(ROWS) do
    it("with a store, ends a renewal fault in the blocking path's error and frees the lock: " .. row[1], function()
      local f = row[2]
      f.endpoint, f.times = "issue", 1
      assert(sim:fault(f))
      local _, blocking = H.client { timeout = 0.4 }:issue()
      H.sleep(0.5)
      H.reset()
      assert(sim:fault(f))
      local store = oauth.store.memory()
      local c = H.client { timeout = 0.4, nonblocking = true, store = store }
      local tok, err = c:token { wait = false }
      assert.is_nil(tok)
      assert.are.equal("pending", err.kind)
      loop(c, function()
        err = select(2, c:token { wait = false })
        return err.kind ~= "pending"
      end, 3, 0.005)
      for _, k in ipairs { "kind", "op", "status", "code", "retryable", "retry_after" } do
        assert.are.same(blocking[k], err[k], row[1] .. ": " .. k)
      end
      assert.are.equal(1, H.count("issue"))
      assert.is_true(store:lock(core.store_id(c) .. ":lock", 1), "the renewal kept the store's lock")
    end)
  end

  it("with a store, clients share one renewal: one issue, one token, and a busy lock waits on a timer", function()
    assert(sim:fault { endpoint = "issue", delay = 0.3, pass = true })
    local store = oauth.store.memory()
    local a = H.client { nonblocking = true, store = store }
    local b = H.client { nonblocking = true, store = store }
    assert.are.equal("pending", select(2, a:token { wait = false }).kind)   -- a holds the lock
    assert.are.equal("pending", select(2, b:token { wait = false }).kind)   -- b looks again later
    local _, ms = b:sockets()
    assert.is_true(ms >= 0 and ms <= 200, "b's next look at the store in " .. ms .. " ms")
    local ta, tb
    loop(a, function()
      b:step()
      ta, tb = a:token { wait = false }, b:token { wait = false }
      return ta and tb
    end, 3)
    assert.matches("^eyJ", ta)
    assert.are.equal(ta, tb)
    assert.are.equal(1, H.count("issue"))
    assert.is_false(a:step())
    assert.is_false(b:step())
  end)

  it("with a store whose lock is never free, renews alone after the same bound as the blocking path", function()
    local store = oauth.store.memory()
    store.lock = function() return false end        -- a holder that never finishes
    local c = H.client { nonblocking = true, store = store, timeout = 0.2 }
    local tok, t0 = nil, now()
    loop(c, function()
      tok = c:token { wait = false }
      return tok ~= nil
    end, 4)
    assert.matches("^eyJ", tok)
    -- it waited for the holder: the lock's lifetime (timeout 0.2 s, 1 s spare)
    -- and one more timeout, as the blocking path does
    local waited = now() - t0
    assert.is_true(waited >= 1.4 - 0.01, "renewed after " .. waited .. " s: it did not wait for the holder")
    assert.are.equal(1, H.count("issue"))
  end)

  it("retries on a timer, never a sleep", function()
    assert(sim:fault { endpoint = "issue", status = 503, body = "busy", content_type = "text/plain" })
    local events = {}
    local c = H.client { nonblocking = true, retries = 2, on_event = function(ev) events[#events + 1] = ev end }
    assert.is_nil(c:token { wait = false })
    loop(c, function() return #events > 0 end, 5, 0.005)
    -- the step that settled the 503 came back before the retry left: the
    -- backoff is a timer that a later step finds due, not a sleep in step()
    assert.are.same({ false, 503 }, { events[1].ok, events[1].status })
    assert.are.equal(1, H.count("issue"))
    assert.is_nil(c:token { wait = false })
    local _, ms = c:sockets()                   -- the retry's timer, for an event loop
    assert.is_true(ms >= 0)
    loop(c, function() return c:token { wait = false } ~= nil end, 8, 0.005)
    assert.are.equal(2, #events)
    assert.are.same({ false, 503, true }, { events[1].ok, events[1].status, events[2].ok })
    assert.are.equal(2, H.count("issue"))
  end)

  it("falls back from a refused refresh to issue", function()
    local c = H.client { nonblocking = true }
    local a = assert(c:token())
    c:invalidate()
    assert(sim:fault { endpoint = "refresh", status = 401, body = { code = "401", description = "gone" } })
    local b
    loop(c, function() b = c:token { wait = false } return b ~= nil end, 3)
    assert.are_not.equal(a, b)
    assert.are.equal(1, H.count("refresh"))
    assert.are.equal(2, H.count("issue"))
  end)

  it("token() yields inside a coroutine while the renewal is in flight", function()
    assert(sim:fault { endpoint = "issue", delay = 0.5, pass = true })
    local c = H.client { nonblocking = true }
    local got
    local co = coroutine.create(function() got = assert(c:token()) end)
    local yields = 0
    assert(coroutine.resume(co))
    while coroutine.status(co) ~= "dead" do
      yields = yields + 1
      c:step()                                 -- the host's scheduler drives the client
      H.sleep(0.01)
      assert(coroutine.resume(co))
    end
    assert.is_true(yields >= 20, "yielded " .. yields .. " times")
    assert.matches("^eyJ", got)
  end)

  it("exposes the sockets for an event loop, and wait() blocks on them", function()
    assert(sim:fault { endpoint = "issue", delay = 0.3, pass = true })
    local c = H.client { nonblocking = true }
    assert.is_true(c:start("issue"))
    local seen = false
    loop(c, function()
      local socks = c:sockets()
      for _, s in ipairs(socks) do
        if s.fd > 2 and (s.read or s.write) then seen = true end
      end
      return seen
    end, 2, 0.001)
    assert.is_true(seen)
    while c:step() do c:wait(0.1) end
    assert.matches("^eyJ", c:token { wait = false })
    assert.is_false(c:wait(0.1))               -- nothing in flight: returns at once
  end)

  it("start(op, callback): the callback may come right after the operation", function()
    local c = H.client { nonblocking = true }
    local result
    assert.is_true(c:start("issue", function(r) result = r end))
    while c:step() do c:wait(0.1) end
    assert.matches("^eyJ", result.access_token)
    local revoked
    assert.is_true(c:start("revoke", function(r) revoked = r end))
    while c:step() do c:wait(0.1) end
    assert.is_true(revoked)
  end)

  it("refuses a second transfer while one is in flight", function()
    assert(sim:fault { endpoint = "issue", delay = 0.3, pass = true })
    local c = H.client { nonblocking = true }
    assert.is_true(c:start("issue"))
    local ok, err = c:start("issue")
    assert.is_nil(ok)
    assert.are.equal("pending", err.kind)
    local _, e2 = c:issue()                    -- the blocking path says so too
    assert.are.equal("config", e2.kind)
    while c:step() do c:wait(0.05) end
  end)

  it("closing or collecting a client with a transfer in flight releases everything", function()
    assert(sim:fault { endpoint = "issue", delay = 1, pass = true, times = 20 })
    local c = H.client { nonblocking = true }
    assert.is_true(c:start("issue"))
    c:step()
    c:close()
    assert.is_false(c:step())
    assert.are.equal("closed", select(2, c:token { wait = false }).kind)
    for _ = 1, 10 do
      local x = H.client { nonblocking = true }
      x:start("issue")
      x:step()
    end
    collectgarbage()
    collectgarbage()
  end)

  -- examples/luv_loop.lua and examples/cqueues_loop.lua: the adapters wait on
  -- client:sockets() and step only when woken, through a slow issue and refresh
  for _, loop_name in ipairs { "luv", "cqueues" } do
    it("drives the client from " .. loop_name .. " without polling; the loop never stalls", function()
      assert(sim:fault { endpoint = "issue", delay = 0.5, pass = true })
      assert(sim:fault { endpoint = "refresh", delay = 0.3, pass = true })
      -- a client of its own at the simulator: no other process's login
      -- (one session per client) can end the example's session mid-run
      local own = { client_id = "loop-" .. loop_name, client_secret = core.pkce.verifier(48),
                    account_id = sim.client.account_id }
      assert(sim:config { clients = { own } })
      local o = sim:client_options { client_id = own.client_id, client_secret = own.client_secret }
      local env = ("NOMBA_ACCOUNT_ID=%s NOMBA_CLIENT_ID=%s NOMBA_CLIENT_SECRET=%s NOMBA_BASE_URL=%s NOMBA_CAFILE=%s")
        :format(o.account_id, o.client_id, o.client_secret, o.base_url, o.cafile)
      -- the same interpreter and module build (under make asan, the same preloaded runtime)
      local p = io.popen(env .. " " .. (arg and arg[-1] or "lua5.4") .. " examples/" .. loop_name ..
                         "_loop.lua 2>&1; echo status=$?")
      local out = p:read("*a")
      p:close()
      assert(out:find("status=0", 1, true), loop_name .. " example failed:\n" .. out)
      local ticks, steps = out:match(loop_name .. ": (%d+) ticks of 10 ms, longest gap [%d%.]+ ms, (%d+) step")
      assert.is_truthy(ticks, out)
      ticks, steps = tonumber(ticks), tonumber(steps)
      assert.matches("issued true, refreshed true", out, 1, true)
      -- the loop kept ticking while each renewal was in flight (a step that
      -- waited for an answer would let no tick through until it came)
      local at_issue = tonumber(out:match("issue: ok after (%d+) ticks"))
      local at_refresh = tonumber(out:match("refresh: ok after (%d+) ticks"))
      assert.is_true(at_issue >= 2, "no tick while the issue was in flight")
      assert.is_true(at_refresh - at_issue >= 2, "no tick while the refresh was in flight")
      -- woken by sockets and libcurl's timer only: a poller would step every tick
      assert.is_true(steps < ticks / 4, steps .. " steps for " .. ticks .. " ticks")
    end)
  end
end)
