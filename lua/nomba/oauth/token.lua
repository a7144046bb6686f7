--- The token policy: when the kept token is fresh (decided in C: the
-- refresh window is `refresh_skew`, never more than half the lifetime),
-- how a renewal is made (refresh, and after a refused refresh, issue), one
-- renewal at a time in a Lua state (single-flight), one renewal per window
-- for everyone sharing a store (its lock), and a failed renewal that never
-- throws away a still-valid token. The same policy for the blocking path
-- and the non-blocking one (`step`). (Private to nomba.oauth.)
local core = require "nomba.oauth.core"
local runtime = require "nomba.oauth.runtime"
local engine = require "nomba.oauth.engine"
local shared = require "nomba.oauth.shared"

local type, error, tostring = type, error, tostring
local math_random, math_min = math.random, math.min
local co_yield = coroutine.yield
local fresh, now, new_error = core.fresh, runtime.now, core.error

local T = {}

-- At most one renewal attempt per second while a token is still valid.
local RENEW_INTERVAL = 1

local function closed_error()
  return new_error("closed", "token", "the client is closed")
end

local function pending_error(msg)
  return new_error("pending", "token", msg or "no valid token yet; a renewal is in flight")
end

-- How long a renewal may hold the store's lock.
local function lock_ttl(st)
  return st.timeout * (st.retries + 1) + 1
end

--- The first job of a renewal: refresh when there is a refresh token, else
-- issue; nil and a config error for a PKCE client with nothing to renew.
function T.renewal(self, st, lock)
  local op = core.has(self, "refresh") and "refresh" or core.has(self, "secret") and "issue"
  if not op then
    return nil, new_error("config", "token",
      "this PKCE client has no valid token and cannot issue one: use authorize and exchange")
  end
  return engine.job(self, st, op, op == "refresh" and {} or nil, { renewal = true, lock = lock })
end

local function renew(self, st, lock)
  local job, err = T.renewal(self, st, lock)
  if not job then return nil, err end
  return engine.run(self, st, job)
end

-- Blocking ---------------------------------------------------------------------

-- Waits while another coroutine of this Lua state renews.
local function wait_for_renewal(st)
  local deadline = now() + st.timeout * (st.retries + 1) + engine.RETRY_AFTER_CAP
  while st.renewing and now() < deadline do
    if runtime.ngx then
      runtime.sleep(0.005)
    elseif runtime.can_yield() then
      co_yield()
    else
      break                               -- nobody else can be renewing
    end
  end
end

-- Renews this client's token, one renewal at a time in the Lua state.
local function local_token(self, st, lock)
  if core.closed(self) then return nil, closed_error() end   -- closed meanwhile
  if st.renewing then
    wait_for_renewal(st)
    local tok = fresh(self, 0)
    if tok then return tok end
    if st.last_err then return nil, st.last_err end
  end
  if core.remaining(self) > 0 and st.last_try and now() - st.last_try < RENEW_INTERVAL then
    return (fresh(self, 0))               -- renewed a moment ago: no stampede
  end
  st.renewing, st.last_try, st.last_err = true, now(), nil
  local ok, tok, err = runtime.pcall_y(renew, self, st, lock)
  st.renewing = false
  if not ok then error(tok, 0) end
  if tok then return tok.access_token end
  local kept = fresh(self, 0)             -- a failed renewal never drops a valid token
  if kept then return kept end
  return nil, err
end

-- One look at the store, the same for both paths: "fresh" (the kept or
-- shared token will do), a lock `{ad =, before =}` to renew under, "busy"
-- (another holder renews), or nil (the store failed: go alone). The store
-- is read again once the lock is held: someone may have just published.
local function claim(self, st)
  if not shared.read(self, st) or fresh(self) then
    return fresh(self) and "fresh" or nil
  end
  local got = shared.lock(st, lock_ttl(st))
  if got == nil then return nil end
  if not got then return "busy" end
  local lock = { ad = shared.read(self, st) }
  if fresh(self) then
    shared.release(self, st, lock, false)
    return "fresh"
  end
  lock.before = core.remaining(self)
  return lock
end

-- How long a client waits for another holder before it renews alone.
local function busy_limit(st)
  return lock_ttl(st) + st.timeout
end

