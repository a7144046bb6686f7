--- The Redis store: every process on every host.
--
-- Five ways to give it Redis:
--   * connection parameters, `oauth.store.redis{host =, port =, username =,
--     password =, db =, ssl =, server_name =}`: the store owns its
--     connection (redis-lua in plain Lua; lua-resty-redis on cosockets in
--     OpenResty, a connection per operation from nginx's pool), connects,
--     authenticates (AUTH, with an ACL user when `username` is given) and
--     selects `db` itself, and connects again after a failure: a Redis
--     restart costs one failed call, never the fleet's one session;
--   * Redis Sentinel, `{sentinels = {{host =, port =}, ...}, master_name =,
--     sentinel_username =, sentinel_password =, ...}` and the parameters
--     above but `host` and `port`: the store asks the sentinels for the
--     master, writes only to a node whose `ROLE` says master, and asks again
--     after a connection failure or a `-READONLY`, waiting out a failover
--     within the call's bound;
--   * Redis Cluster, `{cluster = {{host =, port =}, ...}, ...}` (the seeds;
--     `db` must be 0): a client's keys share one hash slot (a hash tag of
--     their family, see below), the slot map is read from the cluster and
--     read again when it changes, `MOVED` and `ASK` are followed (at most
--     five redirects, within the call's bound);
--   * a connected redis-lua client: the store remembers its peer and, after
--     a connection failure, connects the client again (and authenticates
--     with `opts.password`, `opts.username`, selects `opts.db` when given);
--   * a function returning a connected client (or nil, err), called per
--     operation: any connector of yours.
-- Every call is bounded by the store's timeout (the client's `timeout`
-- unless `opts.timeout`): its connects, redirects, failover waits and
-- commands all draw from it. No password ever reaches an event, an error
-- or a log line.
--
-- Keys: a renewal touches three keys of one client, `<prefix><id>`,
-- `<prefix><id>:lock` and `<prefix><id>:gen` (and the 401 rule's
-- `<prefix><id>:401:<accountId>`), and webhook claims two per event,
-- `<prefix>webhook:<requestId>` and its `:done`. On a Cluster the family
-- (`<id>`, `webhook:<requestId>`) is a hash tag: `<prefix>{<id>}:lock`.
-- Every command is a single-key one (GET, SET with PX and NX, DEL, and
-- EVALs of one key that release or extend the lock for its owner).
--
-- Lost data: the store keeps a marker, `<prefix>epoch` (on a Cluster one
-- per master, `<prefix>{epoch-N}`), and looks at it on every new
-- connection and at most once a second (on Sentinel it asks the sentinels
-- where the master is at most once a second too). A marker that vanished or changed
-- since it last looked means Redis lost its data (a restart without
-- persistence, a FLUSHALL, a failover to a replica that had not got it):
-- exactly-once webhook grants were at risk. The store counts it
-- (`store.data_lost`), calls `opts.on_data_lost{node =, count =}`, and a
-- client using the store emits `store_data_lost` and counts it in status()
-- and metrics. A process that starts after the loss cannot see it.
-- @submodule nomba.oauth.store
local keys = require "nomba.oauth.store.keys"
local N = require "nomba.oauth.store.redis_node"
local Sentinel = require "nomba.oauth.store.sentinel"
local Cluster = require "nomba.oauth.store.cluster"
local platform = require "nomba.oauth.platform"
local DEFAULTS = require("nomba.oauth.options").DEFAULTS.store

local type, error, tostring, setmetatable, pcall, pairs, ipairs, tonumber =
  type, error, tostring, setmetatable, pcall, pairs, ipairs, tonumber
