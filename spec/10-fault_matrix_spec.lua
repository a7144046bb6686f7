-- The fault matrix: one row per fault the simulator can play. Each row
-- asserts the exact error (kind, status, code, retryable), the number of
-- attempts the simulator saw, and that the client still works afterwards.
local H = require "helpers"

local HTML = "<html><body><h1>502 Bad Gateway</h1></body></html>"
local RETRIES = 2

-- attempts: how many requests the simulator sees for one issue() call
local MATRIX = {
  { "500 with an HTML page", { status = 500, body = HTML, content_type = "text/html" },
    { kind = "http", status = 500, retryable = true }, 3 },
  { "502 with an empty body", { status = 502, body = "" },
    { kind = "http", status = 502, retryable = true, message = "empty answer" }, 3 },
  { "503 with a Nomba body", { status = 503, body = { code = "01", description = "Try again" } },
    { kind = "api", status = 503, code = "01", retryable = true }, 3 },
  { "504 with Retry-After 0", { status = 504, headers = { ["Retry-After"] = "0" }, body = "" },
    { kind = "http", status = 504, retryable = true, retry_after = 0 }, 3 },
  { "429 slow down", { status = 429, body = { code = "429", description = "Too many requests" } },
    { kind = "api", status = 429, code = "429", retryable = true }, 3 },
  { "400 validation", { status = 400, body = { code = "02", description = "Bad", errors = { "x" } } },
    { kind = "api", status = 400, code = "02", message = "Bad", retryable = false }, 1 },
  { "401 authenticate again", { status = 401, body = { code = "401", description = "Auth" } },
    { kind = "api", status = 401, code = "401", retryable = false }, 1 },
  { "403 not permitted", { status = 403, body = { code = "05", description = "No" } },
    { kind = "api", status = 403, code = "05", retryable = false }, 1 },
  { "404 with an HTML page", { status = 404, body = HTML, content_type = "text/html" },
    { kind = "http", status = 404, retryable = false }, 1 },
  { "422 unprocessable", { status = 422, body = { code = "02", description = "Unprocessable" } },
    { kind = "api", status = 422, code = "02", retryable = false }, 1 },
  { "200 with code 06 (do not retry)", { status = 200, body = { code = "06", description = "Stop" } },
    { kind = "api", status = 200, code = "06", retryable = false }, 1 },
  { "200 with code 01", { status = 200, body = { code = "01", description = "Invalid credentials" } },
    { kind = "api", status = 200, code = "01", retryable = false }, 1 },
  { "200 with a non-JSON body", { status = 200, body = "OK", content_type = "text/plain" },
    { kind = "protocol", status = 200, retryable = false }, 1 },
  { "200 with an empty body", { status = 200, body = "" },
    { kind = "protocol", status = 200, retryable = false, message = "the answer is empty" }, 1 },
  { "200 with JSON that is not an object", { status = 200, body = "[1,2,3]" },
    { kind = "protocol", status = 200, retryable = false }, 1 },
  { "200 with a token but no expiry", { status = 200,
      body = { code = "00", data = { access_token = "abc", refresh_token = "r" } } },
    { kind = "protocol", status = 200, retryable = false,
      message = "the answer has neither expiresAt nor expires_in" }, 1 },
  { "200 with an already expired token", { status = 200,
      body = { code = "00", data = { access_token = "abc", expiresAt = "2001-01-01T00:00:00Z" } } },
    { kind = "protocol", status = 200, retryable = false }, 1 },
  { "a truncated body", { status = 200, truncate = true, body = '{"code":"00","data":{' },
    { kind = "protocol", status = 200, retryable = true }, 3 },
  { "an oversized body", { status = 200, size = 100000 },
    { kind = "protocol", status = 200, retryable = false }, 1 },
  { "a dropped connection", { drop = true },
    { kind = "transport", retryable = true }, 3 },
  { "a delay before the headers", { delay = 0.8 },
    { kind = "timeout", retryable = true }, 3 },
  { "a delay in the middle of the body", { status = 200, body_delay = 0.8,
      body = '{"code":"00","description":"Success","data":{"access_token":"x"}}' },
    { kind = "timeout", status = 200, retryable = true }, 3 },
}

describe("fault matrix (issue)", function()
  local sim
  before_each(function()
    sim = H.sim()
    H.reset()
    -- each row's first attempt on a fresh connection (the clients of a Lua
    -- state share their connections: see the case after the matrix)
    assert.is_true(require("nomba.oauth.core")._test.close_idle())
  end)

  for _, row in ipairs(MATRIX) do
    local name, fault, want, attempts = row[1], row[2], row[3], row[4]
    it(name, function()
      fault.endpoint = "issue"
      fault.times = RETRIES + 1
      assert(sim:fault(fault))
      local events = {}
      local c = H.client { retries = RETRIES, timeout = 0.4,
                           on_event = function(ev) events[#events + 1] = ev end }
      local t, err = c:issue()
      assert.is_nil(t)
      want.op = "issue"
      H.assert_error(err, want)
      if not want.status then assert.is_nil(err.status) end
      if not want.code then assert.is_nil(err.code) end
      assert.are.equal(attempts, H.count("issue"))
      assert.are.equal(attempts, #events)
      for i, ev in ipairs(events) do
        assert.are.same({ "issue", i, false, want.kind }, { ev.op, ev.attempt, ev.ok, ev.kind })
      end
      -- the rest of the queued fault, if any, then a healthy client
      assert(sim:control("/_sim/clear_faults", {}))
      if fault.delay or fault.body_delay then H.sleep(0.8) end
      assert.is_string(assert(c:token()))
    end)
  end

  it("clients share connections: a dropped pooled connection is re-sent once by libcurl", function()
    local a = H.client {}
    assert(a:issue())                          -- leaves a keep-alive connection in the pool
    assert(sim:fault { endpoint = "issue", drop = true, times = 1 })
    local events = {}
    local b = H.client { retries = 0, on_event = function(ev) events[#events + 1] = ev end }
    assert(b:issue())                          -- rides a's connection; the server drops it
    assert.are.equal(1, #events)               -- one attempt of ours ...
    assert.are.equal(3, H.count("issue"))      -- ... libcurl re-sent it on a fresh connection
  end)

  it("a refresh fault keeps the valid token, for every row", function()
    for _, row in ipairs(MATRIX) do
      H.reset()
      local c = H.client { retries = 0, timeout = 0.4 }
      local t = assert(c:issue())
      local fault = {}
      for k, v in pairs(row[2]) do fault[k] = v end
      -- twice: libcurl transparently re-sends once when a reused keep-alive
      -- connection turns out dead, which is what a dropped answer looks like
      fault.endpoint, fault.times = "refresh", 2
      assert(sim:fault(fault))
      local r, err = c:refresh()
      assert.is_nil(r, row[1])
      assert.are.equal(row[3].kind, err.kind, row[1])
      assert.are.equal("refresh", err.op)
      assert.are.equal(t.access_token, c:token(), row[1])
      assert(sim:control("/_sim/clear_faults", {}))
    end
  end)
end)
