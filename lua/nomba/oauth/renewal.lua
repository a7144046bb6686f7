--- The renewal: a job of the machine that gets the client a new token, the
-- same for the blocking path and the non-blocking one.
--   * The kept token is used while it is fresh (decided in C: the refresh
--     window is `refresh_skew`, never more than half the lifetime).
--   * A renewal refreshes when a refresh token is kept, else issues; a
--     refused refresh falls back to issue (the machine's operation job).
--   * One renewal at a time in a Lua state (single-flight): another
--     coroutine waits for it.
--   * The pause: within a second of the last try, a client whose token is
--     still valid, or whose last renewal failed, does not try again (no
--     stampede, no hammering a failing server): it answers the kept token,
--     or the last error. A renewal forced by a 401 does not pause.
--   * One deadline (the machine's): the renewal's attempts, backoff,
--     Retry-After, store calls and its wait for another holder all draw
--     from the call's deadline, fixed when it starts.
--   * With a store: the shared token is read first; the lock is taken (and
--     released, on every path, in `finished`) by the one that renews: a
--     lease of one attempt and a margin, kept alive by its holder before and
--     after each attempt and through each wait (a store with `extend`), else
--     for what is left of its deadline and the margin: either way the lock
--     covers the whole renewal, however long its Retry-After waits. Before
--     publishing, the holder reads the store again: a newer token there, or
--     (its lease lapsed) any valid one published since it took the lock, is
--     adopted, never overwritten (shared_token.release).
--     While another holder renews, the kept token is used if it is still
--     valid, else the client waits for the holder (backing off, reading the
--     store) until its own deadline; it renews alone only when the lock was
--     held longer than any renewal may take (a stuck holder: the store is
--     unusable). While the store fails, a client keeps its valid token
--     (looking at the store again after the pause) and renews alone only
--     when it is two attempts' time from expiry (when the store reads but
--     refuses writes: once it expired; or has none: a 401), and
--     then no more often than a backoff allows (1 s doubling to 30 s until
--     the store answers again): every member of a fleet renewing alone is a
--     login, Nomba keeps one session per client, and each login's 401s to
--     the others would make them log in again (a storm for the outage).
--   * A failed renewal never throws away a still-valid token.
-- (Private to nomba.oauth.)
local core = require "nomba.oauth.core"
local platform = require "nomba.oauth.platform"
local machine = require "nomba.oauth.machine"
local shared_token = require "nomba.oauth.shared_token"
local events = require "nomba.oauth.events"
local metrics = require "nomba.oauth.metrics"
local DEFAULTS = require("nomba.oauth.options").DEFAULTS

local tostring, math_random, math_min, math_max, math_floor = tostring, math.random, math.min, math.max, math.floor
local fresh, now, new_error = core.fresh, platform.now, core.error

local R = {}

local PAUSE = DEFAULTS.renew_pause                -- seconds between renewal tries
local BUSY = DEFAULTS.busy_backoff               -- {first, cap}: the wait for another holder
local ALONE = DEFAULTS.alone_backoff             -- {first, cap}: renewals alone while the store fails

local function closed_error(self)
  return new_error(self, "closed", "token", "the client is closed")
end

local LOCK_MARGIN = DEFAULTS.lock_margin

-- The lease of the store's lock, kept alive by its holder before each
-- attempt and through each wait (a store with `extend`): an attempt and a
-- margin, so a holder that dies frees it soon (a waiter's deadline covers
-- the lease and its own attempt: machine.budget).
local function lease(st)
  return st.timeout + LOCK_MARGIN
end

-- How long a renewal takes the store's lock: its lease, or, when the store
-- cannot extend a lock, what is left of its deadline (its last attempt
-- ends by then) and a margin to publish.
local function lock_ttl(st, job)
  if st.store.extend ~= nil then return lease(st) end
  return math_max(machine.left(job), 0) + LOCK_MARGIN
end

-- The holder's lease kept alive (the machine calls it before each attempt
-- of the renewal's operation and through its waits); a lapsed lease is
-- noted: the store is read before publishing anyway (shared_token.release).
local function keep(_, st, opjob)
  local lock = opjob.lock
  if lock.released or lock.lapsed then return end
  if shared_token.extend(st, lease(st), lock.owner) == false then lock.lapsed = true end
end

-- A lock seen held for longer than this has a stuck holder (a stopped
-- process keeps a file lock): no renewal may take longer.
local function stuck_after(st)
  return machine.budget(st) + LOCK_MARGIN
end

-- While the store fails, how close to expiry a kept token may come before
-- the client renews alone: two attempts' time. Sooner would be a login of
-- its own while the fleet's session is still good, ending it for the others
-- (whose 401s would make them log in too: a storm for as long as the outage).
-- A store that reads but refuses writes (Redis out of memory, a replica, a
-- full disk) still shares the fleet's valid token: no renewal alone until it
-- expired (`writes_refused`).
local function alone_margin(st, writes_refused)
  if writes_refused then return 0 end
  return 2 * st.timeout
end

-- A failed renewal in the log: an error when no valid token remains (or
-- less than a minute), else a warning.
local function log_failure(self, st, err)
  if not st.log then return end
  local left = core.remaining(self)
  local msg = "nomba.oauth: renewal failed (" .. tostring(err) .. "); "
  if left > 0 then
    events.log(st, left < 60 and "error" or "warn", msg .. ("the kept token expires in %d s"):format(math_floor(left)))
  else
    events.log(st, "error", msg .. "no valid token")
  end
end

-- One look at the store: "fresh" (the kept or shared token will do), a
-- lock `{ad =, before =}` to renew under, "busy" (another holder renews),
-- or nil (the store failed: go alone; and true when it read but refused
-- the lock's write). The store is read again once the lock is held:
-- someone may have just published.
local function claim(self, st, job)
  if not shared_token.refresh_view(self, st) or fresh(self) then
    return fresh(self) and "fresh" or nil
  end
  local got, owner = shared_token.lock(st, lock_ttl(st, job))
  if got == nil then return nil, true end
  if not got then return "busy" end
  local lock, _ = { owner = owner }
  lock.ad, _, lock.blob = shared_token.refresh_view(self, st)
  if fresh(self) then
    shared_token.release(self, st, lock)
    return "fresh"
  end
  lock.before = core.remaining(self)
  return lock
end

-- The end of the renewal: the lock released (the token published when it
-- is newer: shared_token.release), the single-flight mark cleared, the outcome
-- kept for the pause and the log. Only the first call does anything.
local function finished(self, st, job, err)
  if job.ended then return end
  job.ended = true
  if job.lock then shared_token.release(self, st, job.lock) end
  if job.renewing then st.renewing = false end
  if job.tried then
    st.last_err = err
    local op = job.op_job and job.op_job.op or job.op_name
    metrics.renewed(st, op, err)
    if err and (err.kind == "config" or err.kind == "closed") then
      st.last_try = nil                 -- nothing left: nothing to pause for
    elseif err then
      log_failure(self, st, err)
    elseif st.log then
      events.log(st, "info", ("nomba.oauth: token renewed (%s); it expires in %d s"):format(
        tostring(op), math_floor(core.remaining(self))))
    end
  end
end

-- The answer once nothing more is to be done: the new token, else the kept
-- one while it is valid, else the error.
local function answer(self, res, err)
  if res then return "done", res.access_token end
  local kept = fresh(self, 0)
  if kept then return "done", kept end
  return "done", nil, err
end

-- Renews now (under the lock, when job.lock holds one).
local function renew(self, st, job)
  if core.closed(self) then                -- closed meanwhile (by a store, a hook)
    finished(self, st, job, nil)
    return "done", nil, closed_error(self)
  end
  local op = core.has(self, "refresh") and "refresh" or core.has(self, "secret") and "issue"
  st.renewing, st.last_try, st.last_err = true, now(), nil
  job.renewing, job.tried, job.state, job.op_name = true, true, "renewing", op or nil
  if not op then
    local err = new_error(self, "config", "token",
      "this PKCE client has no valid token and cannot issue one: use authorize and exchange")
    finished(self, st, job, err)
    return "done", nil, err
  end
  job.op_job = machine.op(op, op == "refresh" and {} or nil, true)      -- (a refused refresh turns into issue)
  if job.lock and st.store.extend ~= nil then
    job.op_job.keep, job.op_job.keep_every, job.op_job.lock = keep, lease(st) / 3, job.lock
  end
  return machine.call(self, st, job, job.op_job)
end

-- The store is unusable (it failed, or its lock's holder is stuck): keep
-- the valid token, else renew alone, spaced.
local function alone(self, st, job, writes_refused)
  local left, t = core.remaining(self), now()
  if left > alone_margin(st, writes_refused) then             -- keep the valid token; look again later
    st.last_try, st.last_err = t, nil
    return "done", (fresh(self, 0))
  end
  if st.alone_next and t < st.alone_next then                 -- renewed alone a moment ago
    return answer(self, nil, st.last_err or new_error(self, "store_error", "token",
      "the store fails and this client renewed alone moments ago; it renews alone again in " ..
      ("%.1f s"):format(st.alone_next - t)))
  end
  st.alone_gap = math_min(st.alone_gap and st.alone_gap * 2 or ALONE.first, ALONE.cap)
  st.alone_next = t + st.alone_gap
  return renew(self, st, job)                                 -- else alone: it would expire first
end

-- The look at the store, again until the holder is done.
local function at_store(self, st, job)
  job.state = "store"
  local c, writes_refused = claim(self, st, job)
  if c ~= "busy" then st.busy_since = nil end
  if c ~= nil then st.alone_gap, st.alone_next = nil, nil end -- the store answers
  if c == "fresh" then return "done", (fresh(self)) end
  if c == nil then return alone(self, st, job, writes_refused) end   -- the store failed
  if c ~= "busy" then
    job.lock = c
    return renew(self, st, job)
  end
  local kept = fresh(self, 0)                                 -- another worker or host renews
  if kept then return "done", kept end
  local t = now()
  st.busy_since = st.busy_since or t
  if t - st.busy_since > stuck_after(st) then                 -- held past any renewal's deadline
    return alone(self, st, job)
  end
  local left = machine.left(job)
  if left <= 0 then
    return "done", nil, new_error(self, "timeout", "token", "another member holds the renewal lock and did " ..
      "not publish a token within this call's deadline", { retryable = true })
  end
  local may, phase = machine.can_wait(job)
  if not may then
    return "done", nil, new_error(self, "config", "token", "no valid token yet, and the " .. tostring(phase) ..
      " phase cannot wait for the renewal in progress")
  end
  job.pause = math_min((job.pause or BUSY.first) * 2, BUSY.cap)
  return "sleep", math_min(job.pause * (0.5 + math_random()), left)
end

-- After the single-flight wait, or straight away: the pause, then the
-- store or a renewal alone.
local function decide(self, st, job)
  if not job.force and st.last_try and now() - st.last_try < PAUSE and
     (core.remaining(self) > 0 or st.last_err) then
    local kept = fresh(self, 0)                -- renewed (or failed) a moment ago
    if kept then return "done", kept end
    return "done", nil, st.last_err
  end
  if st.store then return at_store(self, st, job) end
  return renew(self, st, job)
end

--- The kind of a renewal.
function R.Renewal(self, st, job, what, res, err, stuck)
  if what == "child" then                       -- the refresh or issue ended
    finished(self, st, job, err)
    return answer(self, res, err)
  end
  if core.closed(self) then return "done", nil, closed_error(self) end
  if what == "start" then
    -- never longer than a renewal's own budget (inside a longer call too): what
    -- another member waits for before it takes a holder for stuck
    local cap = now() + machine.budget(st)
    if not job.deadline or job.deadline > cap then job.deadline = cap end
    local tok = fresh(self)
    if tok then return "done", tok end         -- renewed meanwhile
    if st.renewing then                         -- another coroutine renews: wait for it
      job.state = "peer"
      return "yield"
    end
    return decide(self, st, job)
  end
  -- "wake"
  if job.state == "peer" then
    local kept = fresh(self, 0)
    if kept then return "done", kept end
    if st.renewing and not stuck then
      if machine.left(job) > 0 then return "yield" end
      return "done", nil, new_error(self, "timeout", "token", "another coroutine's renewal did not end " ..
        "within this call's deadline", { retryable = true })
    end
    if st.last_err then return "done", nil, st.last_err end
    return decide(self, st, job)
  end
  return at_store(self, st, job)
end

-- A raise went through the renewal: release what it holds.
local function abort(self, st, job)
  finished(self, st, job, nil)
end

--- A renewal job; `force` (after a 401): no pause.
function R.job(force)
  return { kind = R.Renewal, force = force, abort = abort }
end

--- The non-blocking mode's trigger: starts a renewal on the multi driver
-- when the kept token is not fresh and nothing is in flight.
function R.due(self, st)
  if st.nb or fresh(self) or core.closed(self) then return end
  local job = R.job(false)
  job.background = true                        -- a call may queue behind it (machine.queue)
  machine.begin(self, st, job)
end
machine.idle = R.due                           -- what a non-blocking step does with nothing in flight

return R