local min, max, floor = math.min, math.max, math.floor
local owner_id, check_key, family = keys.owner_id, keys.check_key, keys.family
local now, sleep, command, broken = platform.now, platform.sleep, N.command, N.broken
local RETRY_LEAST = DEFAULTS.redis_retry_least   -- less left of the bound is not worth a new connection
local REDIRECTS = DEFAULTS.redis_redirects
local PAUSE = DEFAULTS.redis_failover_pause
local CHECK_EVERY = DEFAULTS.redis_check_every
local REPLICA_WAIT = DEFAULTS.redis_replica_wait

local M = {}

local Redis = {}
Redis.__index = Redis

local UNLOCK = [[if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end return 0]]
local EXTEND = [[if redis.call("get", KEYS[1]) == ARGV[1] then
  return redis.call("pexpire", KEYS[1], ARGV[2]) end return 0]]

local function redis_ok(v)
  return v == "OK" or v == true or (type(v) == "table" and v.ok == "OK")
end

local function redis_value(v)
  if type(v) == "string" then return v end
  return nil        -- nil, false, ngx.null, cjson.null: a miss
end

-- The key in Redis: on a Cluster its family is a hash tag.
local function rkey(self, key)
  if self.cluster then
    local fam, rest = family(key)
    return self.prefix .. "{" .. fam .. "}" .. rest
  end
  return self.prefix .. key
end

-- A connection to host:port: the store's own (plain Lua, kept), one from
-- nginx's pool, or the connect function's. conn, fresh | nil, err.
local function open(self, host, port, left)
  if self.user_connect then
    local conn, err = self.user_connect()
    if not conn then return nil, "redis connect: " .. tostring(err) end
    return conn, false
  end
  if self.per_op then return self.connect(host, port, left) end
  local addr = host .. ":" .. port
  local c = self.conns[addr]
  if c then return c, false end
  local conn, err = self.connect(host, port, left)
  if not conn then return nil, err end
  self.conns[addr] = conn
  return conn, true
end

-- Gives a connection back: kept, pooled, or closed when it is not sound.
local function close(self, host, port, conn, sound)
  if self.user_connect or self.per_op then return N.release(conn, sound, self.keepalive, not self.user_connect) end
  if not sound and self.connect then
    N.drop(conn)
    self.conns[host .. ":" .. port] = nil
  end
end

local function lost(self, host, port)
  self.data_lost = (self.data_lost or 0) + 1
  if self.on_data_lost then
    pcall(self.on_data_lost, { node = host and (host .. ":" .. port) or "redis", count = self.data_lost })
  end
end

-- Looks at the data-loss marker on a connection's node, on a new
-- connection and at most once every CHECK_EVERY seconds. Returns an error
-- when a command failed (the connection may hold an answer not read yet:
-- it is not reused).
local function watch(self, conn, host, port, fresh)
  local mk = self.prefix .. "epoch"
  if self.cluster then
    local own = self.cluster:own_key(host, port, "epoch")
    if not own then return end
    mk = self.prefix .. own
  end
  local t = now()
  local last = self.checked[mk]
  if last and not fresh and t - last < CHECK_EVERY then return end
  self.checked[mk] = t
  local v, err = command(conn, "get", mk)
  if v == nil and err then return err end
  v = redis_value(v)
  local known = self.epochs[mk]
  if v == nil then
    local id = owner_id()
    local set
    set, err = command(conn, "set", mk, id, "NX")
    if set == nil and err then return err end
    if redis_ok(set) then
      v = id
    else
      v, err = command(conn, "get", mk)
      if v == nil and err then return err end
      v = redis_value(v)
    end
    if known then lost(self, host, port) end    -- it was there, and is gone
  elseif known and v ~= known then
    lost(self, host, port)                      -- planted again since: another process saw it gone
  end
  self.epochs[mk] = v or known
end

