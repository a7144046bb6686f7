-- Shared stores: tokens sealed with AES-256-GCM, one renewal for many
-- clients, locks, and a store in trouble that never reaches the caller.
local oauth = require "nomba.oauth"
local core = require "nomba.oauth.core"
local H = require "helpers"

describe("sealed tokens", function()
  local sim
  before_each(function()
    sim = H.sim()
    H.reset()
  end)

  it("round trip: a sealed token opens in another client of the same account", function()
    local a, b = H.client(), H.client()
    local t = assert(a:issue())
    local key = core.store_id(a)
    assert.are.equal(key, core.store_id(b))
    assert.are.equal(22, #key)
    local sealed = assert(core.seal(a, key))
    assert.matches("^n1%.[%w%-_]+$", sealed)
    assert.is_nil(sealed:find(t.access_token, 1, true))
    assert.is_nil(sealed:find(t.refresh_token, 1, true))
    assert.is_true(core.adopt(b, key, sealed))
    assert.are.equal(t.access_token, b:token())
    -- and b refreshes with the adopted refresh token
    local r = assert(b:refresh())
    assert.are.equal(t.refresh_token, require("cjson").decode(H.log("refresh")[1].body).refresh_token)
    assert.is_string(r.access_token)
  end)

  it("a tampered value, a wrong key, a foreign store key or garbage do not open", function()
    local a = H.client()
    assert(a:issue())
    local key = core.store_id(a)
    local sealed = assert(core.seal(a, key))
    local fresh_client = function() return H.client() end
    -- every single character changed
    for i = 4, #sealed, 7 do
      local ch = sealed:sub(i, i) == "A" and "B" or "A"
      assert.is_false(core.adopt(fresh_client(), key, sealed:sub(1, i - 1) .. ch .. sealed:sub(i + 1)))
    end
    assert.is_false(core.adopt(fresh_client(), key .. "x", sealed))      -- written under another key
    assert.is_false(core.adopt(H.client { client_secret = "another-secret-value" }, key, sealed))
    for _, junk in ipairs { "", "n1.", "n1.!!!", "garbage", ("n1." .. ("A"):rep(200)), sealed:sub(1, 40) } do
      assert.is_false(core.adopt(fresh_client(), key, junk))
    end
    local pkce_a = oauth.new((function()
      local o = sim:client_options { store = oauth.store.memory(), store_key = ("s"):rep(32) }
      o.client_secret = nil
      return o
    end)())
    assert.is_false(core.adopt(pkce_a, key, sealed))
  end)

  it("an older token never replaces a newer kept one; an invalidated one is not re-adopted", function()
    local a, b = H.client(), H.client()
    assert(a:issue())
    local key = core.store_id(a)
    local old = assert(core.seal(a, key))
    H.sleep(1.1)
    local tb = assert(b:issue())
    assert.is_false(core.adopt(b, key, old))
    assert.are.equal(tb.access_token, b:token())
    local mine = assert(core.seal(b, key))
    b:invalidate()
    assert.is_false(core.adopt(b, key, mine))
  end)
end)

describe("a shared store", function()
  local sim
  before_each(function()
    sim = H.sim()
    H.reset()
  end)

  it("lets many clients share one issue", function()
    local store = oauth.store.memory()
    local clients = {}
    for i = 1, 10 do clients[i] = H.client { store = store } end
    local first = assert(clients[1]:token())
    for i = 2, 10 do assert.are.equal(first, clients[i]:token()) end
    assert.are.equal(1, H.count("issue"))
  end)

  it("keeps plaintext tokens out of the store", function()
    local store = oauth.store.memory()
    local c = H.client { store = store }
    local t = c:token()
    local n = 0
    for k, v in pairs(store.data) do
      n = n + 1
      assert.is_nil(v:find(t, 1, true), k)
      assert.is_nil(v:find(sim.client.client_secret, 1, true), k)
    end
    assert.are.equal(1, n)
  end)

  it("one renewal per lifetime window for the whole group", function()
    assert(sim:config { lifetime = 4 })
    local store = oauth.store.memory()
    local a, b, c = H.client { store = store }, H.client { store = store }, H.client { store = store }
    local t1 = assert(a:token())
    assert.are.equal(t1, b:token())
    H.sleep(2.3)                               -- inside the window (clamped to 2 s)
    local t2 = assert(b:token())
    assert.are_not.equal(t1, t2)
    assert.are.equal(t2, a:token())
    assert.are.equal(t2, c:token())
    assert.are.equal(1, H.count("issue"))
    assert.are.equal(1, H.count("refresh"))
  end)

  it("uses the kept token while another holder renews, and waits when it has none", function()
    local store = oauth.store.memory()
    local a = H.client { store = store }
    local t = assert(a:token())
    local key = core.store_id(a)
    -- someone else holds the lock
    assert.is_true(store:lock(key .. ":lock", 1.5))
    a:invalidate()
    -- no valid token and the lock is held: waits until the lock expires, then renews
    local t0 = core.now()
    local t2 = assert(a:token())
    assert.is_true(core.now() - t0 >= 1.2)
    assert.are_not.equal(t, t2)
  end)

  it("a store in trouble never reaches the caller", function()
    local events = {}
    local broken = {
      get = function() error("connection refused") end,
      set = function() return nil, "READONLY" end,
      delete = function() return nil, "down" end,
      lock = function() return nil, "down" end,
      unlock = function() return true end,
    }
    local c = H.client { store = broken, on_event = function(ev) events[#events + 1] = ev end }
    local t = assert(c:token())
    assert.is_string(t)
    local store_events = 0
    for _, ev in ipairs(events) do
      if ev.op == "store" then
        store_events = store_events + 1
        assert.are.same({ false, "store_error" }, { ev.ok, ev.kind })
        assert.is_string(ev.message)
      end
    end
    assert.is_true(store_events >= 1)
    -- a store that answers garbage: a cache miss, then renewal and publish
    local garbage = oauth.store.memory()
    local g = H.client { store = garbage }
    garbage:set(core.store_id(g), "n1.garbage")
    assert.is_string(assert(g:token()))
    assert.are_not.equal("n1.garbage", garbage:get(core.store_id(g)))
  end)

  it("keeps a valid token while the store fails, and renews alone only when it would expire first", function()
    assert(sim:config { lifetime = 8 })           -- due at 4 s; alone at two attempts (timeout 1) from expiry
    local store = oauth.store.memory()
    local c = H.client { store = store, timeout = 1, retries = 0 }
    local t = assert(c:token())
    for _, m in ipairs { "get", "set", "lock", "unlock", "delete" } do
      store[m] = function() error("redis down") end
    end
    H.sleep(4.3)                                   -- due, the store down: no login of its own yet
    assert.are.equal(t, c:token())
    assert.are.equal(0, H.count("refresh"))
    H.sleep(1.2)                                   -- 2.5 s left: still kept
    assert.are.equal(t, c:token())
    H.sleep(1.1)                                   -- 1.4 s left (a pause on), under two attempts: alone
    assert.are_not.equal(t, assert(c:token()))
    assert.are.equal(1, H.count("refresh"))
  end)

  it("an explicit issue or refresh is the session now: it replaces the shared token", function()
    local store = oauth.store.memory()
    local a, b = H.client { store = store }, H.client { store = store }
    local t1 = assert(b:token())                   -- the fleet's session
    local issued = assert(a:issue())               -- a login of a's own ends it at Nomba
    assert.are_not.equal(t1, issued.access_token)
    b:invalidate()                                 -- as a 401 to the ended session would
    assert.are.equal(issued.access_token, assert(b:token()))
    assert.are.equal(2, H.count("issue"))          -- b adopted a's session: no login of its own
    local refreshed = assert(a:refresh())
    b:invalidate()
    assert.are.equal(refreshed.access_token, assert(b:token()))
    assert.are.equal(2, H.count("issue"))
    assert.are.equal(1, H.count("refresh"))
  end)

  it("revoke drops the shared token too", function()
    local store = oauth.store.memory()
    local a, b = H.client { store = store }, H.client { store = store }
    local t = assert(a:token())
    assert.are.equal(t, b:token())
    assert.is_true(a:revoke())
    assert.is_nil(store:get(core.store_id(a)))
    -- b keeps its copy until a 401 tells it otherwise; then it renews and publishes
    assert.are.equal(t, b:token())
    b:invalidate()
    local t2 = assert(b:token())
    assert.are_not.equal(t, t2)
    assert.is_string(store:get(core.store_id(b)))
    assert.are.equal(t2, a:token())
  end)
end)
