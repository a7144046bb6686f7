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
local keys = require "nomba.oauth.store.keys"
local DEFAULTS = require("nomba.oauth.options").DEFAULTS
local PREFIX = DEFAULTS.store.prefix

local type, error, setmetatable = type, error, setmetatable
local now = core.now
local owner_id, check_key = keys.owner_id, keys.check_key

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

--- A lock for `ttl` seconds: true and its owner (a unique id the holder
-- gives `extend` and `unlock`, so that one store shared by several holders
-- never extends or releases another's), or false. Every built-in store's
-- lock answers so.
function Memory:lock(key, ttl)
  if self:get(key) ~= nil then return false end
  local owner = owner_id()
  self.owners[key] = owner
  self:set(key, owner, ttl)
  return true, owner
end

--- Keeps the lock `owner` holds (default: this store's last) for `ttl`
-- more seconds: true, or false when it is not held by that owner any more.
function Memory:extend(key, ttl, owner)
  owner = owner or self.owners[key]
  if not owner or self:get(key) ~= owner then return false end
  return self:set(key, owner, ttl)
end

--- Releases the lock `owner` holds (default: this store's last), never another's.
function Memory:unlock(key, owner)
  owner = owner or self.owners[key]
  if self.owners[key] == owner then self.owners[key] = nil end
  if owner and self:get(key) == owner then self:delete(key) end
  return true
end

-- OpenResty shared dict ---------------------------------------------------------

local Shdict = {}
Shdict.__index = Shdict

-- nginx expires a shared dict's items on its cached wall clock, which a
-- step moves (NTP, a resumed VM): +90 s would end a webhook claim's lease
-- while its grant runs, -1 h would hold a dead worker's claim past every
-- redelivery. So a value carries its deadline on the monotonic clock
-- (core.now: CLOCK_MONOTONIC, one clock for every worker of the host),
-- "\1<deadline>\1<value>" (0: none), which judges it; nginx's own TTL is
-- the ttl and SLACK more, so a forward step of up to SLACK never drops an
-- item early. An item past its deadline that nginx still holds (its wall
-- clock stepped back) is taken over by one caller of add or lock only: an
-- atomic incr on a key named for that item decides which. Items stay in
-- nginx's dict up to SLACK past their deadline: size the dict for it.
local SLACK = DEFAULTS.store.shdict_step_slack
local TAKEOVER = "\1takeover\1"

local function wrap(value, ttl)
  if not ttl or ttl <= 0 then return "\1" .. "0\1" .. value, 0 end
  return ("\1%.3f\1"):format(now() + ttl) .. value, ttl + SLACK
end

-- The value of an item, and its deadline's text; nil (and the text) once
-- it is past its deadline. An item without one (written by an earlier
-- version, before a reload) is taken as it is.
local function unwrap(raw)
  if type(raw) ~= "string" then return raw end
  local d, at = raw:match("^\1(%d+%.?%d*)\1()")
  if not d then return raw end
  local deadline = tonumber(d)
  if deadline > 0 and deadline <= now() then return nil, d end
  return raw:sub(at), d
end

--- A store in an OpenResty shared dict (`lua_shared_dict`): every worker of a node.
-- The lock is `add` with a TTL, released only by its owner. TTLs run on
-- the monotonic clock: a step of nginx's wall clock (up to an hour ahead,
-- any amount back) neither ends a lease early nor stretches it.
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
  local raw, err = self.dict:get(self.prefix .. key)
  if raw == nil and err then return nil, err end
  return (unwrap(raw))
end

function Shdict:set(key, value, ttl)
  check_key(key)
  local w, nttl = wrap(value, ttl)
  local ok, err = self.dict:set(self.prefix .. key, w, nttl)
  if not ok then return nil, err end
  return true
end

function Shdict:delete(key)
  check_key(key)
  self.dict:delete(self.prefix .. key)
  return true
end

-- Sets the item when it is absent or past its deadline: true, false (it is
-- there), or nil, err.
local function claim(self, key, value, ttl)
  local k = self.prefix .. key
  local w, nttl = wrap(value, ttl)
  for _ = 1, 2 do
    local ok, err = self.dict:add(k, w, nttl)
    if ok then return true end
    if err ~= "exists" then return nil, err end
    local raw = self.dict:get(k)
    if raw ~= nil then                      -- (else nginx dropped it meanwhile: add again)
      local v, d = unwrap(raw)
      if v ~= nil then return false end
      -- past its deadline, still held by nginx: the first incr for this item takes it over
      local n = self.dict:incr(k .. TAKEOVER .. d, 1, 0, nttl > 0 and nttl or SLACK)
      -- (and still that item: nginx may have dropped it and another caller added one)
      if n ~= 1 or self.dict:get(k) ~= raw then return false end
      ok, err = self.dict:set(k, w, nttl)
      if not ok then return nil, err end
      return true
    end
  end
  return false
end

function Shdict:add(key, value, ttl)
  check_key(key)
  return claim(self, key, value, ttl)
end

function Shdict:lock(key, ttl)
  check_key(key)
  local owner = owner_id()
  local got, err = claim(self, key, owner, ttl)
  if not got then return got, err end
  self.owners[key] = owner
  return true, owner
end

function Shdict:extend(key, ttl, owner)
  check_key(key)
  owner = owner or self.owners[key]
  -- no yield between get and set: atomic within this worker
  if not owner or unwrap(self.dict:get(self.prefix .. key)) ~= owner then return false end
  return self:set(key, owner, ttl)
end

function Shdict:unlock(key, owner)
  check_key(key)
  owner = owner or self.owners[key]
  if self.owners[key] == owner then self.owners[key] = nil end
  -- no yield between get and delete: atomic within this worker
  if owner and unwrap(self.dict:get(self.prefix .. key)) == owner then
    self.dict:delete(self.prefix .. key)
  end
  return true
end

M.redis = require "nomba.oauth.store.redis"
M.file = require "nomba.oauth.store.file"

return M
