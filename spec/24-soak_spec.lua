-- The chaos soak (tools/soak.lua, make soak) judged: a fleet of two nginx
-- instances of 4 workers and four plain Lua processes shares one Nomba
-- session through Redis for SOAK_SPEC_S seconds (180 by default) while
-- 5xx bursts, resets after send, slow answers, 429s, a renewal answered 429
-- with a Retry-After longer than the lock's lease, a server-side
-- revocation, two Redis restarts, a Redis refusing writes, an nginx
-- reload, a SIGKILL of the lock holder and a clock step are played on it;
-- one member names a foreign accountId throughout; a non-blocking member's
-- start() answering "pending" outside a fault is a failure like any other.
local cjson = require "cjson"

describe("the chaos soak #slow #soak", function()
  local report

  setup(function()
    local seconds = tonumber(os.getenv("SOAK_SPEC_S")) or 180
    local out = os.tmpname()
    local cmd = ("SOAK_S=%d SOAK_JSON=%s %s tools/soak.lua > %s.txt 2>&1"):format(seconds, out,
                arg and arg[-1] or "lua5.4", out)
    local ok = os.execute(cmd)
    local text = io.open(out .. ".txt"):read("*a")
    os.remove(out .. ".txt")
    assert(ok, "the soak failed:\n" .. text)
    local f = assert(io.open(out), "the soak wrote no report:\n" .. text)
    report = cjson.decode(f:read("*a"))
    f:close()
    os.remove(out)
    io.stderr:write("\n", text:match("\nchaos soak.*$") or text, "\n")
  end)

  it("every API call made outside a fault carried a token Nomba accepted", function()
    assert.is_true(report.calls_outside_faults > 500, "too few calls to judge: " .. report.calls_outside_faults)
    assert.are.same({}, report.failures_outside)
    assert.are.equal(1, report.ok_fraction)
    assert.is_true(report.calls_during_faults > 0)
  end)

  it("a member naming a foreign accountId throughout: every call the caller's error, no renewal", function()
    assert.is_true(report.foreign.calls > 50, "too few calls to judge: " .. report.foreign.calls)
    assert.are.same({}, report.foreign.other)
    assert.are.equal(report.foreign.calls, report.foreign.refused)
  end)

  it("one session: at most 1.2 renewals per token lifetime, none ended by a parallel login", function()
    assert.is_true(report.renewals_per_lifetime <= 1.2, "renewals per lifetime: " .. report.renewals_per_lifetime)
    assert.are.equal(0, report.sessions_ended_outside_faults)
    assert.are.equal(0, report.refused_ended_outside_faults)
    assert.are.equal(0, report.refused.expired)
    assert.are.equal(0, report.refused.missing)
  end)

  it("every webhook event granted exactly once", function()
    assert.is_true(report.webhooks.answered > 20)
    assert.are.equal(0, report.webhooks.twice, cjson.encode(report.webhooks.wrong or {}))
    assert.are.equal(0, report.webhooks.never, cjson.encode(report.webhooks.wrong or {}))
    assert.are.equal(report.webhooks.answered, report.webhooks.once)
  end)

  it("no growth of RSS or descriptors in any member", function()
    assert.is_true(report.flat, cjson.encode({ growth = report.growth, from_start = report.growth_from_start }))
    local n = 0
    for _ in pairs(report.growth) do n = n + 1 end
    assert.are.equal(7, n)                            -- five Lua members (one replaced) and two nginx
  end)

  it("timed headers() in nginx in every phase, and in every fault's window", function()
    for _, phase in ipairs { "quiet", "faults", "after" } do
      assert.is_true(report.headers_n[phase] >= 100, phase .. ": " .. report.headers_n[phase] .. " timings")
      local p50, p99 = report.headers_p50_us[phase], report.headers_p99_us[phase]
      assert.is_true(p50 >= 0 and p50 <= p99, ("%s: p50 %s, p99 %s"):format(phase, p50, p99))
    end
    local ratio = report.headers_p99_us.faults / report.headers_p99_us.quiet
    assert.is_true(math.abs(ratio - report.headers_p99_ratio) < 1e-9 * ratio, "the ratio is the two p99s'")
    for _, name in ipairs(report.fault_names) do
      assert.is_number(report.headers_p99_us_by_fault[name], name .. " has no headers() timings")
    end
  end)
end)
