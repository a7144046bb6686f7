--- Real Redis Sentinel and Cluster topologies on loopback, for the specs
-- (spec/29-redis_ha) and the soak (SOAK_REDIS=sentinel|cluster): every
-- node a redis-server process (no persistence unless `appendonly`), started
-- here, killed with SIGKILL on demand, and cleaned up with its directory.
--   T.sentinel{replicas =, sentinels =, down_after_ms =, failover_timeout_ms =, master_name =}
--   T.cluster{masters =, replicas =, node_timeout_ms =}
--   T.store(spec[, opts]): a store from "host:port", "sentinel:NAME:PORT,..." or "cluster:PORT,..."
local core = require "nomba.oauth.core"

local T = {}

local function sleep(s) core.sleep(s) end

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  return out
end

local function cli(port, args)
  return sh("env -u LD_PRELOAD redis-cli -p " .. port .. " " .. args .. " 2>&1")
end

-- Waits up to `seconds` for f() to be true.
local function until_(seconds, f)
  local deadline = core.now() + seconds
  repeat
    if f() then return true end
    sleep(0.03)
  until core.now() > deadline
  return false
end

-- A node: a redis-server started with `args` in its own directory.
local function node(dir, args, persistence)
  -- (a Cluster node also listens on port + 10000, its bus: both kept below the ephemeral range)
  local port = args.cluster and math.random(10000, 22000) or require("nomba.oauth.simulator").free_port()
  local ndir = dir .. "/" .. port
  os.execute("mkdir -p " .. ndir)
  local n = { port = port, dir = ndir }
  n.cmd = ("env -u LD_PRELOAD redis-server %s --port %d --bind 127.0.0.1 %s --daemonize yes --pidfile %s/pid " ..
           "--dir %s --logfile %s/log %s"):format(args.conf or "", port, args.sentinel and "--sentinel" or "",
           ndir, ndir, ndir, args.extra or "")
  if not args.sentinel then
    -- (a replica's full sync at once, not after Redis's default 5 s wait)
    n.cmd = n.cmd .. " --repl-diskless-sync-delay 0" ..
            (persistence and " --appendonly yes --appendfsync everysec" or " --save '' --appendonly no")
  end
  function n.start()
    n.pid = nil
    os.remove(ndir .. "/pid")
    os.execute(n.cmd)
    return until_(5, function()
      local f = io.open(ndir .. "/pid")
      n.pid = f and tonumber(f:read("*a"))
      if f then f:close() end
      -- (ours, not another server that had the port: its process id)
      return n.pid ~= nil and tonumber(cli(port, "info server"):match("process_id:(%d+)")) == n.pid
    end)
  end
  return n
end

local function kill(pids, signal)
  if #pids > 0 then os.execute("kill -" .. signal .. " " .. table.concat(pids, " ") .. " 2>/dev/null") end
end

