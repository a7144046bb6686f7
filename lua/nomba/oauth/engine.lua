--- The operation engine: the policy, written once, for every driver.
--
-- An operation (issue, refresh, revoke, authorize, exchange) is a job:
-- `{op, args, attempt, renewal, lock, callback}`. A driver carries one
-- attempt at a time and decides nothing: the C core builds the request and
-- interprets the answer; `after` decides what comes next (retry after a
-- backoff, fall back from a refused refresh to issue, done), and `finish`
-- applies what a finished job means (events, on_token, a revoked token
-- dropped from the client and the store, a renewal published to the store
-- and its lock released, the callback).
--
-- Two loops drive jobs: `run` blocks (the libcurl easy driver, or a Lua
-- transport such as OpenResty's cosockets), `begin`/`step` never block
-- (the libcurl multi driver). (Private to nomba.oauth.)
local core = require "nomba.oauth.core"
local runtime = require "nomba.oauth.runtime"
local events = require "nomba.oauth.events"
local shared = require "nomba.oauth.shared"
local drivers = require "nomba.oauth.drivers"

local math_random, math_min, math_max, tostring, pairs = math.random, math.min, math.max, tostring, pairs
local now, new_error = runtime.now, core.error

local E = {}

-- Backoff: exponential with full jitter; Retry-After honoured up to a cap.
local BACKOFF_BASE, BACKOFF_CAP = 0.2, 5
E.RETRY_AFTER_CAP = 30

--- A job for `op`; `how` may set `renewal` (a refused refresh falls back to
-- issue), `lock` (the store lock this job holds: `{ad =, before =}`),
-- `callback`, and for an API call `interpret` (`function(raw, ctx)`, the
-- answer's meaning, with `ctx`), `resend` (whether a failure may be sent
-- again), `timeout` and `event` (fields for its events).
function E.job(self, st, op, args, how)
  local job
  if how then                               -- one constructor: the table is made at its size
    job = { op = op, args = args, attempt = 1, renewal = how.renewal, lock = how.lock, callback = how.callback,
            interpret = how.interpret, resend = how.resend, timeout = how.timeout, event = how.event,
            ctx = how.ctx, t0 = false }
  else
    job = { op = op, args = args, attempt = 1 }
  end
  -- the shared token may be the one revoked: read it first
  if op == "revoke" and st.store then shared.read(self, st) end
  return job
end

-- A refresh the server refused for good (not a passing failure).
local function refused(err)
  return err.kind == "config" or ((err.kind == "api" or err.kind == "http") and not err.retryable)
end

-- How long to wait before attempt n + 1, or nil when the server asks for
-- more than the cap (then the error is the answer).
local function backoff(err, n)
  if err.retry_after then
    if err.retry_after > E.RETRY_AFTER_CAP then return nil end
    return err.retry_after
  end
  return math_random() * math_min(BACKOFF_CAP, BACKOFF_BASE * 2 ^ (n - 1))
end

--- After an attempt: "done", res, err; "retry", seconds; or "again" (the
-- job changed: start it at once).
function E.after(self, st, job, res, err, status, elapsed)
  -- an API call's raw answer becomes its result or its error here
  if job.interpret and res ~= nil then res, err = job.interpret(res, job.ctx) end
  -- closed and config errors come before anything is sent
  local sent = res ~= nil or (err.kind ~= "closed" and err.kind ~= "config")
  if sent and (st.on_event or (st.log and res == nil)) then
    local ev = { op = job.op, attempt = job.attempt, ok = res ~= nil, status = status,
                 elapsed = elapsed, kind = err and err.kind, code = err and err.code }
    for k, v in pairs(job.event or {}) do ev[k] = v end
    events.emit(st, ev)
  end
  if res ~= nil then return "done", res end
  -- job.resend(err): whether this failure may be retried (an API call that
  -- is not idempotent is retried only when it provably never left)
  if sent and err.retryable and job.attempt <= st.retries and (not job.resend or job.resend(err)) then
    local wait = backoff(err, job.attempt)
    if wait then
      job.attempt = job.attempt + 1
      return "retry", wait
    end
  end
  if job.renewal and job.op == "refresh" and refused(err) and core.has(self, "secret") then
    job.op, job.args, job.attempt = "issue", nil, 1
    return "again"
  end
  return "done", nil, err
end

-- A failed renewal in the log: an error when no valid token remains (or
-- less than a minute), else a warning.
local function log_renewal(self, st, err)
  if not st.log then return end
  local left = core.remaining(self)
  local msg = "nomba.oauth: renewal failed (" .. tostring(err) .. "); "
  if left > 0 then
    events.log(st, left < 60 and "error" or "warn", msg .. ("the kept token expires in %d s"):format(math.floor(left)))
  else
    events.log(st, "error", msg .. "no valid token")
  end
end

--- What a finished job means; returns res, err.
function E.finish(self, st, job, res, err)
  if res ~= nil then
    local op = job.op
    if op == "issue" or op == "refresh" or op == "exchange" then
      events.adopted(st, res)
    elseif op == "revoke" and core.drop(self, job.args and job.args.access_token) and st.store then
      shared.revoked(st)
    end
  end
  if job.lock then shared.release(self, st, job.lock, res ~= nil) end
  if job.renewal then
    st.last_err = err
    if err then log_renewal(self, st, err) end
  end
  if job.callback then runtime.pcall_y(job.callback, res, err) end
  return res, err
end

--- Runs a job to its end, blocking: the libcurl easy driver, or the
-- client's transport (custom, or OpenResty's cosockets, which yield).
function E.run(self, st, job)
  local attempt = st.transport and drivers.transport or drivers.easy
  while true do
    local t0 = now()
    local res, err, status = attempt(self, st, job.op, job.args, job.timeout)
    local what, a, b = E.after(self, st, job, res, err, status, now() - t0)
    if what == "done" then return E.finish(self, st, job, a, b) end
    if what == "retry" then runtime.sleep(a) end
  end