-- Where an operation on rk goes: host, port | nil, err.
local function where(self, rk, left, deadline)
  local cl = self.cluster
  if cl then
    if cl:due(now(), PAUSE) then
      local why
      cl.loading = now()                          -- (one reader at a time: the others use the map as it is)
      for _, n in ipairs(cl.known) do
        if now() + RETRY_LEAST > deadline then break end
        local conn, err = open(self, n.host, n.port, left)
        if conn then
          local ok, lerr = cl:load(conn, n)
          close(self, n.host, n.port, conn, ok ~= nil or not broken(lerr))
          if ok then why = nil break end
          why = lerr
        else
          why = err
        end
      end
      cl.loading, cl.read_at = false, now()
      if why and #cl.ranges == 0 then return nil, "redis cluster: " .. tostring(why) end
    end
    local h, p = cl:node(cl.slot(rk))
    if h then return h, p end
    return nil, "redis cluster: no node serves the slot of the key"
  end
  if self.sentinel then
    local m = self.master
    if not m or now() - m.at >= CHECK_EVERY then
      -- (asked again at most once a second: a master that lost its role without losing its
      -- connections, a manual failover, is left within that second)
      local h, p = self.sentinel:master(left)
      if not h then
        if m then return m.host, m.port end     -- the sentinels are away: the master stays
        return nil, "redis sentinel (" .. self.sentinel:names() .. "): " .. tostring(p)
      end
      if m and (m.host ~= h or m.port ~= p) and self.conns[m.host .. ":" .. m.port] then
        close(self, m.host, m.port, self.conns[m.host .. ":" .. m.port], false)
      end
      self.master = { host = h, port = p, at = now() }
    end
    return self.master.host, self.master.port
  end
  return self.host, self.port
end

-- Runs f(conn, rk) where the key lives; an error a new connection, a new
-- master or a new map may cure is tried again while the bound lasts (once
-- for a single node), a redirect followed. a, b as f answers, or nil, err.
local READ, WRITE = false, true
local function run(self, key, write, f)
  local rk = rkey(self, key)
  local bound_s = self.timeout or N.DEFAULT_TIMEOUT
  local deadline = now() + bound_s
  local redirects, tries, failures = 0, 0, 0
  local asking, why
  local many = self.cluster or self.sentinel
  while true do
    local left = deadline - now()
    if tries > 0 and left < RETRY_LEAST then return nil, "redis: " .. tostring(why) end
    tries = tries + 1
    local host, port, conn, fresh
    if asking then
      host, port = asking.host, asking.port
    else
      host, port = where(self, rk, left, deadline)
    end
    if host == nil and not self.user_connect and not self.r then
      why = port
    else
      if self.r then conn, fresh = self.r, false else conn, fresh = open(self, host, port, left) end
      if not conn then why = fresh end
    end
    if conn then
      N.bound(conn, max(left, 0.001))
      local role_ok, rerr = true, nil
      if fresh and self.sentinel then role_ok, rerr = Sentinel.is_master(conn) end
      if not role_ok then
        why = "redis " .. host .. ":" .. port .. ": " .. rerr
        close(self, host, port, conn, false)
        self.master = nil
      else
        local pre                                  -- a failure before the operation
        if self.watching and not asking then pre = watch(self, conn, host, port, fresh) end
        if asking and not pre then
          local v, aerr = command(conn, "asking")
          if v == nil then pre = aerr or "ASKING failed" end
        end
        asking = nil
        local ok, a, b = true, nil, pre
        if not pre then ok, a, b = pcall(f, conn, rk) end
        if not ok then
          close(self, host, port, conn, false)
          error(a, 0)
        end
        if not (a == nil and b ~= nil) then
          if write and self.replicas > 0 then
            -- the write on `replicas` replicas before the answer (what a failover promotes has it),
            -- waiting REPLICA_WAIT at most: a replica that is away slows writes, never fails them
            local w, werr = command(conn, "wait", self.replicas,
                                    max(1, floor(min(REPLICA_WAIT, deadline - now()) * 1000)))
            if w == nil and werr ~= nil then           -- (its answer may come later: not reused)
              close(self, host, port, conn, false)
              return a, b
            end
          end
          close(self, host, port, conn, true)
          return a, b
        end
        why = b
        local kind, slot, h2, p2 = nil, nil, nil, nil
        if self.cluster then kind, slot, h2, p2 = Cluster.redirect(why) end
        if kind then
          close(self, host, port, conn, true)
          redirects = redirects + 1
          if redirects > REDIRECTS then return nil, "redis cluster: more than " .. REDIRECTS .. " redirects" end
          if kind == "MOVED" then self.cluster:moved(slot, h2, p2) else asking = { host = h2, port = p2 } end
          tries = 0                                  -- a redirect is not a failure
        elseif tostring(why):find("^READONLY") then
          close(self, host, port, conn, false)         -- a master demoted under this connection
          self.master = nil
        elseif self.cluster and Cluster.unsettled(why) then
          close(self, host, port, conn, true)
          self.cluster.loaded = false
        elseif broken(why) then
          close(self, host, port, conn, false)
        else
          close(self, host, port, conn, true)
          return nil, why                            -- Redis refused the command: no retry cures it
        end
      end
    end
    if not many then
      -- a single node: once more on a new connection, when it can be made again
      if tries >= 2 or not self.connect then
        return nil, tries >= 2 and ("redis: " .. tostring(why)) or why
      end
    else
      if self.cluster then self.cluster.loaded = false end
      if self.sentinel and not conn then self.master = nil end
      failures = failures + 1
      if failures > 1 and tries > 0 then            -- the first retry at once (a stale connection)
        local rest = deadline - now() - RETRY_LEAST
        if rest < PAUSE / 10 then return nil, "redis: " .. tostring(why) end   -- (no sleeps of nothing)
        sleep(min(PAUSE, rest))
      end
    end
  end
