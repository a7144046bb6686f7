--- Shared token stores: one token for every worker, process and host.
--
-- A store is any object with `get(key)`, `set(key, value, ttl)`,
-- `delete(key)`, `lock(key, ttl) -> ok` and `unlock(key)`; ttl is in seconds
-- (fractions allowed). A method reports trouble by returning `nil, err` or by
-- raising; the client then goes on alone (an event `store_error` says so).
-- Values are sealed by the client (AES-256-GCM) before they reach a store.
--
--    oauth.store.memory()                 -- the clients of one Lua state
--    oauth.store.shdict(ngx.shared.DICT)  -- every worker of an OpenResty node
--    oauth.store.redis(redis_client)      -- every process of every host
--    oauth.store.file(dir)                -- every process of one host
--
-- @module nomba.oauth.store

local core = require "nomba.oauth.core"

local type, error, tostring, setmetatable = type, error, tostring, setmetatable
local now, verifier = core.now, core.pkce.verifier

local M = {}

-- A unique owner id for a lock (CSPRNG, never a secret).
local function owner_id() return verifier(43) end

local function check_key(key)
  if type(key) ~= "string" or key == "" then error("nomba.oauth.store: key must be a non-empty string", 3) end
end

-- memory -------------------------------------------------------------------------

local Memory = {}
Memory.__index = Memory

--- A store in this Lua state's memory: for several clients of one process.
-- @treturn table store
function M.memory()
  return setmetatable({ data = {}, expiry = {} }, Memory)
end

function Memory:get(key)
  check_key(key)
  local e = self.expiry[key]
  if e and e <= now() then
    self.data[key], self.expiry[key] = nil, nil
  end
  return self.data[key]
end

function Memory:set(key, value, ttl)
  check_key(key)
  self.data[key] = value
  self.expiry[key] = ttl and ttl > 0 and now() + ttl or nil
  return true
end

function Memory:delete(key)
  check_key(key)
  self.data[key], self.expiry[key] = nil, nil
  return true
end

--- Sets key only when it is absent: true when it was set, false when it
-- was there (webhook deduplication). Every built-in store has it.
function Memory:add(key, value, ttl)
  if self:get(key) ~= nil then return false end
  return self:set(key, value, ttl)
end

function Memory:lock(key, ttl)
  if self:get(key) ~= nil then return false end
  return self:set(key, owner_id(), ttl)
end

function Memory:unlock(key)
  return self:delete(key)
end

-- OpenResty shared dict ---------------------------------------------------------

local Shdict = {}
Shdict.__index = Shdict

--- A store in an OpenResty shared dict (`lua_shared_dict`): every worker of a node.
-- The lock is `add` with a TTL, released only by its owner.
-- @param dict `ngx.shared.DICT`
-- @tparam[opt] table opts `prefix` (default `"nomba-oauth:"`)
-- @treturn table store
function M.shdict(dict, opts)
  if type(dict) ~= "table" and type(dict) ~= "userdata" then
    error("nomba.oauth.store.shdict: bad argument #1 (ngx.shared.DICT expected)", 2)
  end
  opts = opts or {}
  return setmetatable({ dict = dict, prefix = opts.prefix or "nomba-oauth:", owners = {} }, Shdict)
end

function Shdict:get(key)
  check_key(key)
  local v, err = self.dict:get(self.prefix .. key)
  if v == nil and err then return nil, err end
  return v
end

function Shdict:set(key, value, ttl)
  check_key(key)
  local ok, err = self.dict:set(self.prefix .. key, value, ttl or 0)
  if not ok then return nil, err end
  return true
end

function Shdict:delete(key)
  check_key(key)
  self.dict:delete(self.prefix .. key)
  return true
end

function Shdict:add(key, value, ttl)
  check_key(key)
  local ok, err = self.dict:add(self.prefix .. key, value, ttl or 0)
  if ok then return true end
  if err == "exists" then return false end
  return nil, err
end

function Shdict:lock(key, ttl)
  check_key(key)
  local owner = owner_id()
  local ok, err = self.dict:add(self.prefix .. key, owner, ttl)
  if ok then
    self.owners[key] = owner
    return true
  end
  if err == "exists" then return false end
  return nil, err
