--- The Redis store: every process on every host.
-- @submodule nomba.oauth.store
local common = require "nomba.oauth.store.common"
local DEFAULTS = require("nomba.oauth.options").DEFAULTS.store

local type, error, tostring, setmetatable = type, error, tostring, setmetatable
local owner_id, check_key = common.owner_id, common.check_key

local M = {}

local Redis = {}
Redis.__index = Redis

local UNLOCK = [[if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end return 0]]

local function redis_ok(v)
  return v == "OK" or v == true or (type(v) == "table" and v.ok == "OK")
end

local function redis_value(v)
  if type(v) == "string" then return v end
  return nil        -- nil, false, ngx.null, cjson.null: a miss
end

--- A store in Redis: every process on every host.
-- Works with any client object that has `get`, `set` (with `NX`/`PX`), `del`
-- and `eval`, e.g. redis-lua (`redis`, Debian `lua-redis`) for plain Lua.
-- Under OpenResty a cosocket connection cannot outlive its request, so give
-- a function that returns a connected lua-resty-redis object (Debian
-- `lua-nginx-redis`'s `nginx.redis`); the store connects per operation and
-- hands the connection back to the pool with `set_keepalive`.
-- @param client a connected Redis client, or a function returning one (or nil, err)
-- @tparam[opt] table opts `prefix` (default `"nomba-oauth:"`), `timeout`
--   (seconds each Redis call may take; default: the timeout of the client
--   that uses the store),
--   `keepalive` (milliseconds an idle pooled connection lives, default 10000)
-- @treturn table store
function M.redis(client, opts)
  opts = opts or {}
  local connect
  if type(client) == "function" then
    connect = client
  elseif type(client) == "table" then
    for _, m in ipairs { "get", "set", "del", "eval" } do
      if client[m] == nil then
        error("nomba.oauth.store.redis: the Redis client has no '" .. m .. "' method", 2)
      end
    end
  else
    error("nomba.oauth.store.redis: bad argument #1 (Redis client or connect function expected)", 2)
  end
  if opts.timeout ~= nil and not (type(opts.timeout) == "number" and opts.timeout > 0 and opts.timeout <= 300) then
    error("nomba.oauth.store.redis: opts.timeout must be a number of seconds from 0 to 300", 2)
  end
  local store = setmetatable({ r = client, connect = connect, keepalive = opts.keepalive or DEFAULTS.redis_keepalive_ms,
                               prefix = opts.prefix or DEFAULTS.prefix, owners = {} }, Redis)
  if opts.timeout then store:set_timeout(opts.timeout) end
  return store
end

-- Bounds each Redis call of a connection by the store's timeout, where the
-- client library allows it.
local function bound(conn, seconds)
  if not seconds then return end
  if type(conn.set_timeout) == "function" then                   -- lua-resty-redis
    conn:set_timeout(seconds * 1000)
  elseif type(conn.network) == "table" and conn.network.socket then   -- redis-lua (LuaSocket)
    conn.network.socket:settimeout(seconds)
  end
end

--- Bounds every Redis call (seconds). A client that uses this store calls it
-- with its own `timeout` unless `opts.timeout` was given. A client object is
-- bounded at once; with a connect function each connection is bounded after
-- it connects (the connect itself is bounded by what the function sets).
-- @tparam number seconds
function Redis:set_timeout(seconds)
  self.timeout = seconds
  if not self.connect then bound(self.r, seconds) end
end

-- Runs f(conn) on the client or on a connection from the connect function.
local function with_conn(self, f)
  if not self.connect then return f(self.r) end
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
      return true
    end
    if v == nil and err then return nil, err end
    return false                     -- held by someone else (nil/ngx.null from SET NX)
  end)
end

function Redis:unlock(key)
  check_key(key)
  local owner = self.owners[key]
  self.owners[key] = nil
  if not owner then return true end
  return with_conn(self, function(r)
    local v, err = r:eval(UNLOCK, 1, self.prefix .. key, owner)    -- compare and delete
    if v == nil and err then return nil, err end
    return true
  end)
end

return M.redis