end

local NAME = "nomba.oauth.store.redis"
local function bad(what) error(NAME .. ": bad argument #1 (" .. what .. ")", 3) end

-- The node lists of Sentinel and Cluster: {{host =, port =}, ...}.
local function nodes(list, what)
  if type(list) ~= "table" or #list == 0 then bad(what .. " must be a list of {host =, port =}") end
  local out = {}
  for i, n in ipairs(list) do
    if type(n) ~= "table" or type(n.host) ~= "string" or n.host == "" or n.host:find("[%s%c]") or
       type(n.port) ~= "number" or n.port ~= floor(n.port) or n.port < 1 or n.port > 65535 then
      bad(what .. "[" .. i .. "] must be {host = a name or address, port = 1 to 65535}")
    end
    out[i] = { host = n.host, port = n.port }
  end
  return out
end

local function params(client)
  local p = {}
  for k, v in pairs(client) do p[k] = v end
  for _, k in ipairs { "username", "password", "server_name", "sentinel_username", "sentinel_password",
                       "master_name" } do
    if p[k] ~= nil and type(p[k]) ~= "string" then bad(k .. " must be a string") end
  end
  if p.username ~= nil and p.password == nil then bad("username needs a password") end
  if p.sentinel_username ~= nil and p.sentinel_password == nil then
    bad("sentinel_username needs a sentinel_password")
  end
  if p.db ~= nil and not (type(p.db) == "number" and p.db >= 0 and p.db == floor(p.db)) then
    bad("db must be a whole number")
  end
  p.pool = p.pool or ("nomba-oauth-redis:" .. tostring(p.db or 0) .. ":" .. (p.username or "") ..
                      (p.ssl and ":tls" or "") .. "@")
  return p
end

