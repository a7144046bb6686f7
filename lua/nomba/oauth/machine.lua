--- The machine: the policy of every operation, written once, as one machine
-- that never blocks; the drivers only move bytes.
--
-- A job is a table advanced by `advance(self, st, job, what, ...)`, which
-- answers what the job needs next:
--   "attempt", opjob   carry one attempt of opjob (its op, args, timeout);
--                      then advance with "answer", res, err, status, elapsed
--   "sleep", seconds   nothing to do for that long; then "wake"
--   "yield"            another coroutine of this Lua state renews; then "wake"
--   "done", res, err   the job's answer
-- A job may run another one as its child (an API call runs its attempts and
-- a renewal; a renewal runs its refresh or issue): the child is advanced
-- until it is done, and its answer comes to the parent as "child", res, err.
-- A job asks its runner (`job.runner`) what it can do: M.can_sleep and
-- M.waits_inline below. On the non-blocking runner nothing may
-- wait for the caller (a spent rate-limit window, a busy store's holder
-- are then waited out with timers, or answered at once).
--
-- One deadline: a job run by a runner gets `job.deadline` when it starts
-- (M.budget: every attempt, the backoff and Retry-After between them, the
-- store's calls and a refused refresh's issue), and its children inherit
-- it (a renewal's is never longer than a renewal's own budget). Every wait
-- inside the call draws from it: an attempt's timeout is what is left of
-- it, a backoff or Retry-After that would not leave time for another
-- attempt ends the call with the last error, and the wait for another
-- holder of the store's lock ends with it (renewal.lua). A store call is
-- bounded by the store's own timeout; none starts a wait once the deadline
-- passed, but the publishing of a token the call already got, and the
-- lock's release, still run.
--
-- The kinds, each in its own file: `M.Op` here (an operation's attempts:
-- retry with backoff and jitter, Retry-After, a refused refresh falling back
-- to issue, what a finished operation means), the renewal (renewal.lua) and
-- the API call (request.lua).
--
-- Two runners, the only difference between blocking and non-blocking use:
--   run         blocking: the libcurl easy driver, or the client's transport
--               (OpenResty's cosockets yield inside it), platform.sleep
--   begin/step  never blocking: the libcurl multi driver, timers
-- (Private to nomba.oauth.)
local core = require "nomba.oauth.core"
local platform = require "nomba.oauth.platform"
local events = require "nomba.oauth.events"
local shared_token = require "nomba.oauth.shared_token"
local wire = require "nomba.oauth.wire"
local metrics = require "nomba.oauth.metrics"
local DEFAULTS = require("nomba.oauth.options").DEFAULTS

local math_random, math_min, math_max, pairs, error = math.random, math.min, math.max, pairs, error
local co_yield = coroutine.yield
local now, new_error, pcall_y = platform.now, core.error, platform.pcall_y

local M = {}

local BACKOFF = DEFAULTS.backoff          -- {base, cap}: exponential with full jitter
M.RETRY_AFTER_CAP = DEFAULTS.retry_after_cap
local MIN_ATTEMPT = DEFAULTS.min_attempt
local LOCK_MARGIN = DEFAULTS.lock_margin
local TOKENS = { issue = true, refresh = true, exchange = true }   -- the operations that give a token

local advance

-- The runners, and what each can do. A job never tests which one runs it:
-- it asks (M.can_sleep, M.waits_inline).
local BLOCKING = { name = "run", sleeps = true }        -- machine.run: waits in place
local STEPPED = { name = "step", sleeps = false }      -- machine.begin/step: timers, never the caller's time
M.BLOCKING, M.STEPPED = BLOCKING, STEPPED

--- Whether `job` may sleep in place now for the caller (wait out a
-- rate-limit window): its runner blocks, and the platform lets it (not an
-- nginx phase without cosockets).
function M.can_sleep(job)
  return (job.runner or BLOCKING).sleeps and (platform.cosockets()) == true
end

--- Whether `job` may wait for something to end (another holder's renewal):
-- by timers on the stepped runner, else by sleeping where the platform can;
-- false and the nginx phase when it cannot.
function M.can_wait(job)
  if not (job.runner or BLOCKING).sleeps then return true end
  return platform.cosockets()
end

--- Whether `job` may run a renewal inline before going on (the blocking
-- runner); the stepped one answers "pending" instead and step() renews.
function M.waits_inline(job)
  return (job.runner or BLOCKING).sleeps
end

--- Runs `child` as the child of `job`: its first step, and its answer
-- handed to job's kind at once when it needs nothing.
function M.call(self, st, job, child)
  job.child = child
  child.runner = job.runner
  if job.deadline and not (child.deadline and child.deadline < job.deadline) then child.deadline = job.deadline end
  local act, a, b = child.kind(self, st, child, "start")
  if act ~= "done" then return act, a, b end
  job.child = nil
  return job.kind(self, st, job, "child", a, b)
end

--- Advances the innermost job; a child's answer goes to its parent. The
-- machine itself, without I/O: the runners call it, and so do the unit
-- tests (spec/28-machine), which answer its attempts from a script.
advance = function(self, st, job, what, a, b, c, d)
  local child = job.child
  if not child then return job.kind(self, st, job, what, a, b, c, d) end
  local act, x, y = advance(self, st, child, what, a, b, c, d)
  if act ~= "done" then return act, x, y end
  job.child = nil
  return job.kind(self, st, job, "child", x, y)
end
M.advance = advance

-- The deadline --------------------------------------------------------------------

--- The longest a call may take (seconds), with an attempt's `timeout`
-- (the client's when nil): its attempts and one more (a refused refresh's
-- issue, the store's calls), a Retry-After of the cap between each two,
-- and twice the lock's margin (a waiter outlives a dead holder's lease,
-- an attempt and that margin: renewal.lua).
function M.budget(st, timeout)
  return (st.retries + 2) * (timeout or st.timeout) + st.retries * M.RETRY_AFTER_CAP + 2 * LOCK_MARGIN
end

--- What is left of a job's deadline (seconds; huge when it has none).
function M.left(job)
  local d = job.deadline
  if not d then return 1 / 0 end
  return d - now()
end

-- The least time worth another attempt.
local function least(st, job)
  return math_min(job.timeout or st.timeout, MIN_ATTEMPT)
end

-- An operation's attempts -----------------------------------------------------------

-- A refresh the server refused for good (not a passing failure).
local function refused(err)
  return err.kind == "config" or ((err.kind == "api" or err.kind == "http") and not err.retryable)
end

-- How long to wait before attempt n + 1, or nil when the server asks for
-- more than the cap, or the wait would leave less than `room` of the
-- deadline's `left` (then the error is the answer).
local function backoff(err, n, left, room)
  local wait = err.retry_after
  if wait then
    if wait > M.RETRY_AFTER_CAP then return nil end
  else
    wait = math_random() * math_min(BACKOFF.cap, BACKOFF.base * 2 ^ (n - 1))
  end
  if wait + room > left then return nil end
  return wait
end

-- The next attempt of an operation, its timeout what is left of the
-- deadline; when too little is left, the last error (or a timeout) ends it.
local function next_attempt(self, st, job)
  if job.keep then job.keep(self, st, job) end
  if TOKENS[job.op] then job.left0 = core.remaining(self) end
  local left = M.left(job)
  if left < least(st, job) then
    return "done", nil, job.last_err or new_error(self, "timeout", job.op,
      "the call's deadline passed before the attempt", { retryable = true })
  end
  job.limit = math_min(job.timeout or st.timeout, left)
  return "attempt", job
end

-- Whether a failed call that is not idempotent may be sent again: only
-- when it provably never left, or when Nomba answered 429/503 with
-- Retry-After (which it does before processing). No double charge.
local function may_resend(err)
  if err.maybe_sent == false then return true end
  return (err.status == 429 or err.status == 503) and err.retry_after ~= nil
end

-- What a finished operation means: on_token for a new token; a revoked
-- token dropped from the client and from the store.
local function finished(self, st, job, res)
  local op = job.op
  if TOKENS[op] then
    if op ~= "exchange" then metrics.count(st, op == "issue" and "issues" or "refreshes") end
    events.adopted(st, res)
    if st.store and not job.renewal then shared_token.publish(self, st) end   -- a renewal publishes under its lock
  elseif op == "revoke" and core.drop(self, job.args and job.args.access_token) and st.store then
    shared_token.revoked(st)
  end
  return "done", res
end

-- A raise went through an operation (an interrupt, a debug hook's error,
-- on the way back from the transfer): a token the C core kept from its
-- answer is already Nomba's session (the refresh token before it retired),
-- so it is still handed to on_token and published (a renewal publishes it
-- when its lock is released).
local function op_abort(self, st, job)
  if not (job.left0 and TOKENS[job.op] and core.remaining(self) > job.left0) then return end
  job.left0 = nil
  events.adopted(st, core.kept(self))
  if st.store and not job.renewal then shared_token.publish(self, st) end
end

--- The kind of an operation: one attempt after another.
function M.Op(self, st, job, what, res, err, status, elapsed)
  if what == "start" then
    -- the shared token may be the one to revoke: read it first
    if job.op == "revoke" and st.store then shared_token.read(self, st) end
    return next_attempt(self, st, job)
  elseif what == "wake" then
    local rest = job.sleep_until and job.sleep_until - now()
    if rest and rest > 0 then                -- a wait cut in slices: the lease kept alive
      job.keep(self, st, job)
      return "sleep", math_min(rest, job.keep_every)
    end
    job.sleep_until = nil
    return next_attempt(self, st, job)
  end
  -- an answer: the lease kept alive for what follows (publishing, a retry);
  -- closed and config errors come before anything is sent
  if job.keep then job.keep(self, st, job) end
  local sent = res ~= nil or (err.kind ~= "closed" and err.kind ~= "config")
  if sent and (st.on_event or (st.log and res == nil)) then
    local ev = { op = job.op, attempt = job.attempt, ok = res ~= nil, status = status,
                 elapsed = elapsed, kind = err and err.kind, code = err and err.code }
    for k, v in pairs(job.event or {}) do ev[k] = v end
    events.emit(st, ev)
  end
  if res ~= nil then
    job.last_err = nil
    return finished(self, st, job, res)
  end
  job.last_err = err
  if sent and err.retryable and job.attempt <= st.retries and (job.idempotent ~= false or may_resend(err)) then
    local wait = backoff(err, job.attempt, M.left(job), least(st, job))
    if wait then
      job.attempt = job.attempt + 1
      if not job.keep then return "sleep", wait end
      job.sleep_until = now() + wait
      return "sleep", math_min(wait, job.keep_every)
    end
  end
  if job.renewal and job.op == "refresh" and refused(err) and core.has(self, "secret") then
    -- an issue ends Nomba's session: a token another member published
    -- meanwhile is adopted instead
    if st.store and shared_token.refresh_view(self, st) and core.fresh(self) then
      job.last_err = nil
      return "done", core.kept(self)
    end
    job.op, job.args, job.attempt = "issue", nil, 1
    return next_attempt(self, st, job)
  end
  job.last_err = nil
  return "done", nil, err
end

--- An operation's job: `renewal` (a refused refresh falls back to issue),
-- `idempotent` (false: resent only when it never left), `timeout` and
-- `event` (fields for its events). `into`, when given, is a finished job
-- table made again (an API call reuses its own).
function M.op(op, args, renewal, idempotent, timeout, event, into)
  local job = into or { kind = M.Op, abort = op_abort }
  job.op, job.args, job.attempt, job.renewal = op, args, 1, renewal
  job.idempotent, job.timeout, job.event, job.child = idempotent, timeout, event, nil
  job.deadline, job.limit, job.last_err, job.keep, job.sleep_until, job.left0 = nil, nil, nil, nil, nil, nil
  return job
end

-- Undoes what an unfinished job holds (a raise went through it): the
-- store's lock, the single-flight mark.
local function abort(self, st, job)
  while job do
    if job.abort then job.abort(self, st, job) end
    job = job.child
  end
end

-- Blocking ---------------------------------------------------------------------------

-- One attempt on the blocking driver; its duration only when an event
-- will tell it.
local function attempt(self, st, opjob)
  local drive = st.transport and wire.transport or wire.easy
  if not (st.on_event or st.log) then return drive(self, st, opjob.op, opjob.args, opjob.limit) end
  local t0 = now()
  local res, err, status = drive(self, st, opjob.op, opjob.args, opjob.limit)
  return res, err, status, now() - t0
end

local function loop(self, st, job)
  local act, a, b = advance(self, st, job, "start")
  while act ~= "done" do
    if act == "attempt" then
      act, a, b = advance(self, st, job, "answer", attempt(self, st, a))
    elseif act == "sleep" then
      platform.sleep(a)
      act, a, b = advance(self, st, job, "wake")
    else                                   -- "yield": let the renewing coroutine run
      local waited = true
      if platform.ngx then
        platform.sleep(0.005)
      elseif platform.can_yield() then
        co_yield()
      else
        waited = false                     -- nobody else can be renewing
      end
      act, a, b = advance(self, st, job, "wake", not waited)
    end
  end
  return a, b
end

-- A job's deadline, fixed when a runner starts it.
local function deadline(st, job)
  job.deadline = now() + M.budget(st, job.args and job.args.timeout)
end

--- Runs a job to its end, blocking; returns its answer.
function M.run(self, st, job)
  job.runner = BLOCKING
  deadline(st, job)
  local ok, res, err = pcall_y(loop, self, st, job)
  if not ok then
    abort(self, st, job)
    error(res, 0)
  end
  return res, err
end

-- Non-blocking (the libcurl multi driver) ---------------------------------------------

-- Carries out what the job in flight asks for, without waiting.
local function proceed(self, st, job, act, a, b)
  while true do
    if act == "attempt" then
      job.t0 = now()
      local ok, err = wire.multi.start(self, a.op, a.args, a.limit or st.timeout)
      if ok then
        job.sending = true
        return true
      end
      act, a, b = advance(self, st, job, "answer", nil, err, nil, 0)
    elseif act == "sleep" or act == "yield" then
      job.wake_at = now() + (act == "sleep" and a or 0.005)
      return true
    else
      st.nb = nil
      return false, a, b
    end
  end
end

local function guarded(self, st, job, act, a, b)
  local ok, busy, res, err = pcall_y(proceed, self, st, job, act, a, b)
  if not ok then
    st.nb = nil
    abort(self, st, job)
    error(busy, 0)
  end
  return busy, res, err
end

--- Starts a job without waiting; `step` carries it. Returns true while it
-- is in flight; a job that needs nothing ends at once and returns
-- false, res, err (its callback is not called).
function M.begin(self, st, job, callback)
  job.callback, job.runner = callback, STEPPED
  deadline(st, job)
  st.nb = job
  local ok, act, a, b = pcall_y(advance, self, st, job, "start")
  if not ok then
    st.nb = nil
    abort(self, st, job)
    error(act, 0)
  end
  return guarded(self, st, job, act, a, b)
end

-- The answer of the transfer in flight handed to the job, or "running".
-- (Under the pcall: an error raised the moment the C core returns, after
-- it kept a token, still releases what the job holds.)
local function answered(self, st, job)
  local done, res, err, status = wire.multi.progress(self)
  if done == false then return "running" end
  if done == nil then                    -- nothing in flight any more: the client was closed
    local inner = job
    while inner.child do inner = inner.child end
    res, err = nil, new_error(self, "closed", inner.op or "token", "the client is closed")
  end
  job.sending = false
  return advance(self, st, job, "answer", res, err, status, now() - job.t0)
end

--- Queues `job` behind the renewal step() began in the background (the
-- kept token may still be valid): it begins when that renewal ends. One
-- job may wait so; true when it was queued.
function M.queue(st, job, callback)
  local running = st.nb
  if not (running and running.background) or st.nb_next then return false end
  job.callback = callback
  st.nb_next = job
  return true
end

-- Begins the queued job, if any, when nothing is in flight.
local function next_job(self, st)
  local job = st.nb_next
  if not job or st.nb then return end
  st.nb_next = nil
  local busy, res, err = M.begin(self, st, job, job.callback)
  if not busy and job.callback then pcall_y(job.callback, res, err) end
end

--- What a step does when no job is in flight or queued: renewal.lua sets
-- it to start a due renewal (it cannot be required here: it requires this).
M.idle = function() end

--- One non-blocking step (client:step()): advances the job in flight, or
-- begins the queued one, or lets the idle work begin (a due renewal);
-- true while a job is in flight or queued.
function M.step(self, st)
  local job = st.nb
  if not job then
    if st.nb_next then
      next_job(self, st)
    else
      M.idle(self, st)
    end
    return st.nb ~= nil
  end
  local ok, act, a, b
  if job.wake_at then
    if now() < job.wake_at then return true end
    job.wake_at = nil
    ok, act, a, b = pcall_y(advance, self, st, job, "wake")
  else
    ok, act, a, b = pcall_y(answered, self, st, job)
    if ok and act == "running" then return true end
  end
  if not ok then
    st.nb = nil
    abort(self, st, job)
    error(act, 0)
  end
  local busy, res, err = guarded(self, st, job, act, a, b)
  if not busy and job.callback then pcall_y(job.callback, res, err) end
  next_job(self, st)
  return st.nb ~= nil
end

--- Blocks up to `seconds` until the job in flight can make progress or its
-- timer is due; false when nothing is in flight.
function M.wait(self, st, seconds)
  local job = st.nb
  if not job then return false end
  if job.wake_at then
    core.sleep(math_min(seconds, math_max(0, job.wake_at - now())))
  else
    wire.multi.wait(self, seconds)
  end
  return true
end

return M
