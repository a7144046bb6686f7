-- Each error kind that can be provoked, with its exact shape, the number of
-- attempts the simulator saw, and a client that still works afterwards.
local oauth = require "nomba.oauth"
local core = require "nomba.oauth.core"
local H = require "helpers"

describe("errors", function()
  local sim
  before_each(function()
    sim = H.sim()
    H.reset()
  end)

  local function still_works(c)
    assert.is_string(assert(c:issue()).access_token)
  end

  it("bad credentials: api 401, not retried", function()
    local c = H.client { client_secret = "wrong-secret", retries = 2 }
    local t, err = c:issue()
    assert.is_nil(t)
    H.assert_error(err, { kind = "api", op = "issue", status = 401, code = "01",
                          message = "Invalid client credentials", retryable = false })
    assert.are.equal('nomba.oauth: issue failed: HTTP 401, Nomba code "01": Invalid client credentials',
                     tostring(err))
    assert.are.equal(1, H.count("issue"))
  end)

  it("wrong accountId: api 401", function()
    local c = H.client { account_id = "00000000-0000-4000-8000-000000000000" }
    local _, err = c:issue()
    H.assert_error(err, { kind = "api", op = "issue", status = 401, code = "01", retryable = false })
  end)

  it("untrusted CA: tls, not retried", function()
    local o = sim:client_options { retries = 2 }
    o.cafile = nil
    local c = oauth.new(o)
    local _, err = c:issue()
    H.assert_error(err, { kind = "tls", op = "issue", retryable = false })
    assert.is_nil(err.status)
    assert.are.equal(0, H.count("issue"))
  end)

  it("a host name the certificate does not name: tls", function()
    local c = H.client { base_url = "https://127.0.0.1:" .. sim.port }
    local _, err = c:issue()
    H.assert_error(err, { kind = "tls", op = "issue", retryable = false })
  end)

  it("nothing listening: transport, retried", function()
    local events = {}
    local c = H.client { base_url = "https://localhost:1", retries = 1,
                         on_event = function(ev) events[#events + 1] = ev end }
    local _, err = c:issue()
    H.assert_error(err, { kind = "transport", op = "issue", retryable = true })
    assert.are.equal(2, #events)
  end)

  it("timeout before the headers: timeout, retried", function()
    assert(sim:fault { endpoint = "issue", delay = 1.5, times = 2 })
    local c = H.client { timeout = 0.3, retries = 1 }
    local _, err = c:issue()
    H.assert_error(err, { kind = "timeout", op = "issue", retryable = true })
    assert.are.equal(2, H.count("issue"))
  end)

  it("timeout in the middle of the body", function()
    assert(sim:fault { endpoint = "issue", status = 200, body_delay = 1.5,
                       body = '{"code":"00","data":{"access_token":"x"}}' })
    local c = H.client { timeout = 0.4 }
    local _, err = c:issue()
    H.assert_error(err, { kind = "timeout", op = "issue", retryable = true })
    H.sleep(1.2)
    still_works(c)
  end)

  it("HTTP 500 with an HTML body: http, retried, then success", function()
    assert(sim:fault { endpoint = "issue", status = 500, content_type = "text/html",
                       body = "<html><body>Internal Server Error</body></html>", times = 1 })
    local c = H.client { retries = 1 }
    local t = assert(c:issue())
    assert.is_string(t.access_token)
    assert.are.equal(2, H.count("issue"))
  end)

  it("HTTP 500 with an HTML body, out of retries", function()
    assert(sim:fault { endpoint = "issue", status = 500, content_type = "text/html",
                       body = "<html>oops</html>", times = 3 })
    local c = H.client { retries = 2 }
    local _, err = c:issue()
    H.assert_error(err, { kind = "http", op = "issue", status = 500, retryable = true })
    assert.is_nil(err.code)
    assert.matches("text/html", err.message)
    assert.are.equal(3, H.count("issue"))
    still_works(c)
  end)

  it("HTTP 200 with code ~= 00: api, not retried", function()
    assert(sim:fault { endpoint = "issue", status = 200,
                       body = { code = "05", description = "Not permitted" } })
    local c = H.client { retries = 2 }
    local _, err = c:issue()
    H.assert_error(err, { kind = "api", op = "issue", status = 200, code = "05",
                          message = "Not permitted", retryable = false })
    assert.are.equal(1, H.count("issue"))
    still_works(c)
  end)

  it("a numeric code is read as a string", function()
    assert(sim:fault { endpoint = "issue", status = 400, body = '{"code":2,"description":"bad"}' })
    local _, err = H.client():issue()
    H.assert_error(err, { kind = "api", status = 400, code = "2", retryable = false })
  end)

  it("a truncated body: protocol", function()
    assert(sim:fault { endpoint = "issue", status = 200, truncate = true,
                       body = '{"code":"00","data":{"access_token":"abc"' })
    local c = H.client()
    local _, err = c:issue()
    H.assert_error(err, { kind = "protocol", op = "issue", status = 200 })
    still_works(c)
  end)

  it("an oversized body: protocol, not retried", function()
    assert(sim:fault { endpoint = "issue", status = 200, size = 70000 })
    local c = H.client { retries = 2 }
    local _, err = c:issue()
    H.assert_error(err, { kind = "protocol", op = "issue", status = 200, retryable = false,
                          message = "the answer exceeds max_response_bytes" })
    assert.are.equal(1, H.count("issue"))
    still_works(c)
  end)

  it("max_response_bytes can be lowered", function()
    local c = H.client { max_response_bytes = 256 }
    local _, err = c:issue()
    H.assert_error(err, { kind = "protocol", message = "the answer exceeds max_response_bytes" })
  end)

  it("a dropped connection: transport, retried", function()
    assert(sim:fault { endpoint = "issue", drop = true })
    local c = H.client { retries = 1 }
    assert(c:issue())
    assert.are.equal(2, H.count("issue"))
  end)

  it("200 with a body that is not JSON: protocol", function()
    assert(sim:fault { endpoint = "issue", status = 200, content_type = "text/plain", body = "OK" })
    local _, err = H.client():issue()
    H.assert_error(err, { kind = "protocol", status = 200, retryable = false })
  end)

  it("200 with code 00 but no token: protocol", function()
    assert(sim:fault { endpoint = "issue", status = 200, body = { code = "00", data = {} } })
    local _, err = H.client():issue()
    H.assert_error(err, { kind = "protocol", message = "the answer has no access_token" })
  end)

  it("200 with an unparseable expiresAt: protocol", function()
    assert(sim:fault { endpoint = "issue", status = 200, body = { code = "00",
      data = { access_token = "a", refresh_token = "r", expiresAt = "tomorrow" } } })
    local _, err = H.client():issue()
    H.assert_error(err, { kind = "protocol", message = "the answer's expiresAt is not an ISO 8601 time" })
  end)

  it("429 with Retry-After is waited for, then retried", function()
    assert(sim:fault { endpoint = "issue", status = 429, headers = { ["Retry-After"] = "1" },
                       body = { code = "429", description = "Slow down" } })
    local c = H.client { retries = 1 }
    local t0 = core.now()
    assert(c:issue())
    assert.is_true(core.now() - t0 >= 0.9)     -- it did wait for the server
    assert.are.equal(2, H.count("issue"))
  end)

  it("a Retry-After beyond 30 s is reported, not waited for", function()
    assert(sim:fault { endpoint = "issue", status = 503, headers = { ["Retry-After"] = "120" },
                       body = "busy", content_type = "text/plain" })
    local c = H.client { retries = 2 }
    local _, err = c:issue()
    H.assert_error(err, { kind = "http", status = 503, retryable = true, retry_after = 120 })
    assert.are.equal(1, H.count("issue"))
  end)

  it("a Retry-After given as an HTTP date", function()
    local when = os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + 90)
    assert(sim:fault { endpoint = "issue", status = 503, headers = { ["Retry-After"] = when },
                       body = "", content_type = "text/plain" })
    local _, err = H.client { retries = 2 }:issue()
    H.assert_error(err, { kind = "http", status = 503 })
    assert.is_true(err.retry_after >= 88 and err.retry_after <= 91)
  end)

  it("400, 401, 403 and 422 are never retried", function()
    for _, status in ipairs { 400, 401, 403, 422 } do
      H.reset()
      assert(sim:fault { endpoint = "issue", status = status, body = { code = "02", description = "no" } })
      local _, err = H.client { retries = 3 }:issue()
      H.assert_error(err, { kind = "api", status = status, retryable = false })
      assert.are.equal(1, H.count("issue"))
    end
  end)

  it("a failed revoke keeps the token; refresh without a refresh token is a config error", function()
    local c = H.client()
    local a = assert(c:token())
    assert(sim:fault { endpoint = "revoke", status = 500, body = "x", content_type = "text/plain" })
    local ok, err = c:revoke()
    assert.is_nil(ok)
    H.assert_error(err, { kind = "http", op = "revoke", status = 500 })
    assert.are.equal(a, c:token())
    local fresh_client = H.client()
    local _, e2 = fresh_client:refresh()
    H.assert_error(e2, { kind = "config", op = "refresh" })
    local _, e3 = fresh_client:revoke()
    H.assert_error(e3, { kind = "config", op = "revoke" })
  end)
end)

describe("events", function()
  before_each(H.reset)

  it("reports every attempt without a secret", function()
    local events = {}
    assert(H.sim():fault { endpoint = "issue", status = 502, body = "bad gateway", content_type = "text/plain" })
    local c = H.client { retries = 1, on_event = function(ev) events[#events + 1] = ev end }
    assert(c:issue())
    assert.are.equal(2, #events)
    assert.are.same({ op = "issue", attempt = 1, ok = false, status = 502, kind = "http" },
                    { op = events[1].op, attempt = events[1].attempt, ok = events[1].ok,
                      status = events[1].status, kind = events[1].kind })
    assert.are.same({ "issue", 2, true, 200 },
                    { events[2].op, events[2].attempt, events[2].ok, events[2].status })
    assert.is_number(events[2].elapsed)
    assert.is_nil(events[2].kind)
  end)

  it("an error raised inside on_event never breaks the request", function()
    local c = H.client { on_event = function() error("boom") end }
    assert(c:issue())
  end)
end)

describe("log", function()
  before_each(H.reset)

  it("failed attempts are info, a renewal that leaves no token an error; never a secret", function()
    local lines = {}
    local function log(level, message) lines[#lines + 1] = { level, message } end
    local sim = H.sim()
    assert(sim:fault { endpoint = "issue", status = 503, times = 2 })
    local c = H.client { retries = 1, log = log }
    local tok, err = c:token()
    assert.is_nil(tok)
    assert.are.equal("http", err.kind)
    assert.are.same({ "info", "nomba.oauth: issue attempt 1 failed: http, HTTP 503" }, lines[1])
    assert.are.same({ "info", "nomba.oauth: issue attempt 2 failed: http, HTTP 503" }, lines[2])
    assert.are.equal("error", lines[3][1])
    assert.matches("^nomba%.oauth: renewal failed %(.*HTTP 503.*%); no valid token$", lines[3][2])
    assert.are.equal(3, #lines)
    -- a renewal that fails while the kept token is still valid: a warning
    local t = assert(c:issue())
    assert(sim:fault { endpoint = "refresh", status = 500, times = 1 })
    local kept = assert(c:refresh())               -- works: a fresh pair
    assert.are_not.equal(t.access_token, kept.access_token)
    lines = {}
    local secret = sim.client.client_secret
    assert(sim:fault { endpoint = "refresh", status = 503, times = 5 })
    assert(sim:fault { endpoint = "issue", status = 503, times = 5 })
    -- a saved token with 100 s left of 1000: inside the refresh window
    c = H.client { retries = 0, log = log, token = { access_token = kept.access_token,
      refresh_token = kept.refresh_token, expires_at = os.time() + 100, expires_in = 1000 } }
    assert.are.equal(kept.access_token, c:token())   -- the renewal fails: the kept token
    assert.are.equal("warn", lines[#lines][1])
    assert.matches("the kept token expires in %d+ s$", lines[#lines][2])
    for _, l in ipairs(lines) do
      assert.is_nil(l[2]:find(secret, 1, true))
      assert.is_nil(l[2]:find(kept.access_token, 1, true))
      assert.is_nil(l[2]:find(kept.refresh_token, 1, true))
    end
  end)

  it("is silent by default outside OpenResty; log = false is accepted; an error inside log is swallowed", function()
    assert(H.sim():fault { endpoint = "issue", status = 503, times = 2 })
    local _, err = H.client { log = false }:issue()
    assert.are.equal("http", err.kind)
    local _, err2 = H.client { log = function() error("boom") end }:issue()
    assert.are.equal("http", err2.kind)
    assert.has_error(function() H.client { log = 42 } end,
                     "nomba.oauth.new: option 'log' must be a function (got number)")
  end)
end)
