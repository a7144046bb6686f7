-- Redis as operators run it (issue 32): Sentinel and Cluster, real
-- redis-server processes on loopback (spec/redis_ha.lua starts them):
-- the store finds the master or the slot's node itself, follows a failover
-- (a master killed with SIGKILL under a fleet) and a slot's migration (ASK,
-- then MOVED), never writes to a replica or a stale master, keeps webhook
-- claims across the failover, and tells a failover (replicated data) from
-- lost data. Plain Lua (redis-lua) here; lua-resty-redis in nginx below.
local oauth = require "nomba.oauth"
local core = require "nomba.oauth.core"
local cjson = require "cjson"
local H = require "helpers"
local T = require "redis_ha"

-- Starts `n` fleet workers for `seconds` on a store mode (timeout 1, 2 retries); collect() after.
local function fleet(sim, n, seconds, mode)
  return H.fleet(sim, n, seconds, mode, "easy")
end

local function ports(list)
  local out = {}
  for i, n in ipairs(list) do out[i] = n.port end
  return table.concat(out, ",")
end

-- Waits until every replica of the node on `port` has its writes (a
-- failover loses what was not replicated: Redis replicates asynchronously).
local function replicated(cli, port)
  for _ = 1, 100 do
    local info = cli(port, "info replication")
    local offset = tonumber(info:match("master_repl_offset:(%d+)"))
    local behind = false
    for o in info:gmatch("slave%d+:[^\n]*offset=(%d+)") do
      if tonumber(o) ~= offset then behind = true end
    end
    if offset and not behind then return true end
    H.sleep(0.05)
  end
  return false
end