end

function Shdict:unlock(key)
  check_key(key)
  local owner = self.owners[key]
  self.owners[key] = nil
  -- no yield between get and delete: atomic within this worker
  if owner and self.dict:get(self.prefix .. key) == owner then
    self.dict:delete(self.prefix .. key)
  end
  return true
end

-- Redis ------------------------------------------------------------------------------

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
  local store = setmetatable({ r = client, connect = connect, keepalive = opts.keepalive or 10000,
                               prefix = opts.prefix or "nomba-oauth:", owners = {} }, Redis)
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

-- File system ---------------------------------------------------------------------------

local File = {}
File.__index = File

local FILE_MAX = 65536

-- A store key as a file name: the key's own characters when they are
-- plain, else its hex.
local function file_name(key)
  if key:match("^[%w_:%-][%w_:%.%-]*$") and #key <= 180 then return key end
  return "x" .. (key:gsub(".", function(ch) return ("%02x"):format(ch:byte()) end)):sub(1, 180)
end

--- A store in a directory: every process of one host (cron jobs, CLI runs,
-- restarts, the processes of one server). One file per key, written to a
-- temporary file, fsync'd and renamed into place (readers never see half a
-- value), mode 0600 in a directory made 0700; a directory that is a
-- symbolic link, owned by another user or writable by group or others is
-- refused. The lock is an `flock` on a lock file: the kernel releases it
-- when its holder dies, so a crashed holder never blocks the others (the
-- lock's ttl is not needed).
-- @tparam string dir the directory
-- @treturn table store (raises when the directory is unusable)
function M.file(dir)
  if type(dir) ~= "string" or dir == "" then
    error("nomba.oauth.store.file: bad argument #1 (directory path expected)", 2)
  end
  dir = dir:gsub("/+$", "")
  local ok, why = core.fs_dir(dir)
  if not ok then error("nomba.oauth.store.file: " .. dir .. ": " .. why, 2) end
  return setmetatable({ dir = dir, owners = {} }, File)
end

-- A value on disk: "<expiry>\n<value>", expiry in wall-clock seconds (0: none).
--- Bounds the wait for the lock `add` takes (seconds; default 5). A client
-- that uses this store calls it with its own `timeout`.
-- @tparam number seconds
function File:set_timeout(seconds)
  self.timeout = seconds
end

function File:get(key)
  check_key(key)
  local raw = core.fs_read(self.dir, file_name(key), FILE_MAX)
  if not raw then return nil end
  local expiry, value = raw:match("^(%d+%.?%d*)\n(.*)$")
  expiry = tonumber(expiry)
  if not expiry then return nil end                  -- torn or foreign: a miss
  if expiry > 0 and expiry <= core.time() then return nil end
  return value
end

function File:set(key, value, ttl)
  check_key(key)
  local expiry = ttl and ttl > 0 and ("%.3f"):format(core.time() + ttl) or "0"
  return core.fs_write(self.dir, file_name(key), expiry .. "\n" .. value)
end

function File:delete(key)
  check_key(key)
  return core.fs_remove(self.dir, file_name(key))
end

function File:lock(key)
  check_key(key)
  if self.owners[key] then return false end          -- held by this store already
  local lk, err = core.fs_trylock(self.dir, file_name(key))
  if lk == nil then return nil, err end
  if not lk then return false end
  self.owners[key] = lk
  return true
end

function File:unlock(key)
  check_key(key)
  local lk = self.owners[key]
  self.owners[key] = nil
  if lk then core.fs_unlock(lk) end
  return true
end

function File:add(key, value, ttl)
  check_key(key)
  local lk, err = core.fs_lockwait(self.dir, "add", self.timeout or 5)   -- held for one read and one write
  if not lk then return nil, err end
  local first = self:get(key) == nil
  local ok, werr = true, nil
  if first then ok, werr = self:set(key, value, ttl) end
  core.fs_unlock(lk)
  if not ok then return nil, werr end
  return first
end

return M