end

-- Non-blocking (the libcurl multi driver) ----------------------------------------

-- Settles an attempt of the job in flight.
local function settle(self, st, job, res, err, status)
  local what, a, b = E.after(self, st, job, res, err, status, now() - job.t0)
  if what == "retry" then
    job.retry_at = now() + a
  elseif what == "again" then
    E.begin(self, st, job)
  else
    st.nb = nil
    E.finish(self, st, job, a, b)
  end
end

--- Starts the current attempt of a job without waiting; `step` carries it.
-- Returns true, or nil and the error when the job ended at once.
function E.begin(self, st, job)
  job.t0 = now()
  st.nb = job
  local ok, err = drivers.multi.start(self, job.op, job.args, job.timeout or st.timeout)
  if not ok then
    settle(self, st, job, nil, err, nil)
    if st.nb ~= job then return nil, err end
  end
  return true
end

--- Advances the job in flight without blocking; true while one is.
function E.step(self, st)
  local job = st.nb
  if not job then return false end
  if job.retry_at then
    if now() < job.retry_at then return true end
    job.retry_at = nil
    E.begin(self, st, job)
    return st.nb ~= nil
  end
  local done, res, err, status = drivers.multi.progress(self)
  if done == false then return true end
  if done == nil then                     -- nothing in flight any more (closed)
    st.nb = nil
    E.finish(self, st, job, nil, new_error("closed", job.op, "the client is closed"))
    return false
  end
  settle(self, st, job, res, err, status)
  return st.nb ~= nil
end

--- Blocks up to `seconds` until the job in flight can make progress, or a
-- retry (or a look at the store, `wake_at`) is due; false when nothing is
-- in flight or scheduled.
function E.wait(self, st, seconds)
  local job = st.nb
  local at = job and job.retry_at or (not job and st.wake_at)
  if at then
    core.sleep(math_min(seconds, math_max(0, at - now())))
    return true
  end
  if not job then return false end
  drivers.multi.wait(self, seconds)
  return true
end

return E