--- A store in Redis: every process on every host.
-- @param client connection parameters `{host, port, username, password, db,
--   ssl, server_name}` (the store owns the connection); Sentinel's
--   `{sentinels = {{host, port}, ...}, master_name, sentinel_username,
--   sentinel_password, username, password, db, ssl, server_name}`; Cluster's
--   `{cluster = {{host, port}, ...}, username, password, ssl, server_name}`;
--   a connected redis-lua client; or a function returning a connected client
--   (or nil, err)
-- @tparam[opt] table opts `prefix` (default `"nomba-oauth:"`), `timeout`
--   (seconds each Redis call may take, connects, redirects and failover
--   waits included; default: the timeout of the client that uses the
--   store), `keepalive` (milliseconds an idle pooled connection lives,
--   default 10000), `replicas` (how many replicas a write waits for, with
--   `WAIT`, 0.1 s at most; default 1 on Sentinel and Cluster, else 0),
--   `on_data_lost` (a function called with `{node, count}`
--   when the store finds that Redis lost its data), and for a connected
--   client the `password`, `username` and `db` to use when it connects again
-- @treturn table store
function M.redis(client, opts)
  opts = opts or {}
  if opts.timeout ~= nil and not (type(opts.timeout) == "number" and opts.timeout > 0 and opts.timeout <= 300) then
    error(NAME .. ": opts.timeout must be a number of seconds from 0 to 300", 2)
  end
  if opts.replicas ~= nil and not (type(opts.replicas) == "number" and opts.replicas >= 0 and
                                    opts.replicas <= 16 and opts.replicas == floor(opts.replicas)) then
    error(NAME .. ": opts.replicas must be a whole number from 0 to 16", 2)
  end
  if opts.on_data_lost ~= nil and type(opts.on_data_lost) ~= "function" then
    error(NAME .. ": opts.on_data_lost must be a function", 2)
  end
  local store = setmetatable({ keepalive = opts.keepalive or DEFAULTS.redis_keepalive_ms,
                               prefix = opts.prefix or DEFAULTS.prefix, owners = {}, conns = {},
                               checked = {}, epochs = {}, data_lost = 0, watching = true,
                               on_data_lost = opts.on_data_lost }, Redis)
  if type(client) == "function" then
    store.user_connect = client
  elseif type(client) == "table" and client.get == nil and
         (client.host ~= nil or client.sentinels ~= nil or client.cluster ~= nil) then
    local p = params(client)
    if p.sentinels ~= nil then
      if p.host ~= nil or p.cluster ~= nil then bad("give one of host, sentinels and cluster") end
      if type(p.master_name) ~= "string" or p.master_name == "" then bad("master_name must be a non-empty string") end
      store.sentinel = Sentinel.new(nodes(p.sentinels, "sentinels"), p.master_name, p)
    elseif p.cluster ~= nil then
      if p.host ~= nil then bad("give one of host, sentinels and cluster") end
      if p.db ~= nil and p.db ~= 0 then bad("db must be 0 on a Redis Cluster") end
      p.db = nil
      store.cluster = Cluster.new(nodes(p.cluster, "cluster"))
    else
      if type(p.host) ~= "string" or p.host == "" then bad("host must be a non-empty string") end
      p.port = p.port or 6379
      if type(p.port) ~= "number" then bad("port must be a number") end
      store.host, store.port = p.host, p.port
    end
    store.connect = N.connector(p)
    store.per_op = N.in_openresty()           -- a connection per operation, from nginx's pool
  elseif type(client) == "table" then
    for _, m in ipairs { "get", "set", "del", "eval" } do
      if client[m] == nil then
        error(NAME .. ": the Redis client has no '" .. m .. "' method", 2)
      end
    end
    store.client = client
    -- a redis-lua client: its peer, to connect it again after a failure
    local sock = type(client.network) == "table" and client.network.socket
    local host, port
    if sock and type(sock.getpeername) == "function" then host, port = sock:getpeername() end
    if not host then
      store.r = client                        -- used as it is, never connected again
    else
      store.host, store.port = host, tonumber(port)
      store.conns[host .. ":" .. store.port] = client
      local p = { username = opts.username, password = opts.password, db = opts.db }
      store.connect = function(_, _, seconds)
        local new = require("socket").tcp()
        new:settimeout(seconds)
        local ok, err = new:connect(host, tonumber(port))
        if not ok then
          new:close()
          return nil, "redis connect " .. host .. ":" .. port .. ": " .. tostring(err)
        end
        pcall(function() client.network.socket:close() end)
        client.network.socket = new
        local greeted, gerr = N.greet(client, p)
        if not greeted then return nil, gerr end
        return client, true
      end
    end
  else
    error(NAME .. ": bad argument #1 (connection parameters, Sentinel's or Cluster's, a Redis client or a " ..
          "connect function expected)", 2)
  end
  store.replicas = opts.replicas or ((store.sentinel or store.cluster) and 1 or 0)
  if opts.timeout then store:set_timeout(opts.timeout) end
  return store
