-- token(): the refresh window, refresh-then-issue, failures while the kept
-- token is valid, clock skew, single-flight, the 401 recipe, transports.
local H = require "helpers"

describe("token()", function()
  local sim
  before_each(function()
    sim = H.sim()
    H.reset()
  end)

  it("renews by refresh inside the window (clamped to half a short lifetime)", function()
    assert(sim:config { lifetime = 4 })
    local c = H.client()                  -- refresh_skew 300 is clamped to 2 s
    local a = assert(c:token())
    assert.are.equal(a, c:token())
    assert.are.equal(0, H.count("refresh"))
    H.sleep(2.3)
    local b = assert(c:token())
    assert.are_not.equal(a, b)
    assert.are.equal(1, H.count("issue"))
    assert.are.equal(1, H.count("refresh"))
    assert.are.equal(b, c:token())
  end)

  it("issues afresh when the refresh is refused", function()
    local c = H.client()
    local a = assert(c:token())
    c:invalidate()
    assert(sim:fault { endpoint = "refresh", status = 401,
                       body = { code = "401", description = "Refresh token expired" } })
    local b = assert(c:token())
    assert.are_not.equal(a, b)
    assert.are.equal(1, H.count("refresh"))
    assert.are.equal(2, H.count("issue"))
  end)

  it("keeps the valid token when renewal fails, trying at most once a second", function()
    assert(sim:config { lifetime = 4 })
    local events = {}
    local c = H.client { on_event = function(ev) events[#events + 1] = ev end }
    local a = assert(c:token())
    H.sleep(2.3)
    assert(sim:fault { endpoint = "refresh", status = 503, body = "down", content_type = "text/plain", times = 100 })
    for _ = 1, 50 do assert.are.equal(a, c:token()) end
    assert.are.equal(1, H.count("refresh"))
    assert.are.equal(1, H.count("issue"))
    assert.are.same({ "refresh", false, 503 }, { events[2].op, events[2].ok, events[2].status })
    H.sleep(1.1)
    assert.are.equal(a, c:token())
    assert.are.equal(2, H.count("refresh"))
    -- once the kept token is past its expiry, the failure reaches the caller
    H.sleep(1.0)
    local t, err = c:token()
    assert.is_nil(t)
    H.assert_error(err, { kind = "http", op = "refresh", status = 503, retryable = true })
    -- within a second of that failure, a call answers it again without a
    -- request (the same pause as the non-blocking mode's)
    local sent = H.count("refresh") + H.count("issue")
    assert(sim:control("/_sim/clear_faults", {}))
    local t2, err2 = c:token()
    assert.is_nil(t2)
    assert.are.equal(err, err2)
    assert.are.equal(sent, H.count("refresh") + H.count("issue"))
    -- and the client recovers once the pause is over
    H.sleep(1.05)
    assert.is_string(assert(c:token()))
  end)

  it("a refused refresh falls back to issue even with a valid token", function()
    assert(sim:config { lifetime = 4 })
    local c = H.client()
    local a = assert(c:token())
    H.sleep(2.3)
    assert(sim:fault { endpoint = "refresh", status = 401, body = { code = "401", description = "no" } })
    local b = assert(c:token())
    assert.are_not.equal(a, b)
    assert.are.equal(2, H.count("issue"))
  end)

  for _, offset in ipairs { 3600, -3600 } do
    it("is right when the server's clock is off by " .. offset .. " s", function()
      assert(sim:config { clock_offset = offset })
      local c = H.client()
      local t = assert(c:issue())
      assert.is_true(t.expires_in >= 1798 and t.expires_in <= 1800, t.expires_in)
      assert.is_true(math.abs(t.expires_at - (os.time() + 1800)) <= 2)
      for _ = 1, 10 do assert.are.equal(t.access_token, c:token()) end
      assert.are.equal(1, H.count("issue"))
      assert.matches("valid for 1[78]%d%ds", tostring(c))
    end)
  end

  it("without a Date header, trusts the local clock", function()
    assert(sim:config { omit_date = true })
    local t = assert(H.client():issue())
    assert.is_true(t.expires_in >= 1797 and t.expires_in <= 1800)
  end)

  it("the 401 recipe: invalidate, get a new token, retry once", function()
    local c = H.client()
    local h = assert(c:headers())
    assert.are.equal(200, H.protected(h))
    -- somebody revokes our token behind our back
    assert(H.client():revoke(h.Authorization:match("Bearer (.+)")))
    assert.are.equal(401, H.protected(h))
    c:invalidate()
    local h2 = assert(c:headers())
    assert.are_not.same(h, h2)
    assert.are.equal(200, H.protected(h2))
  end)

  it("single-flight: two coroutines that need a renewal cause one request", function()
    local c = H.client { transport = H.curl_transport(sim.cafile, true) }
    local results = {}
    local function worker(i)
      return coroutine.create(function() results[i] = assert(c:token()) end)
    end
    local a, b = worker(1), worker(2)
    assert(coroutine.resume(a))          -- a starts the issue and yields in the transport
    assert(coroutine.resume(b))          -- b sees the renewal in flight and waits
    while coroutine.status(a) ~= "dead" or coroutine.status(b) ~= "dead" do
      if coroutine.status(a) ~= "dead" then assert(coroutine.resume(a)) end
      if coroutine.status(b) ~= "dead" then assert(coroutine.resume(b)) end
    end
    assert.is_string(results[1])
    assert.are.equal(results[1], results[2])
    assert.are.equal(1, H.count("issue"))
  end)
end)

describe("a custom transport", function()
  local sim
  before_each(function()
    sim = H.sim()
    H.reset()
  end)

  it("carries every request, with the same wire shape", function()
    local seen = {}
    local c = H.client { transport = H.curl_transport(sim.cafile, false, seen) }
    local t1 = assert(c:issue())
    local t2 = assert(c:refresh())
    assert.is_true(c:revoke())
    assert.are.equal(3, #seen)
    assert.are.same({ "POST", sim.url .. "/v1/auth/token/issue" }, { seen[1].method, seen[1].url })
    assert.are.equal("Bearer " .. t1.access_token, seen[2].headers.Authorization)
    assert.are.equal(sim.client.account_id, seen[1].headers.accountId)
    assert.are.equal(10, seen[1].timeout)
    assert.are.equal(H.log("revoke")[1].body, '{"clientId":"' .. sim.client.client_id ..
                     '","access_token":"' .. t2.access_token .. '"}')
  end)

  it("its failures become typed errors and are retried", function()
    local n = 0
    local c = H.client { retries = 2, transport = function()
      n = n + 1
      return nil, "connection refused"
    end }
    local _, err = c:issue()
    H.assert_error(err, { kind = "transport", op = "issue", message = "connection refused", retryable = true })
    assert.are.equal(3, n)
    -- the outcome is the transport's to name (outcome.c's table makes the error), never read off a message
    local timed_out = { outcome = "timeout", message = "read: timed out" }
    local _, e2 = H.client { transport = function() return nil, timed_out end }:issue()
    H.assert_error(e2, { kind = "timeout", message = "read: timed out", retryable = true })
    local _, e2b = H.client { retries = 0, transport = function() return nil, "timeout" end }:issue()
    H.assert_error(e2b, { kind = "transport", message = "timeout", retryable = true })
    local _, e2c = H.client { transport = function() return nil, { outcome = "tls", message = "bad certificate" } end }
      :issue()
    H.assert_error(e2c, { kind = "tls", retryable = false })
    local _, e3 = H.client { transport = function() error("secret-laden explosion") end }:issue()
    H.assert_error(e3, { kind = "transport", message = "the transport raised an error" })
    local _, e4 = H.client { transport = function() return { body = "x" } end }:issue()
    H.assert_error(e4, { kind = "protocol" })
  end)

  it("may hand over the bytes it received, framed by the same rule as cosockets' and libcurl's", function()
    local body = '{"code":"00","description":"ok","data":{"access_token":"raw-access-token-1","refresh_token":' ..
                 '"raw-refresh-token-1","expiresAt":"' .. os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + 1800) .. '"}}'
    local chunked = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\nContent-Type: application/json\n" ..
                    "Transfer-Encoding: chunked\n\n" .. ("%x"):format(#body) .. "\r\n" .. body .. "\r\n0\r\n\r\n"
    local tok = assert(H.client { transport = function() return { raw = chunked } end }:issue())
    assert.are.equal("raw-access-token-1", tok.access_token)
    local function raw_error(bytes)
      local _, err = H.client { retries = 0, transport = function() return { raw = bytes } end }:issue()
      return err
    end
    H.assert_error(raw_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
                   { kind = "protocol", status = 200, retryable = false,
                     message = "the answer has an invalid chunk size" })
    H.assert_error(raw_error("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}"),
                   { kind = "protocol", status = 200, retryable = true,
                     message = "the answer is truncated (in its body)" })
    H.assert_error(raw_error("HTTP/1.1 200 OK\r\nContent-Le"),
                   { kind = "protocol", retryable = true, message = "the answer is truncated (in its headers)" })
    H.assert_error(raw_error(""), { kind = "transport", retryable = true })
    H.assert_error(raw_error("SSH-2.0-OpenSSH\r\n\r\n"), { kind = "protocol", retryable = false })
  end)

  it("its answers go through the same interpreter (status, Retry-After, size cap)", function()
    local c = H.client { retries = 0, max_response_bytes = 1024, transport = function()
      return { status = 429, headers = { ["retry-after"] = "7" }, body = '{"code":"429","description":"slow"}' }
    end }
    local _, err = c:issue()
    H.assert_error(err, { kind = "api", status = 429, code = "429", retryable = true, retry_after = 7 })
    local big = H.client { max_response_bytes = 1024, transport = function()
      return { status = 200, headers = {}, body = ("x"):rep(2000) }
    end }
    local _, e2 = big:issue()
    H.assert_error(e2, { kind = "protocol", message = "the answer exceeds max_response_bytes" })
  end)
end)
