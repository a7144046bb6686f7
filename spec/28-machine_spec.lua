-- The machine without I/O: table-driven cases advance an operation's job
-- (machine.advance) with scripted answers and a scripted deadline, and
-- check every step it asks for: an attempt (its operation and timeout), a
-- sleep (how long), or its answer. No network: the client's transport
-- raises if anything is ever sent. The end-to-end specs (06, 10, 22, 23,
-- 27) prove the same policy on every driver; these pin its arithmetic.
local oauth = require "nomba.oauth"
local core = require "nomba.oauth.core"
local machine = require "nomba.oauth.machine"
local platform = require "nomba.oauth.platform"

local CAP = machine.RETRY_AFTER_CAP
local unpack = table.unpack or unpack     -- luacheck: ignore
local TOKEN = { access_token = "scripted-access-token", expires_in = 1800 }

local function client(extra)
  local o = { account_id = "acct", client_id = "id", client_secret = "scripted-secret", retries = 2, timeout = 5,
              transport = function() error("the machine sent a request in a unit test") end }
  for k, v in pairs(extra or {}) do o[k] = v end
  return oauth.new(o)
end

-- An error as a driver returns it (core.error), with maybe_sent when given.
local function failure(op, s)
  local err = core.error(s.kind, op, s.message or s.kind, { status = s.status, retryable = s.retryable,
                                                             retry_after = s.retry_after })
  err.maybe_sent = s.maybe_sent
  return err
end

