--- The Redis store: every process on every host.
--
-- Three ways to give it Redis:
--   * connection parameters, `oauth.store.redis{host =, port =, username =,
--     password =, db =, ssl =, server_name =}`: the store owns its
--     connection (redis-lua in plain Lua; lua-resty-redis on cosockets in
--     OpenResty, a connection per operation from nginx's pool), connects,
--     authenticates (AUTH, with an ACL user when `username` is given) and
--     selects `db` itself, and connects again after a failure: a Redis
--     restart costs one failed call, never the fleet's one session;
--   * a connected redis-lua client: the store remembers its peer and, after
--     a connection failure, connects the client again (and authenticates
--     with `opts.password`, `opts.username`, selects `opts.db` when given);
--   * a function returning a connected client (or nil, err), called per
--     operation: OpenResty's lua-resty-redis, whose connections cannot
--     outlive a request, or any Sentinel-aware connector of yours.
-- Every call is bounded by the store's timeout (the client's `timeout`
-- unless `opts.timeout`). No password ever reaches an event, an error or a
-- log line.
--
-- Redis Sentinel or Cluster: a renewal touches three keys of one client,
-- `<prefix><id>`, `<prefix><id>:lock` and `<prefix><id>:gen` (and the 401
-- rule's `<prefix><id>:401:<accountId>`), and webhook claims two per event,
-- `<prefix>webhook:<requestId>` and its `:done`; every command is a
-- single-key one (GET, SET with PX and NX, DEL, and EVALs of one key that
-- release or extend the lock for its owner), so a Cluster needs no hash tags, and a
-- Sentinel deployment needs a connect function that asks Sentinel for the
-- master.
-- @submodule nomba.oauth.store
local keys = require "nomba.oauth.store.keys"
local DEFAULTS = require("nomba.oauth.options").DEFAULTS.store

local type, error, tostring, setmetatable, pcall, rawget, pairs, ipairs =
  type, error, tostring, setmetatable, pcall, rawget, pairs, ipairs
local owner_id, check_key = keys.owner_id, keys.check_key
local now = require("nomba.oauth.core").now
local RETRY_LEAST = DEFAULTS.redis_retry_least   -- less left of the bound is not worth a new connection

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

-- A connection failure a new connection may cure (not a command Redis refused).
local function broken(err)
  local s = tostring(err):lower()
  return s:find("closed", 1, true) or s:find("timeout", 1, true) or s:find("refused", 1, true) or
         s:find("broken pipe", 1, true) or s:find("reset", 1, true) or s:find("connect", 1, true) or
         s:find("loading", 1, true) or s:find("noauth", 1, true)
end

-- Bounds each Redis call of a connection, where the client library allows it.
local function bound(conn, seconds)
  if not seconds then return end
  if type(conn.set_timeout) == "function" then                   -- lua-resty-redis
    conn:set_timeout(seconds * 1000)
  elseif type(conn.network) == "table" and conn.network.socket then   -- redis-lua (LuaSocket)
    conn.network.socket:settimeout(seconds)
  end
end

-- AUTH (with an ACL user when given) and SELECT on a new connection; the
-- password goes to Redis only, never into a message.
local function greet(conn, p)
  if p.password ~= nil then
    local ok, v, err = pcall(function()
      if p.username ~= nil then return conn:auth(p.username, p.password) end
      return conn:auth(p.password)
    end)
    if not ok or (v == nil and err) or v == false then
      return nil, "redis AUTH failed" .. (p.username and (" for user " .. p.username) or "")
    end
  end
  if p.db ~= nil then
    local ok, v, err = pcall(conn.select, conn, p.db)
    if not ok or (v == nil and err) then return nil, "redis SELECT " .. tostring(p.db) .. " failed" end
  end
  return true
end

local function in_openresty()
  local ngx = rawget(_G, "ngx")
  return type(ngx) == "table" and type(ngx.socket) == "table" and type(ngx.get_phase) == "function" and
         ngx.get_phase() ~= "init"
end

-- A connect function from parameters: lua-resty-redis on cosockets in
-- OpenResty (TLS verified against lua_ssl_trusted_certificate), redis-lua
-- elsewhere.
local function connector(p, store)
  if in_openresty() then
    local ok, lib = pcall(require, "resty.redis")
    if not ok then ok, lib = pcall(require, "nginx.redis") end     -- Debian's lua-nginx-redis
    if not ok then error("nomba.oauth.store.redis: lua-resty-redis is not installed", 3) end
    return function()
      local red = lib:new()
      if store.timeout then red:set_timeout(store.timeout * 1000) end
      local ok2, err = red:connect(p.host, p.port, { pool = p.pool, pool_size = p.pool_size })
      if not ok2 then return nil, "redis connect " .. p.host .. ":" .. p.port .. ": " .. tostring(err) end
      if red:get_reused_times() == 0 then
        if p.ssl then
          -- lua-resty-redis 0.27 (Debian) has no TLS option: the handshake on its socket,
          -- verified (there is no switch to turn verification off)
          local sock = rawget(red, "_sock")
          -- (Debian's lua-resty-core 0.1.25 can raise there: keep it a failure)
          local called, session, herr = pcall(sock.sslhandshake, sock, nil, p.server_name or p.host, true)
          if not called then session, herr = nil, session end
          if not session then
            red:close()
            return nil, "redis TLS handshake: " .. tostring(herr)
          end
        end
        local greeted, gerr = greet(red, p)
        if not greeted then
          red:close()
          return nil, gerr
        end
      end
      return red
    end
  end
  if p.ssl then
    error("nomba.oauth.store.redis: ssl needs OpenResty's cosockets (redis-lua speaks plain TCP)", 3)
  end
  if not package.path:find("/usr/share/lua/5.1/", 1, true) then
    package.path = package.path .. ";/usr/share/lua/5.1/?.lua"    -- Debian's lua-redis, on any Lua
  end
  local ok, redis = pcall(require, "redis")
  if not ok then error("nomba.oauth.store.redis: redis-lua (Debian lua-redis) is not installed", 3) end
  return function()
    local okc, conn = pcall(redis.connect, { host = p.host, port = p.port,
                                             timeout = store.timeout or DEFAULTS.redis_timeout })
    if not okc then return nil, tostring(conn) end
    local greeted, gerr = greet(conn, p)
    if not greeted then
      pcall(conn.quit, conn)
      return nil, gerr
    end
    return conn
  end
end

--- A store in Redis: every process on every host.
-- @param client connection parameters `{host, port, username, password, db,
--   ssl, server_name}` (the store owns the connection), a connected redis-lua
--   client, or a function returning a connected client (or nil, err)
-- @tparam[opt] table opts `prefix` (default `"nomba-oauth:"`), `timeout`
--   (seconds each Redis call may take; default: the timeout of the client
--   that uses the store), `keepalive` (milliseconds an idle pooled
--   connection lives, default 10000), and for a connected client the
--   `password`, `username` and `db` to use when it connects again
-- @treturn table store
function M.redis(client, opts)
  opts = opts or {}
  if opts.timeout ~= nil and not (type(opts.timeout) == "number" and opts.timeout > 0 and opts.timeout <= 300) then
    error("nomba.oauth.store.redis: opts.timeout must be a number of seconds from 0 to 300", 2)
  end
  local store = setmetatable({ keepalive = opts.keepalive or DEFAULTS.redis_keepalive_ms,
                               prefix = opts.prefix or DEFAULTS.prefix, owners = {} }, Redis)
  if type(client) == "function" then
    store.connect = client
  elseif type(client) == "table" and client.get == nil and client.host ~= nil then
    local p = {}
    for k, v in pairs(client) do p[k] = v end
    if type(p.host) ~= "string" or p.host == "" then
      error("nomba.oauth.store.redis: bad argument #1 (host must be a non-empty string)", 2)
    end
    p.port = p.port or 6379
    if type(p.port) ~= "number" then error("nomba.oauth.store.redis: bad argument #1 (port must be a number)", 2) end
    for _, k in ipairs { "username", "password", "server_name" } do
      if p[k] ~= nil and type(p[k]) ~= "string" then
        error("nomba.oauth.store.redis: bad argument #1 (" .. k .. " must be a string)", 2)
      end
    end
    if p.username ~= nil and p.password == nil then
      error("nomba.oauth.store.redis: bad argument #1 (username needs a password)", 2)
    end
    p.pool = p.pool or ("nomba-oauth-redis:" .. p.host .. ":" .. p.port .. ":" .. tostring(p.db or 0) ..
                        ":" .. (p.username or "") .. (p.ssl and ":tls" or ""))
    local connect = connector(p, store)
    if in_openresty() then
      store.connect = connect                 -- a connection per operation, from nginx's pool
    else
      store.reconnect = connect               -- owned: made when first needed, made again after a failure
    end
  elseif type(client) == "table" then
    for _, m in ipairs { "get", "set", "del", "eval" } do
      if client[m] == nil then
        error("nomba.oauth.store.redis: the Redis client has no '" .. m .. "' method", 2)
      end
    end
    store.r = client
    -- a redis-lua client: its peer, to connect it again after a failure
    local sock = type(client.network) == "table" and client.network.socket
    local host, port
    if sock and type(sock.getpeername) == "function" then host, port = sock:getpeername() end
    if host then
      local p = { username = opts.username, password = opts.password, db = opts.db }
      store.reconnect = function()
        local new = require("socket").tcp()
        new:settimeout(store.timeout or DEFAULTS.redis_timeout)
        local ok, err = new:connect(host, tonumber(port))
        if not ok then
          new:close()
          return nil, "redis connect " .. host .. ":" .. port .. ": " .. tostring(err)
        end
        pcall(function() client.network.socket:close() end)
        client.network.socket = new
        local greeted, gerr = greet(client, p)
        if not greeted then return nil, gerr end
        return client
      end
    end
  else
    error("nomba.oauth.store.redis: bad argument #1 (connection parameters, a Redis client or a connect " ..
          "function expected)", 2)
  end
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
  if self.r then bound(self.r, seconds) end
end

-- Closes a connection that failed, now: left to the garbage collector, its
-- descriptor would stay open (half-closed after a Redis restart) until a
-- collection comes.
local function drop(conn)
  if type(conn) ~= "table" then return end
  local net = rawget(conn, "network")
  if type(net) == "table" and net.socket then                    -- redis-lua (LuaSocket)
    pcall(net.socket.close, net.socket)
  elseif type(conn.close) == "function" then                     -- lua-resty-redis
    pcall(conn.close, conn)
  end
end

-- Runs f(conn) on the store's connection, or on one from the connect
-- function; an owned or remembered connection that failed is connected
-- again (the failed one closed) and f run once more.
local function with_conn(self, f)
  if self.connect then
    local conn, err = self.connect()
    if not conn then return nil, "redis connect: " .. tostring(err) end
    bound(conn, self.timeout)
    local a, b = f(conn)
    if a ~= nil or b == nil then
      if type(conn.set_keepalive) == "function" then conn:set_keepalive(self.keepalive, 16) end
    elseif type(conn.close) == "function" then
      conn:close()
    end
    return a, b
  end
  if not self.r then                                   -- owned, not connected yet
    local conn, err = self.reconnect()
    if not conn then return nil, err end
    self.r = conn
    bound(conn, self.timeout)
  end
  local t0 = now()
  local ok, a, b = pcall(f, self.r)
  if ok and not (a == nil and b ~= nil and broken(b)) then return a, b end
  local err = ok and b or a
  if not self.reconnect or not broken(err) then
    if ok then return a, b end
    error(err, 0)
  end
  -- once more on a new connection, within what is left of the one bound
  -- (a Redis that accepts and never answers costs one timeout, not two)
  drop(self.r)
  self.r = nil
  local own = self.timeout
  local bound_s = own or DEFAULTS.redis_timeout
  local rest = bound_s - (now() - t0)
  if rest < RETRY_LEAST then return nil, "redis: " .. tostring(err) end
  self.timeout = rest
  local conn, rerr = self.reconnect()
  self.timeout = own
  if not conn then return nil, "redis (" .. tostring(err) .. "), then " .. tostring(rerr) end
  self.r = conn
  bound(conn, rest)
  local fine, x, y = pcall(f, conn)
  bound(conn, bound_s)
  if not fine then error(x, 0) end
  return x, y
end

function Redis:get(key)
  check_key(key)
  return with_conn(self, function(r)
    local v, err = r:get(self.prefix .. key)
    if v == nil and err then return nil, err end
    return redis_value(v) or false             -- false: a miss, not a failure
  end)
end

function Redis:set(key, value, ttl)
  check_key(key)
  return with_conn(self, function(r)
    local v, err
    if ttl and ttl > 0 then
      v, err = r:set(self.prefix .. key, value, "PX", math.max(1, math.floor(ttl * 1000)))
    else
      v, err = r:set(self.prefix .. key, value)
    end
    if not redis_ok(v) then return nil, err or ("SET answered " .. tostring(v)) end
    return true
  end)
end

function Redis:delete(key)
  check_key(key)
  return with_conn(self, function(r)
    local v, err = r:del(self.prefix .. key)
    if v == nil and err then return nil, err end
    return true
  end)
end

function Redis:add(key, value, ttl)
  check_key(key)
  return with_conn(self, function(r)
    local v, err = r:set(self.prefix .. key, value, "NX", "PX", math.max(1, math.floor(ttl * 1000)))
    if redis_ok(v) then return true end
    if v == nil and err then return nil, err end
    return false
  end)
end

function Redis:lock(key, ttl)
  check_key(key)
  local owner = owner_id()
  return with_conn(self, function(r)
    local v, err = r:set(self.prefix .. key, owner, "NX", "PX", math.max(1, math.floor(ttl * 1000)))
    if redis_ok(v) then
      self.owners[key] = owner
      return true, owner
    end
    if v == nil and err then return nil, err end
    -- held: by someone else (nil/ngx.null from SET NX), or by this very lock,
    -- set by a first try whose answer was lost (with_conn tries again)
    if redis_value(r:get(self.prefix .. key)) == owner then
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
  return with_conn(self, function(r)
    local v, err = r:eval(EXTEND, 1, self.prefix .. key, owner, math.max(1, math.floor(ttl * 1000)))
    if v == nil and err then return nil, err end
    return v == 1
  end)
end

function Redis:unlock(key, owner)
  check_key(key)
  owner = owner or self.owners[key]
  if self.owners[key] == owner then self.owners[key] = nil end
  if not owner then return true end
  return with_conn(self, function(r)
    local v, err = r:eval(UNLOCK, 1, self.prefix .. key, owner)    -- compare and delete
    if v == nil and err then return nil, err end
    return true
  end)
end

return M.redis
