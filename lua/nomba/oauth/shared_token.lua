--- One token shared through a store: reading it, publishing it sealed,
-- the lock, and the generation a revoke renews. A store is treated as
-- hostile: whatever it does becomes a `store_error` event and never reaches
-- the caller. (Private to nomba.oauth.)
local core = require "nomba.oauth.core"
local MESSAGE = core.LIMITS.message             -- the cap on a message (errors and events alike)
local platform = require "nomba.oauth.platform"
local events = require "nomba.oauth.events"

local type, pcall, tostring, select, rawget = type, pcall, tostring, select, rawget
local pcall_y = platform.pcall_y

local S = {}

-- What each store method may answer: anything else is a store error.
local ANSWERS = {
  get = function(v) return v == nil or v == false or type(v) == "string" end,
  lock = function(v) return type(v) == "boolean" end,
}

-- tostring() of anything, even a value whose __tostring raises or returns
-- a non-string.
local function safe_text(v)
  local ok, s = pcall(tostring, v)
  if ok and type(s) == "string" then return s end
  return "(an error value that cannot be printed)"
end

-- How many times the store found that its data was lost (a Redis store's
-- `data_lost`; 0 for a store that cannot tell).
local function losses(store)
  local n = type(store) == "table" and rawget(store, "data_lost")
  return type(n) == "number" and n or 0
end

-- A loss the store found since this client last looked: an event, a count.
local function noticed(st)
  local n = losses(st.store)
  if n <= st.data_lost then return end
  local new = n - st.data_lost
  st.data_lost = n
  local metrics = require "nomba.oauth.metrics"
  for _ = 1, new do metrics.count(st, "store_data_lost") end
  events.emit(st, { op = "store", ok = false, kind = "store_data_lost", count = new,
                    message = "the store found its data lost (a Redis restart without persistence, a FLUSHALL, " ..
                              "a failover to a replica without it): webhook claims and the shared token may be gone" })
end

--- Calls a store method. Any misbehaviour (nil, err; a raise; an answer of
-- the wrong type; an error value that raises when printed) becomes a
-- store_error event and the second result `true`.
function S.call(st, method, ...)
  local store = st.store
  local ok, v, err = pcall_y(function(...) return store[method](store, ...) end, ...)
  if losses(store) ~= st.data_lost then noticed(st) end
  local why
  if not ok then
    why = safe_text(v)
  elseif v == nil and err ~= nil then
    why = safe_text(err)
  elseif ANSWERS[method] and not ANSWERS[method](v) then
    why = method .. " answered a " .. type(v)
  else
    return v or nil, false, err          -- (a second answer: the owner of a lock)
  end
  events.emit(st, { op = "store", ok = false, kind = "store_error", method = method,
                    message = #why > MESSAGE and why:sub(1, MESSAGE) .. "..." or why })
  return nil, true
end

--- The keys of a client's shared token, its lock and its generation.
function S.keys(self, st)
  st.data_lost = losses(st.store)   -- losses found before this client existed are not its to report
  st.skey = core.store_id(self)
  st.lkey = st.skey .. ":lock"
  st.gkey = st.skey .. ":gen"       -- the generation a revoke renews
end

-- The associated data a sealed value is bound to: the store key and the
-- generation, so a revoked token written back never opens.
local function aad(st, gen)
  if gen == nil then return st.skey end
  return st.skey .. "#" .. gen
end

--- Reads the shared token and adopts it when it opens and is newer.
-- Returns the associated data (for publishing), or nil when the store
-- failed; true when a token was adopted; and the value read (false: none).
-- `since`: a value read before (false: none): a value published since then
-- is adopted when valid, whatever its expiry, which Nomba gives to the
-- second (a refresh in the second of the issue before it has the same
-- expiry, and only the store knows which is the session's). The value read
-- is remembered (`st.seen`: what this client last saw there).
function S.read(self, st, since)
  local gen, failed = S.call(st, "get", st.gkey)
  if failed then return nil end
  local ad = aad(st, gen)
  local blob
  blob, failed = S.call(st, "get", st.skey)
  if failed then return nil end
  blob = blob or false
  st.seen = blob
  if blob and core.adopt(self, ad, blob, since ~= nil and blob ~= since) then
    events.adopted(st, core.kept(self))
    return ad, true, blob
  end
  return ad, false, blob
end

--- Reads the shared token, adopting what another member published since
-- this client last looked (see S.read).
function S.refresh_view(self, st)
  return S.read(self, st, st.seen)
end

local function publish(self, st, ad)
  local left = core.remaining(self)
  local sealed = left > 0 and core.seal(self, ad)
  if sealed and not select(2, S.call(st, "set", st.skey, sealed, left)) then st.seen = sealed end
end

--- The end of a renewal under the lock `{owner =, ad =, blob =, before =,
-- lapsed =}`: when the
-- kept token is newer than it was before (the renewal's; or a rotation the
-- C core kept before an error raised on the way back, which must not be
-- lost: Nomba retired the refresh token the store holds), the store is read
-- again (the fence: a holder whose lease lapsed, or whose renewal raced
-- another member's, finds the newer token there, adopts it and publishes
-- nothing: a token outlives another only when Nomba issued it later), and
-- the kept token is published, sealed; then the lock is released. Only the
-- first call for a lock does anything.
function S.release(self, st, lock)
  if lock.released then return end
  lock.released = true
  if lock.ad and lock.before and core.remaining(self) > lock.before then
    local ad, adopted = S.read(self, st, lock.lapsed and lock.blob or nil)
    if not adopted then publish(self, st, ad or lock.ad) end
  end
  S.call(st, "unlock", st.lkey, lock.owner)
end

--- After an explicit issue, refresh or exchange: the new token is the
-- session now (Nomba ended the one before), so it replaces the shared one.
function S.publish(self, st)
  local gen, failed = S.call(st, "get", st.gkey)
  if not failed then publish(self, st, aad(st, gen)) end
end

--- Tries the renewal lock once, for `ttl` seconds: true and the lock's
-- owner (when the store names one: the built-in stores do), false
-- (another holder), or nil when the store failed.
function S.lock(st, ttl)
  local got, failed, owner = S.call(st, "lock", st.lkey, ttl)
  if failed then return nil end
  if got ~= true then return false end
  return true, owner
end

--- Keeps the renewal lock of `owner` for `ttl` more seconds: true, false
-- when its lease lapsed (another member may hold it now), or nil when the
-- store failed or cannot (it has no `extend`).
function S.extend(st, ttl, owner)
  if st.store.extend == nil then return nil end
  local kept, failed = S.call(st, "extend", st.lkey, ttl, owner)
  if failed then return nil end
  return kept == true
end

--- After the shared token was revoked: a new generation first, so that a
-- copy of its sealed value never opens again, then the value goes.
function S.revoked(st)
  S.call(st, "set", st.gkey, core.pkce.verifier(43))
  S.call(st, "delete", st.skey)
end

return S