end

--- Bounds every Redis call (seconds). A client that uses this store calls it
-- with its own `timeout` unless `opts.timeout` was given. A client object is
-- bounded at once; with a connect function each connection is bounded after
-- it connects (the connect itself is bounded by what the function sets).
-- @tparam number seconds
function Redis:set_timeout(seconds)
  self.timeout = seconds
  if self.client then N.bound(self.client, seconds) end
end

function Redis:get(key)
  check_key(key)
  return run(self, key, READ, function(r, k)
    local v, err = command(r, "get", k)
    if v == nil and err then return nil, err end
    return redis_value(v) or false             -- false: a miss, not a failure
  end)
end

function Redis:set(key, value, ttl)
  check_key(key)
  return run(self, key, WRITE, function(r, k)
    local v, err
    if ttl and ttl > 0 then
      v, err = command(r, "set", k, value, "PX", max(1, floor(ttl * 1000)))
    else
      v, err = command(r, "set", k, value)
    end
    if not redis_ok(v) then return nil, err or ("SET answered " .. tostring(v)) end
    return true
  end)
end

function Redis:delete(key)
  check_key(key)
  return run(self, key, WRITE, function(r, k)
    local v, err = command(r, "del", k)
    if v == nil and err then return nil, err end
    return true
  end)
end

function Redis:add(key, value, ttl)
  check_key(key)
  return run(self, key, WRITE, function(r, k)
    local v, err = command(r, "set", k, value, "NX", "PX", max(1, floor(ttl * 1000)))
    if redis_ok(v) then return true end
    if v == nil and err then return nil, err end
    return false
  end)
end

function Redis:lock(key, ttl)
  check_key(key)
  local owner = owner_id()
  return run(self, key, WRITE, function(r, k)
    local v, err = command(r, "set", k, owner, "NX", "PX", max(1, floor(ttl * 1000)))
    if redis_ok(v) then
      self.owners[key] = owner
      return true, owner
    end
    if v == nil and err then return nil, err end
    -- held: by someone else (nil/ngx.null from SET NX), or by this very lock,
    -- set by a first try whose answer was lost (the store tries again)
    if redis_value(command(r, "get", k)) == owner then
      self.owners[key] = owner
      return true, owner
    end
    return false
  end)
end

--- Keeps a lock this store holds for `ttl` more seconds: true, or false
-- when it is not held any more (its lease lapsed).
function Redis:extend(key, ttl, owner)
  check_key(key)
  owner = owner or self.owners[key]
  if not owner then return false end
  return run(self, key, WRITE, function(r, k)
    local v, err = command(r, "eval", EXTEND, 1, k, owner, max(1, floor(ttl * 1000)))
    if v == nil and err then return nil, err end
    return v == 1
  end)
end

function Redis:unlock(key, owner)
  check_key(key)
  owner = owner or self.owners[key]
  if self.owners[key] == owner then self.owners[key] = nil end
  if not owner then return true end
  return run(self, key, WRITE, function(r, k)
    local v, err = command(r, "eval", UNLOCK, 1, k, owner)    -- compare and delete
    if v == nil and err then return nil, err end
    return true
  end)
end

return M.redis