local function topology()
  local t = { dir = sh("mktemp -d /tmp/nomba-redis-ha.XXXXXX"):gsub("%s+$", ""), all = {} }
  t.cli = cli
  function t.add(args, persistence)
    local why
    for _ = 1, 8 do                      -- a port taken meanwhile: another one
      local n = node(t.dir, args, persistence)
      if n.start() then
        t.all[#t.all + 1] = n
        return n
      end
      why = sh("cat " .. n.dir .. "/log")
      if n.pid then kill({ n.pid }, 9) end
    end
    return nil, "redis-server did not start: " .. why
  end
  function t.by_port(port)
    for _, n in ipairs(t.all) do if n.port == port then return n end end
  end
  --- SIGKILL the node on `port`.
  function t.kill(port)
    local n = assert(t.by_port(port), "no node on " .. tostring(port))
    kill({ n.pid }, 9)
    until_(5, function() return not os.execute("kill -0 " .. n.pid .. " 2>/dev/null") end)
    n.pid = nil
    return port
  end
  --- Starts a killed node again with its arguments (its data gone without persistence).
  function t.restart(port) return assert(t.by_port(port)).start() end
  function t.cleanup()
    local pids = {}
    for _, n in ipairs(t.all) do if n.pid then pids[#pids + 1] = n.pid end end
    kill(pids, 9)
    for _, n in ipairs(t.all) do
      if n.pid then until_(5, function() return not os.execute("kill -0 " .. n.pid .. " 2>/dev/null") end) end
      n.pid = nil
    end
    os.execute("rm -rf " .. t.dir)
  end
  return t
end

--- One master, `replicas` replicas, `sentinels` sentinels (quorum 2, or 1 for one).
function T.sentinel(o)
  o = o or {}
  local t = topology()
  local name = o.master_name or "nomba"
  local ok, err = pcall(function()
    local m = assert(t.add({}, o.appendonly))
    local nodes = { m }
    for _ = 1, o.replicas or 2 do
      nodes[#nodes + 1] = assert(t.add({ extra = "--replicaof 127.0.0.1 " .. m.port }, o.appendonly))
    end
    assert(until_(10, function()
      return tonumber(cli(m.port, "info replication"):match("connected_slaves:(%d+)")) == #nodes - 1
    end), "the replicas did not connect")
    local count = o.sentinels or 3
    local quorum = count >= 2 and 2 or 1
    t.sentinels = {}
    for i = 1, count do
      local conf = t.dir .. "/sentinel" .. i .. ".conf"
      local f = assert(io.open(conf, "w"))
      f:write(("sentinel monitor %s 127.0.0.1 %d %d\n"):format(name, m.port, quorum),
              ("sentinel down-after-milliseconds %s %d\n"):format(name, o.down_after_ms or 1000),
              ("sentinel failover-timeout %s %d\n"):format(name, o.failover_timeout_ms or 3000),
              ("sentinel parallel-syncs %s 1\n"):format(name))
      f:close()
      local s = assert(t.add { conf = conf, sentinel = true })
      t.sentinels[i] = { host = "127.0.0.1", port = s.port }
    end
    for _, s in ipairs(t.sentinels) do
      assert(until_(15, function()
        local info = cli(s.port, "info sentinel")
        local sentinels = tonumber(info:match("sentinels=(%d+)"))
        local slaves = tonumber(info:match("slaves=(%d+)"))
        return info:match("status=ok") and slaves == #nodes - 1 and sentinels == count
      end), "sentinel " .. s.port .. " did not see the topology: " .. cli(s.port, "info sentinel"))
    end
    t.nodes = nodes
  end)
  if not ok then
    t.cleanup()
    return nil, tostring(err)
  end
  t.master_name = name
  --- The master as the sentinels report it: host, port.
  function t.master()
    for _, s in ipairs(t.sentinels) do
      local h, p = cli(s.port, "sentinel get-master-addr-by-name " .. name):match("^(%S+)\n(%d+)")
      if h then return h, tonumber(p) end
    end
  end
  function t.kill_master()
    local _, port = t.master()
    return t.kill(port)
  end
  --- True once every sentinel reports a master other than `old` and that node says ROLE master.
  function t.wait_failover(old, seconds)
    return until_(seconds, function()
      local port
      for _, s in ipairs(t.sentinels) do
        local p = tonumber(cli(s.port, "sentinel get-master-addr-by-name " .. name):match("\n(%d+)"))
        if not p or p == old or (port and p ~= port) then return false end
        port = p
      end
      return cli(port, "role"):match("^master") ~= nil
    end)
  end
  return t
end

--- `masters` masters with `replicas` replicas each, as a Cluster.
function T.cluster(o)
  o = o or {}
  local t = topology()
  local masters, replicas = o.masters or 3, o.replicas or 1
  local ok, err = pcall(function()
    local args = { cluster = true,
                   extra = ("--cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout %d " ..
                            "--cluster-replica-validity-factor 0"):format(o.node_timeout_ms or 1000) }
    local addrs = {}
    t.seeds = {}
    for i = 1, masters * (1 + replicas) do
      local n = assert(t.add(args, o.appendonly))
      addrs[i] = "127.0.0.1:" .. n.port
      t.seeds[i] = { host = "127.0.0.1", port = n.port }
    end
    local out = sh(("env -u LD_PRELOAD redis-cli --cluster create %s --cluster-replicas %d --cluster-yes 2>&1")
                   :format(table.concat(addrs, " "), replicas))
    assert(out:match("All 16384 slots covered"), out)
    assert(until_(20, function()
      for _, n in ipairs(t.all) do
        if not cli(n.port, "cluster info"):match("cluster_state:ok") then return false end
      end
      -- every replica attached to its master
      local attached = 0
      for _, n in ipairs(t.all) do
        if cli(n.port, "role"):match("^slave\n[^\n]*\n%d+\nconnected") then attached = attached + 1 end
      end
      return attached == masters * replicas
    end), "the cluster did not settle")
  end)
  if not ok then
    t.cleanup()
    return nil, tostring(err)
  end
  t.nodes = t.all
  function t.keyslot(key)
    return tonumber(cli(t.seeds[1].port, "cluster keyslot '" .. key:gsub("'", "'\\''") .. "'"):match("%d+"))
  end
  --- The port of the master serving `slot` now, as a live node sees it.
  function t.master_of(slot)
    for _, n in ipairs(t.all) do
      if n.pid then
        local out = cli(n.port, "cluster nodes")
        for line in out:gmatch("[^\n]+") do
          local port, flags, state, ranges = line:match("^%x+ [%d%.]+:(%d+)@%d+%S* (%S+) %S+ %d+ %d+ %d+ (%S+)(.*)$")
          if port and flags:match("master") and not flags:match("fail") and state == "connected" then
            for r in ranges:gmatch("%S+") do
              local lo, hi = r:match("^(%d+)%-(%d+)$")
              lo = tonumber(lo or r:match("^(%d+)$"))
              hi = tonumber(hi) or lo
              if lo and slot >= lo and slot <= hi then return tonumber(port) end
            end
          end
        end
        return nil
      end
    end
  end
  --- True once a live node reports a master other than `old` for `slot`, it says ROLE
  -- master, and every live node says cluster_state:ok.
  function t.wait_failover(slot, old, seconds)
    return until_(seconds, function()
      local port = t.master_of(slot)
      if not port or port == old or not cli(port, "role"):match("^master") then return false end
      for _, n in ipairs(t.all) do
        if n.pid and not cli(n.port, "cluster info"):match("cluster_state:ok") then return false end
      end
      return true
    end)
  end
  return t
end

--- A store from a spec: "PORT" (one node), "sentinel:NAME:PORT,PORT,..." or
-- "cluster:PORT,PORT,..." (all on 127.0.0.1).
function T.store(spec, opts)
  local oauth = require "nomba.oauth"
  local nodes = {}
  for p in tostring(spec):match("([%d,]+)$"):gmatch("%d+") do
    nodes[#nodes + 1] = { host = "127.0.0.1", port = tonumber(p) }
  end
  local name = tostring(spec):match("^sentinel:([^:]+):")
  if name then return oauth.store.redis({ sentinels = nodes, master_name = name }, opts) end
  if tostring(spec):match("^cluster:") then return oauth.store.redis({ cluster = nodes }, opts) end
  return oauth.store.redis({ host = "127.0.0.1", port = nodes[1].port }, opts)
end

return T
