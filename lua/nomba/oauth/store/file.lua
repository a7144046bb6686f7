--- The file store: every process of one host.
-- @submodule nomba.oauth.store
local core = require "nomba.oauth.core"
local keys = require "nomba.oauth.store.keys"
local DEFAULTS = require("nomba.oauth.options").DEFAULTS.store

local type, error, setmetatable = type, error, setmetatable
local check_key = keys.check_key

local M = {}

local File = {}
File.__index = File

local FILE_MAX = DEFAULTS.file_max

-- The files of a key: "v-NAME" its value, "l-NAME" its lock, where NAME is
-- the key when plain, else its SHA-256 (core.fs_name): never another key's.
local fs_name = core.fs_name
local function value_file(key) return "v-" .. fs_name(key) end
local function lock_file(key) return "l-" .. fs_name(key) end
local ADD_LOCK = "lock-add"
local SWEEP_EVERY = DEFAULTS.file_sweep_every    -- seconds between two looks for a crash's leftovers

--- A store in a directory: every process of one host (cron jobs, CLI runs,
-- restarts, the processes of one server). One file per key, written to a
-- temporary file, fsync'd and renamed into place (readers never see half a
-- value), mode 0600 in a directory made 0700; a directory that is a
-- symbolic link, owned by another user or writable by group or others is
-- refused. The store holds the directory open and works inside what it
-- opened; an operation after its path was made to name something else (a
-- link to another directory, say) fails with `nil, err` and writes nothing
-- there. A store file that is not a regular file (a FIFO, say) is a miss to
-- read and an error to lock, never a hang. A ttl runs on the boot clock
-- (`CLOCK_BOOTTIME`), which a step of the wall clock (NTP, a resumed VM)
-- does not move, so an `add`'s lease is neither cut short nor stretched by
-- one; a value written before a reboot is judged on its wall-clock expiry
-- (a CLI session outlives a reboot). The lock is an `flock` on a lock
-- file: the kernel releases it when its holder dies, so a crashed holder
-- never blocks the others (the lock's ttl is not needed). A process killed between write and rename
-- leaves its temporary file (a sealed copy): opening the store, and then a
-- write at most once a minute, removes those of dead processes.
-- @tparam string dir the directory
-- @treturn table store (raises when the directory is unusable)
function M.file(dir)
  if type(dir) ~= "string" or dir == "" then
    error("nomba.oauth.store.file: bad argument #1 (directory path expected)", 2)
  end
  dir = dir:gsub("/+$", "")
  local handle, why = core.fs_dir(dir)
  if not handle then error("nomba.oauth.store.file: " .. dir .. ": " .. why, 2) end
  core.fs_sweep(handle)                     -- what a crash between write and rename left
  -- dir: the directory held open (core.fs_dir), path: as given
  return setmetatable({ dir = handle, path = dir, owners = {}, swept = core.now() }, File)
end

-- A value on disk: "b <clock> <boot expiry> <wall expiry>\n<key length>\n<key>\n<value>".
-- The expiry is kept on two clocks (0 on both: none): on the boot clock,
-- named by <clock> (core.fs_clock: the boot id; "-" when unknown), which
-- judges it for a reader of the same boot whatever the wall clock did,
-- and on the wall clock, which judges it for a reader of another boot.
-- The earlier layout (0.2.0 and before), "<wall expiry>\n<key length>\n<key>\n<value>", is
-- judged on the wall clock. A file whose key is not the one asked for
-- (foreign or torn) is a miss.
local fs_clock = core.fs_clock

-- Whether a value written with these expiries is over now.
local function expired(clock, boot_expiry, wall_expiry)
  if wall_expiry == 0 then return false end
  local now_clock, now_boot, now_wall = fs_clock()
  if clock ~= nil and clock == now_clock then return boot_expiry <= now_boot end
  return wall_expiry <= now_wall
end

--- Bounds the wait for the lock `add` takes (seconds; default 5). A client
-- that uses this store calls it with its own `timeout`.
-- @tparam number seconds
function File:set_timeout(seconds)
  self.timeout = seconds
end

function File:get(key)
  check_key(key)
  local raw, err = core.fs_read(self.dir, value_file(key), FILE_MAX)
  if err then return nil, err end
  if not raw then return nil end                     -- absent, not a regular file, unreadable
  local clock, boot_expiry, wall_expiry, klen, at =
    raw:match("^b ([%w%-+]+) (%d+%.?%d*) (%d+%.?%d*)\n(%d+)\n()")
  if not clock then wall_expiry, klen, at = raw:match("^(%d+%.?%d*)\n(%d+)\n()") end   -- 0.2.0
  boot_expiry, wall_expiry, klen = tonumber(boot_expiry), tonumber(wall_expiry), tonumber(klen)
  if not wall_expiry or raw:sub(at, at + klen - 1) ~= key or raw:sub(at + klen, at + klen) ~= "\n" then
    return nil                                       -- torn, foreign or another key's: a miss
  end
  if expired(clock, boot_expiry, wall_expiry) then return nil end
  return raw:sub(at + klen + 1)
end

function File:set(key, value, ttl)
  check_key(key)
  if core.now() - self.swept > SWEEP_EVERY then
    self.swept = core.now()
    core.fs_sweep(self.dir)
  end
  local clock, boot, wall = fs_clock()
  local head
  if ttl and ttl > 0 then
    head = ("b %s %.3f %.3f\n"):format(clock or "-", boot + ttl, wall + ttl)
  else
    head = ("b %s 0 0\n"):format(clock or "-")
  end
  return core.fs_write(self.dir, value_file(key), head .. #key .. "\n" .. key .. "\n" .. value)
end

function File:delete(key)
  check_key(key)
  return core.fs_remove(self.dir, value_file(key))
end

function File:lock(key)
  check_key(key)
  if self.owners[key] then return false end          -- held by this store already
  local lk, err = core.fs_trylock(self.dir, lock_file(key))
  if lk == nil then return nil, err end
  if not lk then return false end
  self.owners[key] = lk
  return true, lk
end

--- A lock is the kernel's (flock): held until unlocked or its holder dies.
function File:extend(key, _, owner)
  check_key(key)
  local lk = self.owners[key]
  return lk ~= nil and (owner == nil or owner == lk)
end

function File:unlock(key, owner)
  check_key(key)
  local lk = self.owners[key]
  if owner ~= nil and owner ~= lk then return true end   -- another holder's
  self.owners[key] = nil
  if lk then core.fs_unlock(lk) end
  return true
end

function File:add(key, value, ttl)
  check_key(key)
  local lk, err = core.fs_lockwait(self.dir, ADD_LOCK, self.timeout or DEFAULTS.file_add_wait)  -- a read, a write
  if not lk then return nil, err end
  local cur, werr = self:get(key)
  local first, ok = cur == nil, werr == nil
  if first and ok then ok, werr = self:set(key, value, ttl) end
  core.fs_unlock(lk)
  if not ok then return nil, werr end
  return first
end

return M.file