-- Drives `job` to its answer: `left` seconds of deadline, `script` the
-- answers of its attempts in turn ({ok = result} or an error's fields).
-- Returns the steps it asked for and its answer.
local function drive(c, job, script, left)
  local st = core.state(c)
  job.deadline = platform.now() + left
  local steps, i = {}, 0
  local act, a, b = machine.advance(c, st, job, "start")
  while act ~= "done" do
    if act == "attempt" then
      steps[#steps + 1] = { "attempt", a.op, a.limit }
      i = i + 1
      local s = assert(script[i], "the machine asked for an attempt the script does not have")
      if s.ok then
        act, a, b = machine.advance(c, st, job, "answer", s.ok, nil, 200, 0.01)
      else
        act, a, b = machine.advance(c, st, job, "answer", nil, failure(a.op, s), s.status, 0.01)
      end
    elseif act == "sleep" then
      steps[#steps + 1] = { "sleep", a }
      act, a, b = machine.advance(c, st, job, "wake")
    else
      error("unexpected step " .. tostring(act))
    end
  end
  assert.are.equal(#script, i, "attempts made")
  return steps, a, b
end

local function kinds(steps)
  local out = {}
  for _, s in ipairs(steps) do out[#out + 1] = s[1] == "attempt" and s[1] .. " " .. s[2] or s[1] end
  return table.concat(out, ", ")
end

local B503 = { kind = "http", status = 503, retryable = true }

describe("the machine, without I/O", function()
  it("a job asks its runner what it can do", function()
    local blocking, stepped = machine.op("issue"), machine.op("issue")
    assert.is_true(machine.can_sleep(blocking) and machine.can_wait(blocking) and machine.waits_inline(blocking))
    blocking.runner = machine.BLOCKING           -- run() gives it; a job advanced outside a runner counts so too
    assert.is_true(machine.can_sleep(blocking) and machine.can_wait(blocking) and machine.waits_inline(blocking))
    -- begin() gives the stepped runner: it never sleeps for the caller, waits by timers, never renews inline
    stepped.runner = machine.STEPPED
    assert.is_false(machine.can_sleep(stepped))
    assert.is_true(machine.can_wait(stepped))
    assert.is_false(machine.waits_inline(stepped))
    local child = { kind = function() return "done" end }   -- a child runs on its parent's runner
    stepped.kind = function() return "done" end
    machine.call(nil, {}, stepped, child)
    assert.are.equal(machine.STEPPED, child.runner)
  end)

  for _, case in ipairs {
    { name = "a 503 is tried again after a backoff, then the answer",
      op = { "issue" }, script = { B503, { ok = TOKEN } }, left = 60,
      want = "attempt issue, sleep, attempt issue", ok = true,
      check = function(steps) assert.is_true(steps[2][2] >= 0 and steps[2][2] <= 0.5) end },
    { name = "a 400 is the answer at once", op = { "issue" },
      script = { { kind = "api", status = 400, retryable = false } }, left = 60,
      want = "attempt issue", kind = "api" },
    { name = "retries spent: the last error, after retries + 1 attempts",
      op = { "issue" }, script = { B503, B503, B503 }, left = 60,
      want = "attempt issue, sleep, attempt issue, sleep, attempt issue", kind = "http",
      check = function(steps) assert.is_true(steps[4][2] <= 1.0) end },       -- the second backoff: base * 2
    { name = "a Retry-After inside the deadline is waited, exactly",
      op = { "issue" }, script = { { kind = "http", status = 429, retryable = true, retry_after = 1.5 },
                                   { ok = TOKEN } }, left = 60,
      want = "attempt issue, sleep, attempt issue", ok = true,
      check = function(steps) assert.are.equal(1.5, steps[2][2]) end },
    { name = "a Retry-After over the cap ends the call with its error",
      op = { "issue" }, script = { { kind = "http", status = 429, retryable = true, retry_after = CAP + 1 } },
      left = 600, want = "attempt issue", kind = "http" },
    { name = "a Retry-After that would leave no time for another attempt ends the call",
      op = { "issue" }, script = { { kind = "http", status = 503, retryable = true, retry_after = 1.8 } },
      left = 2, want = "attempt issue", kind = "http" },
    { name = "an attempt's timeout is what is left of the deadline",
      op = { "issue" }, script = { { ok = TOKEN } }, left = 1.2, want = "attempt issue", ok = true,
      check = function(steps) assert.is_true(steps[1][3] <= 1.2 and steps[1][3] > 1.0, steps[1][3]) end },
    { name = "a deadline with less than the least attempt left: a timeout, nothing sent",
      op = { "issue" }, script = {}, left = 0.2, want = "", kind = "timeout" },
    { name = "a refused refresh of a renewal falls back to issue",
      op = { "refresh", {}, true }, script = { { kind = "api", status = 400, retryable = false }, { ok = TOKEN } },
      left = 60, want = "attempt refresh, attempt issue", ok = true },
    { name = "a refused refresh outside a renewal is the answer",
      op = { "refresh", {} }, script = { { kind = "api", status = 400, retryable = false } },
      left = 60, want = "attempt refresh", kind = "api" },
    { name = "a call that is not idempotent and may have left is never sent again",
      op = { "request", {}, false, false }, script = { { kind = "timeout", retryable = true, maybe_sent = true } },
      left = 60, want = "attempt request", kind = "timeout" },
    { name = "... unless it provably never left",
      op = { "request", {}, false, false },
      script = { { kind = "transport", retryable = true, maybe_sent = false }, { ok = { status = 200 } } },
      left = 60, want = "attempt request, sleep, attempt request", ok = true },
    { name = "... or Nomba answered 429 with Retry-After (before processing it)",
      op = { "request", {}, false, false },
      script = { { kind = "api", status = 429, retryable = true, retry_after = 0.2, maybe_sent = true },
                 { ok = { status = 200 } } },
      left = 60, want = "attempt request, sleep, attempt request", ok = true },
    { name = "an idempotent call that may have left is tried again",
      op = { "request", {}, false, true }, script = { { kind = "timeout", retryable = true, maybe_sent = true },
                                                      { ok = { status = 200 } } },
      left = 60, want = "attempt request, sleep, attempt request", ok = true },
    { name = "a call's own timeout bounds each attempt under the client's",
      op = { "request", {}, false, true, 0.7 }, script = { { ok = { status = 200 } } }, left = 60,
      want = "attempt request", ok = true, check = function(steps) assert.are.equal(0.7, steps[1][3]) end },
  } do
    it(case.name, function()
      local c = client(case.client)
      local job = machine.op(unpack(case.op, 1, 5))
      local steps, res, err = drive(c, job, case.script, case.left)
      local got = kinds(steps)
      assert.are.equal(case.want, got)
      if case.ok then
        assert.is_table(res, tostring(err))
      else
        assert.is_nil(res)
        assert.are.equal(case.kind, err.kind)
      end
      if case.check then case.check(steps) end
      c:close()
    end)
  end
end)