-- The token shared through a store: read it; if it needs renewing, take
-- the lock and renew, or, while another holder renews, use the kept token
-- if it is still valid, else wait for the holder (at most busy_limit).
local function shared_token(self, st)
  local deadline = now() + busy_limit(st)
  local pause = 0.005
  while true do
    local c = claim(self, st)
    if c == "fresh" then return (fresh(self)) end
    if c == nil then return local_token(self, st) end                 -- store down: alone
    if c ~= "busy" then
      local ok, t, err = runtime.pcall_y(local_token, self, st, c)
      shared.release(self, st, c, false)      -- released on every path, a raise included
      if not ok then error(t, 0) end
      return t, err
    end
    local kept = fresh(self, 0)           -- another worker or host renews
    if kept then return kept end
    if now() >= deadline then return local_token(self, st) end
    local may, phase = runtime.cosockets()
    if not may then
      return nil, new_error("config", "token", "no valid token yet, and the " .. tostring(phase) ..
        " phase cannot wait for the renewal in progress")
    end
    runtime.sleep(pause * (0.5 + math_random()))
    pause = math_min(pause * 2, 0.2)
  end
end

-- Non-blocking -----------------------------------------------------------------

--- Starts a renewal on the multi driver when one is due and none was tried
-- within the last second. With a store: the shared token is read first,
-- and the lock is tried without waiting; while another holder renews,
-- `wake_at` says when to look again, and after busy_limit the client
-- renews alone, as the blocking path does.
function T.due(self, st)
  if fresh(self) then
    st.wake_at, st.busy_since = nil, nil
    return
  end
  local t = now()
  if st.wake_at and t < st.wake_at then return end
  st.wake_at = nil
  if core.closed(self) then return end
  -- within a second of the last try, only a client whose token is still
  -- valid, or whose last renewal failed, waits (no stampede, no hammering a
  -- failing server); an invalidated token renews at once, as it does blocking
  if st.last_try and t - st.last_try < RENEW_INTERVAL and (core.remaining(self) > 0 or st.last_err) then
    return
  end
  local lock
  if st.store then
    local c = claim(self, st)
    if c == "fresh" then return end
    if c == "busy" then
      st.busy_since = st.busy_since or t
      if t - st.busy_since < busy_limit(st) then
        st.pause = math_min((st.pause or 0.0025) * 2, 0.2)
        st.wake_at = t + st.pause * (0.5 + math_random())
        return
      end
    elseif c ~= nil then
      lock = c
    end
  end
  st.pause, st.busy_since = nil, nil
  st.last_try = t
  local job, err = T.renewal(self, st, lock)
  if not job then
    st.last_err = err
    if lock then shared.release(self, st, lock, false) end
    return
  end
  engine.begin(self, st, job)
end

-- After a renewal that another job waits for (st.after_renewal, set by an
-- API call's 401): once nothing is in flight, hands it the fresh token, or
-- the renewal's error when none came.
local function resume(self, st)
  local k = st.after_renewal
  if not k or st.nb then return end
  local tok = fresh(self, 0)
  if tok then return k(tok) end
  if core.closed(self) then return k(nil, closed_error()) end
  if not st.wake_at and st.last_try then return k(nil, st.last_err) end
end

--- One non-blocking step: advances the job in flight, or starts a due
-- renewal; true while work is in flight or scheduled.
function T.step(self, st)
  if core.closed(self) then
    st.nb = nil
    resume(self, st)
    return false
  end
  if st.nb then
    local busy = engine.step(self, st)
    resume(self, st)
    return busy or st.nb ~= nil or st.after_renewal ~= nil
  end
  T.due(self, st)
  resume(self, st)
  return st.nb ~= nil or st.wake_at ~= nil or st.after_renewal ~= nil
end

-- token() in the non-blocking mode: the kept token while it is valid, even
-- during a renewal; otherwise a renewal is started and, with wait = false,
-- a "pending" error returned; else the caller yields (inside a coroutine)
-- or waits (curl_multi_poll) until the renewal ends.
local function nb_token(self, st, opts)
  local nowait = type(opts) == "table" and opts.wait == false
  while true do
    T.step(self, st)
    local kept = fresh(self, 0)
    if kept then return kept end
    if not st.nb and not st.wake_at then
      if nowait and not st.last_err then return nil, pending_error("no valid token yet") end
      return nil, st.last_err or pending_error("no valid token yet")
    end
    if nowait then return nil, pending_error() end
    if runtime.can_yield() and not runtime.ngx then
      co_yield()
    else
      engine.wait(self, st, 0.05)
    end
  end
end

--- token()'s slow path: the kept token is not fresh (or the caller asked
-- not to wait).
function T.slow(self, st, opts)
  if core.closed(self) then return nil, closed_error() end
  if st.nonblocking or st.nb or (type(opts) == "table" and opts.wait == false) then
    return nb_token(self, st, opts)
  end
  if st.store then return shared_token(self, st) end
  return local_token(self, st)
end

return T
