--- Shared token stores: one token for every worker, process and host.
--
-- A store is any object with `get(key)`, `set(key, value, ttl)`,
-- `delete(key)`, `lock(key, ttl) -> ok` and `unlock(key)`; ttl is in seconds
-- (fractions allowed). A store may also have `extend(key, ttl) -> ok`,
-- which keeps a lock it holds for ttl more seconds (false: it lapsed):
-- every built-in store has it, and a renewal then holds a short lease that
-- it keeps alive while it works; without it the lock is taken for the
-- renewal's whole deadline. A method reports trouble by returning `nil, err` or by
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
local common = require "nomba.oauth.store.common"
local PREFIX = require("nomba.oauth.options").DEFAULTS.store.prefix

local type, error, setmetatable = type, error, setmetatable
local now = core.now
local owner_id, check_key = common.owner_id, common.check_key

local M = {}

-- memory -------------------------------------------------------------------------

local Memory = {}
Memory.__index = Memory

--- A store in this Lua state's memory: for several clients of one process.
-- @treturn table store
function M.memory()
  return setmetatable({ data = {}, expiry = {}, owners = {} }, Memory)
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
  local owner = owner_id()
  self.owners[key] = owner
  return self:set(key, owner, ttl)
end

function Memory:extend(key, ttl)
  local owner = self.owners[key]
  if not owner or self:get(key) ~= owner then return false end
  return self:set(key, owner, ttl)
end

function Memory:unlock(key)
  local owner = self.owners[key]
  self.owners[key] = nil
  if owner and self:get(key) == owner then self:delete(key) end
  return true
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
  return setmetatable({ dict = dict, prefix = opts.prefix or PREFIX, owners = {} }, Shdict)
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

function Shdict:extend(key, ttl)
  check_key(key)
  local owner = self.owners[key]
  -- no yield between get and set: atomic within this worker
  if not owner or self.dict:get(self.prefix .. key) ~= owner then return false end
  local ok, err = self.dict:set(self.prefix .. key, owner, ttl)
  if not ok then return nil, err end
  return true
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

M.redis = require "nomba.oauth.store.redis"
M.file = require "nomba.oauth.store.file"

return M
