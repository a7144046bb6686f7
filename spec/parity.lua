-- The driver-parity scenarios and their runner, shared by the specs (libcurl
-- easy, libcurl multi through step(), a plain Lua transport) and by the
-- OpenResty app (cosockets in nginx, spec/openresty/app.lua). A scenario is
-- data only (it crosses into nginx as JSON): the faults the simulator plays,
-- the call, the client's options and the outcome every driver must give.
local P = {}

local HTML = "<html><body><h1>502 Bad Gateway</h1></body></html>"

-- The fault matrix: one row per fault the simulator can play, for issue():
-- {name, fault, the error, attempts the simulator sees} (spec/10 runs it on
-- the default driver with its recovery checks; spec/23 on every driver).
P.MATRIX = {
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

local BALANCE = { path = "/v1/accounts/balance" }
local ORDER = { method = "POST", path = "/v1/checkout/order", json = { order = { amount = "10.00" } } }
local function text(status, times, extra)
  local f = { status = status, body = "busy", content_type = "text/plain", times = times }
  for k, v in pairs(extra or {}) do f[k] = v end
  return f
end

--- Every scenario: the fault matrix for issue(), then the API calls.
-- `call`: op ("issue", "request", "token"), opts, times; `prime`: a token
-- first; `revoke`: the primed token revoked elsewhere; `saved`: start from
-- a saved token (no request); `pair`: a second client sharing a store makes
-- the same call after the first; `fleet`: that many clients, each making
-- the call in turn, `times` rounds (the outcome is the first client's first
-- call: the later ones find no token, "pending" when non-blocking); `blackhole`: the client's
-- base_url is a port that takes connections and never answers (the spec fills it in);
-- `broken_store`: a store whose every
-- method fails (Redis down) instead; `client`: options; `config`: the
-- simulator's settings; `want`: the outcome (`seen`: requests per endpoint).
P.CASES = {}
for _, row in ipairs(P.MATRIX) do
  local fault = {}
  for k, v in pairs(row[2]) do fault[k] = v end
  fault.endpoint, fault.times = "issue", 3
  local want = { attempts = row[4], seen = { issue = row[4] } }
  for k, v in pairs(row[3]) do
    if k ~= "message" and not ((row[3].kind == "timeout" or row[3].kind == "transport") and k == "status") then
      want[k] = v
    end
  end
  P.CASES[#P.CASES + 1] = { name = "issue: " .. row[1], faults = { fault }, call = { op = "issue" },
                            client = { retries = 2, timeout = 0.4 }, want = want }
end

local function case(t) P.CASES[#P.CASES + 1] = t end

case { name = "GET through two 503s", prime = true, faults = { text(503, 2, { endpoint = "protected" }) },
       call = { op = "request", opts = BALANCE },
       want = { ok = true, status = 200, attempts = 3, seen = { protected = 3 } } }
case { name = "425 is retried for a GET as for the token operations", prime = true,
       faults = { text(425, 2, { endpoint = "protected" }) }, call = { op = "request", opts = BALANCE },
       want = { ok = true, status = 200, attempts = 3, seen = { protected = 3 } } }
case { name = "a POST answered 503 without Retry-After is not sent again", prime = true,
       faults = { text(503, 3, { endpoint = "order" }) }, call = { op = "request", opts = ORDER },
       want = { kind = "http", status = 503, retryable = true, maybe_sent = true, attempts = 1,
                seen = { order = 1 } } }
case { name = "a POST answered 429 with Retry-After in seconds is sent again", prime = true,
       faults = { { endpoint = "order", status = 429, headers = { ["Retry-After"] = "0" }, body = "" } },
       call = { op = "request", opts = ORDER },
       want = { ok = true, status = 200, attempts = 2, seen = { order = 2 } } }
case { name = "a POST answered 503 with Retry-After as an HTTP-date is sent again", prime = true,
       faults = { { endpoint = "order", status = 503, retry_after_in = 0, body = "" } },
       call = { op = "request", opts = ORDER },
       want = { ok = true, status = 200, attempts = 2, seen = { order = 2 } } }
case { name = "Retry-After as an HTTP-date is measured against the server's Date (an hour behind)",
       prime = true, config = { clock_offset = -3600 }, client = { retries = 0 },
       faults = { { endpoint = "protected", status = 429, retry_after_in = 2,
                    body = { code = "429", description = "Too many requests" } } },
       call = { op = "request", opts = BALANCE },
       want = { kind = "api", status = 429, code = "429", retryable = true, retry_after = 2, attempts = 1 } }
case { name = "a repeated Retry-After is its first value", prime = true, client = { retries = 0 },
       faults = { { endpoint = "protected", status = 429, headers = { ["Retry-After"] = { "1", "7" } }, body = "" } },
       call = { op = "request", opts = BALANCE },
       want = { kind = "http", status = 429, retryable = true, retry_after = 1, attempts = 1 } }
case { name = "a POST dropped after Nomba processed it is never sent twice", prime = true,
       faults = { { endpoint = "order", after = true } }, call = { op = "request", opts = ORDER },
       want = { kind = "transport", retryable = true, maybe_sent = true, attempts = 1, seen = { order = 1 } } }
case { name = "a GET dropped after it was processed is sent again", prime = true,
       faults = { { endpoint = "protected", after = true } }, call = { op = "request", opts = BALANCE },
       want = { ok = true, status = 200, attempts = 2, seen = { protected = 2 } } }
case { name = "a POST that never connected is sent again (maybe_sent false)", saved = true,
       client = { base_url = "https://127.0.0.1:1", retries = 2 }, call = { op = "request", opts = ORDER },
       want = { kind = "transport", retryable = true, maybe_sent = false, attempts = 3 } }
case { name = "a POST whose TLS handshake never ends left no byte: sent again (maybe_sent false)", saved = true,
       blackhole = true, client = { retries = 2, timeout = 0.3 }, call = { op = "request", opts = ORDER },
       want = { kind = "timeout", retryable = true, maybe_sent = false, attempts = 3 } }
case { name = "an answer cut inside its header block is truncated, never a success (GET: retried)", prime = true,
       faults = { { endpoint = "protected", raw = "text", text = "HTTP/1.1 200 OK\r\nContent-Le", times = 3 } },
       call = { op = "request", opts = BALANCE },
       want = { kind = "protocol", retryable = true, maybe_sent = true, attempts = 3, seen = { protected = 3 } } }
case { name = "an answer cut inside its header block (POST: not sent again)", prime = true,
       faults = { { endpoint = "order", raw = "text", text = "HTTP/1.1 200 OK\r\nContent-Le" } },
       call = { op = "request", opts = ORDER },
       want = { kind = "protocol", retryable = true, maybe_sent = true, attempts = 1, seen = { order = 1 } } }
case { name = "a body cut short is truncated (GET: retried)", prime = true,
       faults = { { endpoint = "protected", status = 200, truncate = true, body = '{"code":"00","data":{',
                    times = 3 } },
       call = { op = "request", opts = BALANCE },
       want = { kind = "protocol", retryable = true, maybe_sent = true, attempts = 3, seen = { protected = 3 } } }
case { name = "an echoed bearer is redacted from the answer and the error", prime = true,
       faults = { { endpoint = "protected", status = 400, echo = true } }, call = { op = "request", opts = BALANCE },
       want = { kind = "api", status = 400, code = "02", retryable = false, maybe_sent = true, redacted = true,
                attempts = 1 } }
case { name = "hostile rate-limit headers are no counts", prime = true,
       faults = { { endpoint = "protected", status = 200, body = '{"code":"00","data":{}}',
                    headers = { ["X-Rate-Limit-Limit"] = "1e999", ["X-Rate-Limit-Remaining"] = "0x10",
                                ["X-Rate-Limit-Window"] = "1s" } } },
       call = { op = "request", opts = BALANCE }, want = { ok = true, status = 200, rate_limit = false, attempts = 1 } }
case { name = "rate-limit counts and window", prime = true, call = { op = "request", opts = BALANCE },
       want = { ok = true, status = 200, code = "00", rate_limit = { limit = 40, remaining = 39, window = 1 },
                attempts = 1 } }
case { name = "a 401 invalidates the token sent, renews once and retries once", prime = true, revoke = true,
       call = { op = "request", opts = BALANCE },
       want = { ok = true, status = 200, attempts = 2, seen = { protected = 2, refresh = 1, issue = 2 } } }
case { name = "a 401 that renewing cannot cure: two calls, then the 401", prime = true,
       call = { op = "request", opts = { path = "/v1/accounts/balance", account_id = "someone-else" } },
       want = { kind = "api", status = 401, retryable = false, maybe_sent = true, attempts = 2,
                seen = { protected = 2, refresh = 1, issue = 1 } } }
case { name = "a 401 to two clients sharing a store: one renewal for both", prime = true, revoke = true, pair = true,
       call = { op = "request", opts = BALANCE },
       want = { ok = true, status = 200, seen = { protected = 4, refresh = 1, issue = 2 } } }
case { name = "a fleet of three whose store fails logs in once each, not once per 401", prime = true, fleet = 3,
       broken_store = true, call = { op = "request", opts = BALANCE, times = 4 },
       want = { kind = "store_error", seen = { issue = 3, protected = 6 } } }
case { name = "five token() calls against a failing server: one try a second", client = { retries = 0 },
       faults = { text(503, 10, { endpoint = "issue" }) }, call = { op = "token", times = 5 },
       want = { kind = "http", status = 503, retryable = true, seen = { issue = 1 } } }

-- One framing rule, every driver: answers written byte for byte.
local OK_BODY = '{"code":"00","data":{}}'
local function raw(bytes, endpoint) return { { endpoint = endpoint or "protected", raw = "text", text = bytes } } end
case { name = "framing: a HEAD answered with a Content-Length has no body", prime = true,
       faults = raw("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n"),
       call = { op = "request", opts = { method = "HEAD", path = "/v1/accounts/balance" } },
       want = { ok = true, status = 200, attempts = 1, seen = { protected = 1 }, sent_as = { method = "HEAD" } } }
case { name = "framing: a 304 with a Content-Length has no body", prime = true,
       faults = raw("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
       call = { op = "request", opts = BALANCE },
       want = { kind = "http", status = 304, retryable = false, maybe_sent = true, attempts = 1 } }
case { name = "framing: a 204 with a Content-Length has no body", prime = true,
       faults = raw("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"), call = { op = "request", opts = BALANCE },
       want = { ok = true, status = 204, attempts = 1 } }
case { name = "framing: a header block ended by bare LFs is read", prime = true,
       faults = raw("HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: 23\n\n" .. OK_BODY),
       call = { op = "request", opts = BALANCE }, want = { ok = true, status = 200, code = "00", attempts = 1 } }
case { name = "framing: interim 1xx answers before the answer are passed over", prime = true,
       faults = raw("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n" ..
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 23\r\n\r\n" .. OK_BODY),
       call = { op = "request", opts = BALANCE }, want = { ok = true, status = 200, code = "00", attempts = 1 } }
case { name = "framing: chunks with extensions, and trailers, are read", prime = true,
       faults = raw("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" ..
                    "a;name=value\r\n" .. OK_BODY:sub(1, 10) .. "\r\nD ; x\r\n" .. OK_BODY:sub(11) ..
                    "\r\n0\r\nX-Trailer: yes\r\n\r\n"),
       call = { op = "request", opts = BALANCE }, want = { ok = true, status = 200, code = "00", attempts = 1 } }
case { name = "framing: chunked wins over a Content-Length", prime = true,
       faults = raw("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n" ..
                    "Transfer-Encoding: chunked\r\n\r\n17\r\n" .. OK_BODY .. "\r\n0\r\n\r\n"),
       call = { op = "request", opts = BALANCE }, want = { ok = true, status = 200, code = "00", attempts = 1 } }
case { name = "framing: an invalid chunk size is a protocol error, not retried", prime = true,
       faults = raw("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" ..
                    "zz\r\n" .. OK_BODY .. "\r\n0\r\n\r\n"),
       call = { op = "request", opts = BALANCE },
       want = { kind = "protocol", status = 200, retryable = false, maybe_sent = true, attempts = 1 } }
case { name = "framing: a chunk size followed by junk is a protocol error", prime = true,
       faults = raw("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" ..
                    "17 junk\r\n" .. OK_BODY .. "\r\n0\r\n\r\n"),
       call = { op = "request", opts = BALANCE },
       want = { kind = "protocol", status = 200, retryable = false, maybe_sent = true, attempts = 1 } }
case { name = "framing: chunks cut short are truncated (GET: retried)", prime = true,
       faults = { { endpoint = "protected", raw = "text", times = 3,
                    text = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" ..
                           "17\r\n" .. OK_BODY:sub(1, 9) } },
       call = { op = "request", opts = BALANCE },
       want = { kind = "protocol", status = 200, retryable = true, maybe_sent = true, attempts = 3 } }

-- One URL rule: what RFC 3986 does not allow in a path or its query is
-- percent-encoded, the same bytes on every wire.
case { name = "a path's query reaches the wire percent-encoded, as query = {} does", prime = true,
       call = { op = "request", opts = { path = "/v1/accounts/balance?x=ab\255\254cd&y=\"<%>\"&z=%41" } },
       want = { ok = true, status = 200, attempts = 1,
                sent_as = { method = "GET", uri = "/v1/accounts/balance?x=ab%FF%FEcd&y=%22%3C%25%3E%22&z=%41" } } }
case { name = "query = {} reaches the wire percent-encoded, after a query written in the path", prime = true,
       call = { op = "request", opts = { path = "/v1/accounts/balance?a=1", query = { b = "x y/é", c = { 1, 2 } } } },
       want = { ok = true, status = 200, attempts = 1,
                sent_as = { uri = "/v1/accounts/balance?a=1&b=x%20y%2F%C3%A9&c=1&c=2" } } }
case { name = "a path's own bytes reach the wire percent-encoded", prime = true,
       call = { op = "request", opts = { path = "/v1/accounts/balance\195\169" } },
       want = { kind = "api", code = "404", status = 404, attempts = 1, retryable = false, maybe_sent = true,
                sent_as = { uri = "/v1/accounts/balance%C3%A9" } } }

-- What the outcome holds that a scenario may ask for.
local function outcome(res, err, events, op, secret)
  local o = { ok = res ~= nil, attempts = 0 }
  for _, ev in ipairs(events) do
    if ev.op == op then o.attempts = o.attempts + 1 end
  end
  if err then
    o.kind, o.status, o.code, o.retryable, o.message = err.kind, err.status, err.code, err.retryable, err.message
    o.maybe_sent, o.retry_after = err.maybe_sent, err.retry_after
  end
  local answer = type(res) == "table" and res or (err and err.response)
  if type(answer) == "table" then
    o.status = answer.status
    if res then o.code = answer.code end
    o.rate_limit = answer.rate_limit or false
  end
  if secret then                              -- the bearer, wherever an answer or an error could echo it
    local texts = { err and tostring(err) or "", err and err.message or "" }
    if type(answer) == "table" then
      texts[#texts + 1] = answer.body
      for _, v in pairs(answer.headers or {}) do texts[#texts + 1] = v end
    end
    local clean, marked = true, false
    for _, s in ipairs(texts) do
      if s:find(secret, 1, true) then clean = false end
      if s:find("[redacted]", 1, true) then marked = true end
    end
    o.redacted = clean and marked
  end
  return o
end

--- Runs a scenario on one driver `d`: `d.make(opts)` makes a client for it
-- from options; `d.step` says the client runs non-blocking (start +
-- step()); `d.store()` makes a store its clients can share; `d.revoke(token)`
-- revokes a token elsewhere; `d.after_prime()` runs once the token is
-- primed (libcurl: its idle connections closed, so the call starts on a
-- fresh one as a cosocket's does). Returns the outcome.
function P.run(c, d)
  local make, step, revoke, after_prime = d.make, d.step, d.revoke, d.after_prime
  local events = {}
  local opts = { retries = 2, timeout = 2, on_event = function(ev) events[#events + 1] = ev end }
  for k, v in pairs(c.client or {}) do opts[k] = v end
  if c.saved then
    opts.token = { access_token = "saved-access-token-0001", expires_at = os.time() + 600, expires_in = 1800 }
  end
  local store = c.pair and d.store() or nil
  if c.broken_store then
    local function down() return nil, "connection refused" end
    store = { get = down, set = down, delete = down, lock = down, unlock = down }
  end
  opts.store = store
  local client = make(opts)
  local tok
  if c.prime then tok = assert(client:token()) end
  local others = {}
  for _ = 2, c.pair and 2 or c.fleet or 1 do
    local o2 = {}
    for k, v in pairs(opts) do o2[k] = v end
    o2.on_event = nil
    others[#others + 1] = make(o2)
    assert(others[#others]:token())
  end
  if c.revoke then assert(revoke(tok)) end
  if after_prime then after_prime() end
  local call = c.call
  local res, err
  local function once(cl)
    if call.op == "issue" then
      if not step then return cl:issue() end
      local r, e
      local busy, serr = cl:start("issue", function(a, b) r, e = a, b end)
      if not busy then return nil, serr end
      while cl:step() do cl:wait(0.05) end
      return r, e
    elseif call.op == "token" then
      if not step then return cl:token() end
      local t, e = cl:token { wait = false }
      while cl:step() do cl:wait(0.05) end
      if not t and e.kind == "pending" then t, e = cl:token { wait = false } end
      return t, e
    end
    if not step then return cl:request(call.opts) end
    local r, e
    local busy, serr = cl:start("request", call.opts, function(a, b) r, e = a, b end)
    if not busy then return nil, serr end
    while cl:step() do cl:wait(0.05) end
    return r, e
  end
  if c.fleet then
    for round = 1, call.times or 1 do            -- the outcome: the first client's first call
      local r, e = once(client)
      if round == 1 then res, err = r, e end
      for _, o in ipairs(others) do once(o) end
    end
  else
    for _ = 1, call.times or 1 do res, err = once(client) end
    for _, o in ipairs(others) do
      local r2, e2 = once(o)
      assert(r2, tostring(e2))
    end
  end
  return outcome(res, err, events, call.op == "token" and "issue" or call.op, tok)
end

return P
