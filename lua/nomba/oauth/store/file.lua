--- The file store: every process of one host.
-- @submodule nomba.oauth.store
local core = require "nomba.oauth.core"
local common = require "nomba.oauth.store.common"
local DEFAULTS = require("nomba.oauth.options").DEFAULTS.store

local type, error, setmetatable = type, error, setmetatable
local check_key = common.check_key

local M = {}

local File = {}
File.__index = File

local FILE_MAX = DEFAULTS.file_max

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
  local lk, err = core.fs_lockwait(self.dir, "add", self.timeout or DEFAULTS.file_add_wait)   -- one read, one write
  if not lk then return nil, err end
  local first = self:get(key) == nil
  local ok, werr = true, nil
  if first then ok, werr = self:set(key, value, ttl) end
  core.fs_unlock(lk)
  if not ok then return nil, werr end
  return first
end

return M.file