describe("Redis Sentinel and Cluster", function()
  local sim
  before_each(function()
    sim = H.sim()
    H.reset()
  end)
  after_each(function() assert(sim:config { lifetime = 1800 }) end)

  it("the store's Cluster slots are Redis's: CRC16 of the hash tag", function()
    local c = assert(T.cluster { masters = 3, replicas = 0 })
    finally(c.cleanup)
    for _, k in ipairs { "", "a", "foo", "123456789", "{user1000}.following", "foo{}{bar}", "foo{{bar}}zap",
                         "foo{bar}{zap}", "{", "}", "{}", "nomba-oauth:{AAAAAAAAAAAAAAAAAAAAAA}:lock",
                         "nomba-oauth:{webhook:a}b}:done", ("x"):rep(300) } do
      assert.are.equal(c.keyslot(k), core.redis_slot(k), k)
    end
  end)

  describe("Sentinel", function()
    local s
    after_each(function()
      if s then s.cleanup() end
      s = nil
    end)

    it("finds the master, follows a SIGKILL failover with the fleet's one session, and keeps claims #slow",
       function()
      s = assert(T.sentinel { replicas = 2, sentinels = 3 })
      -- a dead sentinel first in the list costs nothing but a refused connect
      local sentinels = { { host = "127.0.0.1", port = require("nomba.oauth.simulator").free_port() } }
      for _, n in ipairs(s.sentinels) do sentinels[#sentinels + 1] = n end
      local store = oauth.store.redis({ sentinels = sentinels, master_name = s.master_name }, { timeout = 2 })
      local _, mport = s.master()
      assert.is_true(store:set("k", "v"))
      assert.are.equal("v\n", s.cli(mport, "get nomba-oauth:k"))
      -- claims before the failover: one done, one in flight
      assert.are.equal("first", oauth.webhook.claim(store, "done-1", 60))
      assert.is_true(oauth.webhook.done(store, "done-1"))
      assert.are.equal("first", oauth.webhook.claim(store, "flight-1", 60))
      -- a fleet of four holding one session; the master is killed under it
      local collect = fleet(sim, 4, 10, "sentinel:" .. s.master_name .. ":" .. ports(s.sentinels))
      H.sleep(3)
      assert.is_true(replicated(s.cli, mport))
      local old = s.kill_master()
      local t0 = core.now()
      assert.is_true(s.wait_failover(old, 20))
      local failover = core.now() - t0
      local summaries = collect()
      local counts = assert(sim:counts())
      for _, w in ipairs(summaries) do
        assert.are.equal(0, w.failures, cjson.encode(w))
        assert.is_true(w.final_valid)
      end
      assert.are.equal(1, counts.issue or 0, cjson.encode(counts))   -- one login for the fleet
      assert.is_nil(counts.sessions_ended)
      -- the same store object goes on on the new master: the claims are there
      assert.are.equal("done", oauth.webhook.claim(store, "done-1", 60))
      assert.are.equal("held", oauth.webhook.claim(store, "flight-1", 60))
      assert.are.equal("first", oauth.webhook.claim(store, "after-1", 60))
      local _, nport = s.master()
      assert.are_not.equal(old, nport)
      assert.are.equal("1\n", s.cli(nport, "exists nomba-oauth:webhook:after-1"))
      -- a failover is not a loss: the marker was replicated
      assert.are.equal(0, store.data_lost)
      -- the old master comes back empty (no persistence), a master until Sentinel demotes it:
      -- the store never writes there
      assert.is_true(s.restart(old))
      local deadline = core.now() + 3
      local n = 0
      while core.now() < deadline do
        n = n + 1
        assert.is_true(store:set("post-" .. n, "v"))
        assert.are.equal("0\n", s.cli(old, "exists nomba-oauth:post-" .. n))
        H.sleep(0.05)
      end
      io.stderr:write(("\n[sentinel] failover %.1f s after SIGKILL; 4 processes, %d logins, %d refreshes\n"):format(
        failover, counts.issue or 0, counts.refresh or 0))
    end)

    it("follows a manual failover within a second, and refuses a node that is not the master", function()
      s = assert(T.sentinel { replicas = 1, sentinels = 1 })
      local store = oauth.store.redis({ sentinels = s.sentinels, master_name = s.master_name }, { timeout = 1 })
      assert.is_true(store:set("a", "1"))
      local _, mport = s.master()
      local rport
      for _, n in ipairs(s.nodes) do if n.port ~= mport then rport = n.port end end
      -- a manual failover: the old master keeps its connections (and may stay a master for
      -- seconds); the store asks the sentinels again within a second and writes to the new one
      -- (a sentinel refuses with NOGOODSLAVE until it has heard from the replica)
      local deadline = core.now() + 20
      while not s.cli(s.sentinels[1].port, "sentinel failover " .. s.master_name):match("^OK") do
        assert(core.now() < deadline, "no manual failover")
        H.sleep(0.2)
      end
      assert.is_true(s.wait_failover(mport, 20))
      H.sleep(1.1)
      assert.is_true(store:set("b", "2"))
      assert.are.equal("2\n", s.cli(rport, "get nomba-oauth:b"))
      assert.are.equal("", s.cli(mport, "get nomba-oauth:b"):gsub("%s", ""))
      -- the master made a replica behind Sentinel's back: -READONLY on the store's connection,
      -- the sentinels asked again, and a node whose ROLE is not master is never written to
      assert.matches("OK", s.cli(rport, "replicaof 127.0.0.1 " .. mport))
      local v, err = store:set("c", "3")
      assert.is_nil(v)
      assert.matches("127.0.0.1:" .. rport .. ": the node is a slave, not the master", err)
      assert.are.equal("", s.cli(rport, "get nomba-oauth:c"):gsub("%s", ""))
      -- a sentinel list naming no such master is a store error naming it, not a raise
      local wrong = oauth.store.redis({ sentinels = s.sentinels, master_name = "other" }, { timeout = 0.5 })
      v, err = wrong:get("a")
      assert.is_nil(v)
      assert.matches("does not know a master named other", err)
    end)
  end)

  describe("Cluster", function()
    local c
    after_each(function()
      if c then c.cleanup() end
      c = nil
    end)

    it("keeps a client's keys in one slot, and follows a SIGKILL failover with one session #slow", function()
      c = assert(T.cluster { masters = 3, replicas = 1 })
      local store = oauth.store.redis({ cluster = { c.seeds[1] } }, { timeout = 2, prefix = "fleet:" })
      local probe = H.client { store = store }
      local id = core.store_id(probe)
      local slot = core.redis_slot("{" .. id .. "}")
      assert(probe:token())
      probe:close()
      -- every key of the client hashes to its slot, on one node
      local node = c.master_of(slot)
      for _, k in ipairs { "fleet:{" .. id .. "}", "fleet:{" .. id .. "}:gen", "fleet:{" .. id .. "}:lock" } do
        assert.are.equal(slot, c.keyslot(k))
      end
      assert.matches("^n1%.", c.cli(node, "get fleet:{" .. id .. "}"))
      assert.is_true(oauth.webhook.done(store, "done-1"))
      local wslot = core.redis_slot("{webhook:done-1}")
      assert.are.equal(wslot, c.keyslot("fleet:{webhook:done-1}:done"))
      -- the fleet (seeded with every node); the master of the fleet's slot is killed under it
      H.reset()
      local collect = fleet(sim, 4, 10, "cluster:" .. ports(c.seeds))
      H.sleep(3)
      assert.is_true(replicated(c.cli, node))
      c.kill(node)
      local t0 = core.now()
      assert.is_true(c.wait_failover(slot, node, 20))
      local failover = core.now() - t0
      local summaries = collect()
      local counts = assert(sim:counts())
      for _, w in ipairs(summaries) do
        assert.are.equal(0, w.failures, cjson.encode(w))
        assert.is_true(w.final_valid)
      end
      assert.is_true((counts.issue or 0) <= 1, cjson.encode(counts))   -- the fleet's one session
      assert.is_nil(counts.sessions_ended)
      assert.are.equal("done", oauth.webhook.claim(store, "done-1", 60))
      assert.are.equal(0, store.data_lost)
      io.stderr:write(("\n[cluster] failover %.1f s after SIGKILL; 4 processes, %d logins, %d refreshes\n"):format(
        failover, counts.issue or 0, counts.refresh or 0))
    end)

    it("follows a slot's migration: ASK while it moves, MOVED after", function()
      c = assert(T.cluster { masters = 3, replicas = 0 })
      local store = oauth.store.redis({ cluster = { c.seeds[2] } }, { timeout = 2 })
      assert.is_true(store:set("webhook:m1", "one"))
      local key = "nomba-oauth:{webhook:m1}"
      local slot = c.keyslot(key)
      local src = c.master_of(slot)
      local dst
      for _, n in ipairs(c.seeds) do if n.port ~= src then dst = n.port break end end
      local src_id = c.cli(src, "cluster myid"):match("%x+")
      local dst_id = c.cli(dst, "cluster myid"):match("%x+")
      assert.matches("OK", c.cli(dst, ("cluster setslot %d importing %s"):format(slot, src_id)))
      assert.matches("OK", c.cli(src, ("cluster setslot %d migrating %s"):format(slot, dst_id)))
      assert.matches("OK", c.cli(src, ("migrate 127.0.0.1 %d \"\" 0 5000 keys %s"):format(dst, key)))
      -- the key has moved, the slot not yet: the source answers ASK
      assert.matches("^ASK", c.cli(src, "get " .. key))
      assert.are.equal("one", store:get("webhook:m1"))
      assert.is_true(store:set("webhook:m1:done", "two"))          -- a new key of the slot: ASK too
      assert.are.equal("two\n", c.cli(dst, "-c get nomba-oauth:{webhook:m1}:done"))
      -- the slot is the destination's now: MOVED, then the whole map read again
      for _, n in ipairs(c.seeds) do
        c.cli(n.port, ("cluster setslot %d node %s"):format(slot, dst_id))
      end
      assert.matches("^MOVED", c.cli(src, "get " .. key))
      assert.are.equal("one", store:get("webhook:m1"))
      assert.are.equal("two", store:get("webhook:m1:done"))
      assert.are.equal(0, store.data_lost)
    end)

    it("refuses what a Cluster cannot do, naming the argument", function()
      assert.has_error(function() oauth.store.redis { cluster = { { host = "127.0.0.1", port = 1 } }, db = 2 } end,
                       "nomba.oauth.store.redis: bad argument #1 (db must be 0 on a Redis Cluster)")
      assert.has_error(function() oauth.store.redis { cluster = {} } end,
                       "nomba.oauth.store.redis: bad argument #1 (cluster must be a list of {host =, port =})")
      assert.has_error(function() oauth.store.redis { sentinels = { { host = "127.0.0.1", port = 1 } } } end,
                       "nomba.oauth.store.redis: bad argument #1 (master_name must be a non-empty string)")
      assert.has_error(function()
        oauth.store.redis { sentinels = { { host = "127.0.0.1", port = 70000 } }, master_name = "m" }
      end, "nomba.oauth.store.redis: bad argument #1 (sentinels[1] must be {host = a name or address, " ..
           "port = 1 to 65535})")
      assert.has_error(function()
        oauth.store.redis { host = "127.0.0.1", cluster = { { host = "127.0.0.1", port = 1 } } }
      end, "nomba.oauth.store.redis: bad argument #1 (give one of host, sentinels and cluster)")
    end)
  end)

  describe("in OpenResty (lua-resty-redis on cosockets)", function()
    local topo, a
    after_each(function()
      if a then a:stop() end
      if topo then topo.cleanup() end
      a, topo = nil, nil
    end)

    local function get(path)
      local out = H.sh("curl -s -w '\\n%{http_code}' '" .. a.url .. path .. "'")
      local body, code = out:match("^(.*)\n(%d+)$")
      return tonumber(code), body
    end

    for _, kind in ipairs { "sentinel", "cluster" } do
      it("four workers share one session through " .. kind .. " across a SIGKILL failover #slow", function()
        local config
        if kind == "sentinel" then
          topo = assert(T.sentinel { replicas = 1, sentinels = 3 })
          local list = {}
          for i, n in ipairs(topo.sentinels) do list[i] = n.port end
          config = { redis_sentinels = list, redis_master_name = topo.master_name, timeout = 0.5 }
        else
          topo = assert(T.cluster { masters = 3, replicas = 1 })
          local list = {}
          for i, n in ipairs(topo.seeds) do list[i] = n.port end
          config = { redis_cluster = list, timeout = 0.5 }
        end
        a = H.openresty_app { workers = 4, config = config }
        for _ = 1, 20 do
          local code, body = get("/token")
          assert.are.equal(200, code, body)
        end
        assert.are.equal(1, H.count("issue"))
        local claimed = cjson.decode(select(2, get("/claim?id=before&done=1")))
        assert.are.equal("first", claimed.got, claimed.err)
        -- the master (of the fleet's slot, on the Cluster) killed
        local probe = H.client {}
        local slot = core.redis_slot("{" .. core.store_id(probe) .. "}")
        probe:close()
        local old = kind == "sentinel" and select(2, topo.master()) or topo.master_of(slot)
        assert.is_true(replicated(topo.cli, old))     -- (what a replica has not got, a failover loses)
        topo.kill(old)
        -- claims during the failover: each store call waits for a master within its bound (0.5 s,
        -- shorter than the failover), then fails: a store error, never a raise or a busy loop
        local urls = {}
        for i = 1, 16 do urls[i] = "-o /dev/null " .. a.url .. "/claim?id=during-" .. i end
        H.sh("curl -s --parallel --parallel-max 16 " .. table.concat(urls, " ") .. " 2>/dev/null")
        if kind == "sentinel" then
          assert.is_true(topo.wait_failover(old, 20))
        else
          assert.is_true(topo.wait_failover(slot, old, 20))
        end
        for _ = 1, 20 do
          local code, body = get("/token")
          assert.are.equal(200, code, body)
        end
        assert.are.equal(1, H.count("issue"))
        assert.is_nil(assert(H.sim():counts()).sessions_ended)
        local again = cjson.decode(select(2, get("/claim?id=before")))
        assert.are.equal("done", again.got, again.err)
        assert.are.equal(0, again.data_lost)
        -- (nginx itself logs the refused connect to the dead node and the reads that timed out
        -- during the failover: lua_socket_log_errors); no
        -- warning either (a wait near the end of the bound was ngx.sleep(0) in a loop)
        assert.is_nil(a:error_log():find("ngx.sleep(0)", 1, true))
        for line in a:error_log():gmatch("[^\n]+") do
          if line:find("[error]", 1, true) and not line:find("lua tcp socket read timed out", 1, true) then
            assert.matches("connect%(%) failed %(111: Connection refused%)", line)
          end
        end
      end)
    end
  end)
end)
