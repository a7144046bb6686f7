--- The Nomba simulator's request handler; runs inside nginx (LuaJIT).
--
-- Speaks the contract of shared/NOMBA_API.md: issue (client credentials and
-- the PKCE authorization_code grant), refresh (which retires the refresh
-- token it was given), revoke, authorize, and one protected endpoint that
-- checks a bearer token. State lives in `lua_shared_dict sim`, so every
-- worker sees the same tokens.
--
-- Control API under /_sim/ (JSON in and out):
--   POST /_sim/reset                 forget tokens, faults, log; settings to defaults
--   POST /_sim/fault   {endpoint=, status=, body=, headers=, delay=, body_delay=,
--                       drop=, truncate=, size=, content_type=, times=, pass=,
--                       raw = "header_drip" | "body_drip" | "stream", every=, bytes=}
--                      (pass = true: only the delay, then the normal answer)
--   POST /_sim/config  {lifetime=, clock_offset=, code_lifetime=, omit_date=,
--                       expires_in=, clients={...}}
--   POST /_sim/webhook {url=, key=, event_type=, duplicate=, stale=, future=, tamper=, ...}
--                      builds a payment event, signs it as Nomba does and POSTs it
--                      to url (http://127.x.x.x only); answers the event and statuses
--   GET  /_sim/log                   every request seen, oldest first
--   GET  /_sim/counts                requests per endpoint
--   GET  /_sim/state                 the settings in force
-- @module nomba.oauth.simulator.server

local cjson = require "cjson.safe"
local ngx = ngx
local ffi = require "ffi"

local M = {}

local dict            -- ngx.shared.sim
local config          -- from init(): {clients = {...}, lifetime = n}

ffi.cdef [[
unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md);
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *md, const void *key, int key_len, const unsigned char *d,
                    size_t n, unsigned char *out, unsigned int *out_len);
]]

local ENDPOINTS = {
  ["/v1/auth/token/issue"] = "issue",
  ["/v1/auth/token/refresh"] = "refresh",
  ["/v1/auth/token/revoke"] = "revoke",
  ["/v1/auth/token/authorize"] = "authorize",
  ["/v1/accounts/balance"] = "protected",
}

local DEFAULTS = { lifetime = 1800, clock_offset = 0, code_lifetime = 60,
                   omit_date = false, expires_in = false, webhook_key = "sim-webhook-key-0001" }

local function setting(name)
  local v = dict:get("set:" .. name)
  if v == nil then return DEFAULTS[name] end
  return v
end

local function now()
  return ngx.now() + setting("clock_offset")
end

local function b64url(s)
  return (ngx.encode_base64(s):gsub("%+", "-"):gsub("/", "_"):gsub("=", ""))
end

local function sha256(s)
  local out = ffi.new("unsigned char[32]")
  ffi.C.SHA256(s, #s, out)
  return ffi.string(out, 32)
end

local ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"

local function random_text(n)
  local t = {}
  for i = 1, n do
    local k = math.random(1, #ALNUM)
    t[i] = ALNUM:sub(k, k)
  end
  return table.concat(t)
end

local function iso(t)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t))
end

local function clients()
  return cjson.decode(dict:get("clients") or "[]") or {}
end

local function find_client(client_id)
  for _, c in ipairs(clients()) do
    if c.client_id == client_id then return c end
  end
end

-- Answers with the server's clock (shifted by clock_offset) in Date.
local function respond(status, obj, extra_headers)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  if not setting("omit_date") then
    ngx.header["Date"] = ngx.http_time(math.floor(now()))
  end
  for k, v in pairs(extra_headers or {}) do ngx.header[k] = v end
  ngx.print(cjson.encode(obj))
  return ngx.exit(status)
end

local function fail(status, code, description, errors)
  return respond(status, { code = code, description = description, errors = errors })
end

local function store(key, value, ttl)
  dict:set(key, cjson.encode(value), ttl and math.max(ttl, 0.001) or 0)
end

local function load(key)
  local v = dict:get(key)
  return v and cjson.decode(v)
end

-- A pair belongs to a session: issue starts one, refresh continues it. An
-- access token record outlives its expiry (a day) because an expired access
-- token is still the bearer a refresh of the same session needs.
local function issue_pair(client, session)
  session = session or random_text(16)
  local lifetime = setting("lifetime")
  local t = now()
  local payload = b64url(cjson.encode({ sub = client.client_id, iat = math.floor(t),
                                        exp = math.floor(t + lifetime), jti = random_text(12) }))
  local access = "eyJhbGciOiJIUzI1NiJ9." .. payload .. "." .. b64url(random_text(64)) ..
                 b64url(random_text(96))
  local refresh = "01h" .. random_text(37)
  store("at:" .. access, { client_id = client.client_id, account_id = client.account_id,
                           exp = t + lifetime, session = session }, lifetime + 86400)
  store("rt:" .. refresh, { client_id = client.client_id, account_id = client.account_id,
                           session = session }, 86400)
  dict:incr("count:issued", 1, 0)
  local data = { businessId = client.business_id, access_token = access, refresh_token = refresh }
  if setting("expires_in") then
    data.expires_in = lifetime
  else
    data.expiresAt = iso(t + lifetime)
  end
  return respond(200, { code = "00", description = "Success", data = data })
end

local function bearer()
  local h = ngx.var.http_authorization
  return h and h:match("^[Bb]earer%s+(%S+)$")
end

local handlers = {}

function handlers.issue(body, account)
  if body.grant_type == "authorization_code" then
    local client = find_client(body.client_id)
    if not client or client.account_id ~= account then
      return fail(401, "01", "Invalid client")
    end
    if type(body.auth_code) ~= "string" or type(body.code_verifier) ~= "string" then
      return fail(400, "02", "auth_code and code_verifier are required")
    end
    local key = "ac:" .. body.auth_code
    local code = load(key)
    if not code then return fail(401, "01", "Invalid or used authorization code") end
    dict:delete(key)                                   -- single use, even on failure
    if code.client_id ~= client.client_id then
      return fail(401, "01", "Authorization code was issued to another client")
    end
    if code.exp < now() then return fail(401, "02", "Authorization code expired") end
    local verifier = body.code_verifier
    local ok
    if not verifier:match("^[%w%-%._~]+$") or #verifier < 43 or #verifier > 128 then
      ok = false
    elseif code.method == "plain" then
      ok = verifier == code.challenge
    else
      ok = b64url(sha256(verifier)) == code.challenge
    end
    if not ok then return fail(401, "01", "code_verifier does not match code_challenge") end
    return issue_pair(client)
  end
  if body.grant_type ~= "client_credentials" then
    return fail(400, "02", "Unsupported grant_type", { "grant_type must be client_credentials" })
  end
  if type(body.client_id) ~= "string" or type(body.client_secret) ~= "string" then
    return fail(400, "02", "client_id and client_secret are required")
  end
  local client = find_client(body.client_id)
  if not client or client.client_secret ~= body.client_secret or client.account_id ~= account then
    return fail(401, "01", "Invalid client credentials")
  end
  return issue_pair(client)
end

function handlers.refresh(body, account)
  if body.grant_type ~= "refresh_token" or type(body.refresh_token) ~= "string" then
    return fail(400, "02", "grant_type refresh_token and refresh_token are required")
  end
  local rt = load("rt:" .. body.refresh_token)
  if not rt or rt.account_id ~= account then
    return fail(401, "401", "Refresh token is invalid, expired or revoked")
  end
  -- as Nomba: the session's access token (expired is fine) is the bearer
  local b = bearer()
  if not b then return fail(401, "401", "Authorization: Bearer <access_token> is required") end
  local at = load("at:" .. b)
  if not at or at.session ~= rt.session then
    return fail(401, "401", "The bearer token does not belong to this session")
  end
  dict:delete("rt:" .. body.refresh_token)             -- retired on use
  local client = find_client(rt.client_id)
  if not client then return fail(401, "401", "Unknown client") end
  return issue_pair(client, rt.session)
end

function handlers.revoke(body, account)
  if type(body.clientId) ~= "string" or type(body.access_token) ~= "string" then
    return fail(400, "02", "clientId and access_token are required")
  end
  local client = find_client(body.clientId)
  if not client or client.account_id ~= account then
    return fail(401, "01", "Invalid client")
  end
  local at = load("at:" .. body.access_token)
  if at and at.client_id ~= client.client_id then
    return fail(403, "05", "Token belongs to another client")
  end
  dict:delete("at:" .. body.access_token)
  dict:incr("count:revoked", 1, 0)
  return respond(200, { code = "00", description = "Token revoked successfully" })
end

function handlers.authorize(body, account)
  local client = find_client(body.client_id)
  if not client or client.account_id ~= account then
    return fail(401, "01", "Invalid client")
  end
  local method = body.code_challenge_method or "S256"
  if method ~= "S256" and method ~= "plain" then
    return fail(400, "02", "Unsupported code_challenge_method")
  end
  local ch = body.code_challenge
  if type(ch) ~= "string" or (method == "S256" and not ch:match("^[%w%-_]+$")) or
     (method == "S256" and #ch ~= 43) then
    return fail(400, "02", "Invalid code_challenge")
  end
  local code = random_text(32)
  local life = setting("code_lifetime")
  store("ac:" .. code, { client_id = client.client_id, challenge = ch, method = method,
                         exp = now() + life, redirect_uri = body.redirect_uri }, life + 60)
  return respond(200, { code = "00", description = "Success",
                        data = { auth_code = code, state = body.state } })
end

function handlers.protected(_, account)
  local b = bearer()
  local at = b and load("at:" .. b)
  if not at or at.exp <= now() or at.account_id ~= account then
    return fail(401, "401", "Unauthorized")
  end
  return respond(200, { code = "00", description = "Success",
                        data = { balance = "1000.00", currency = "NGN" } })
end

-- Faults ---------------------------------------------------------------

local function take_fault(endpoint)
  local key = "faults:" .. endpoint
  local q = load(key)
  if not q or #q == 0 then return nil end
  local f = q[1]
  f.times = (f.times or 1) - 1
  if f.times <= 0 then table.remove(q, 1) end
  store(key, q)
  return f
end

-- A hostile answer written straight to the connection (the raw request
-- socket), each bounded to RAW_CAP seconds on the server's side:
--   header_drip  a status line, then a header line every `every` s, never the end
--   body_drip    Content-Length 1000, then one byte every `every` s
--   stream       no Content-Length: `bytes` (default 300 MB) in 64 KiB pieces, then close
local RAW_CAP = 20

local function play_raw(f)
  local sock, err = ngx.req.socket(true)
  if not sock then
    ngx.log(ngx.ERR, "raw socket: ", err)
    return ngx.exit(500)
  end
  local every, t0 = f.every or 0.2, ngx.now()
  local head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
  if f.raw == "header_drip" then
    local ok = sock:send(head)
    while ok and ngx.now() - t0 < RAW_CAP do
      ngx.sleep(every)
      ok = sock:send("X-Drip: dddddddddddddddd\r\n")
    end
  elseif f.raw == "body_drip" then
    local ok = sock:send(head .. "Content-Length: 1000\r\n\r\n{")
    while ok and ngx.now() - t0 < RAW_CAP do
      ngx.sleep(every)
      ok = sock:send(" ")
    end
  elseif f.raw == "stream" then
    local piece, sent, total = string.rep("x", 65536), 0, f.bytes or 300 * 1024 * 1024
    local ok = sock:send(head .. "Connection: close\r\n\r\n")
    while ok and sent < total and ngx.now() - t0 < RAW_CAP do
      ok = sock:send(piece)
      sent = sent + #piece
    end
  end
  return ngx.exit(444)
end

local function play_fault(f)
  if f.delay and f.delay > 0 then ngx.sleep(f.delay) end
  if f.drop then return ngx.exit(444) end              -- close without answering
  if f.raw then return play_raw(f) end
  local body = f.body
  if type(body) == "table" then body = cjson.encode(body) end
  body = body or ""
  if f.size then body = '{"code":"00","pad":"' .. string.rep("x", f.size) .. '"}' end
  ngx.status = f.status or 500
  ngx.header["Content-Type"] = f.content_type or "application/json"
  if not setting("omit_date") then
    ngx.header["Date"] = ngx.http_time(math.floor(now()))
  end
  for k, v in pairs(f.headers or {}) do ngx.header[k] = v end
  if f.truncate then
    ngx.header["Content-Length"] = #body + 100
    ngx.print(body)
    ngx.flush(true)
    return ngx.exit(ngx.ERROR)                          -- hang up mid-body
  end
  if f.body_delay and f.body_delay > 0 then
    local half = math.floor(#body / 2)
    ngx.header["Content-Length"] = #body
    ngx.print(body:sub(1, half))
    ngx.flush(true)
    ngx.sleep(f.body_delay)
    ngx.print(body:sub(half + 1))
    return ngx.exit(ngx.status)
  end
  ngx.print(body)
  return ngx.exit(ngx.status)
end

-- Webhooks ---------------------------------------------------------------
-- Nomba's signing, written here apart from the library's (the simulator
-- must not share code with what it tests): HMAC-SHA256 through libcrypto,
-- base64 by nginx.

local function hmac_b64(key, msg)
  local out, n = ffi.new("unsigned char[32]"), ffi.new("unsigned int[1]")
  ffi.C.HMAC(ffi.C.EVP_sha256(), key, #key, msg, #msg, out, n)
  return ngx.encode_base64(ffi.string(out, 32))
end

local function signed_message(e, ts)
  local d = type(e.data) == "table" and e.data or {}
  local m = type(d.merchant) == "table" and d.merchant or {}
  local t = type(d.transaction) == "table" and d.transaction or {}
  local function s(v) return v == nil and "" or tostring(v) end
  return table.concat({ s(e.event_type), s(e.requestId), s(m.userId), s(m.walletId), s(t.transactionId),
                        s(t.type), s(t.time), s(t.responseCode), ts }, ":")
end

-- A realistic event of Nomba's payload shape.
local function make_event(body)
  local t = now()
  local kind = body.event_type or "payment_success"
  return {
    event_type = kind,
    requestId = body.request_id or (random_text(8) .. "-" .. random_text(4) .. "-" .. random_text(12)),
    data = {
      merchant = { userId = body.user_id or "3f1c2d4e-user", walletId = body.wallet_id or "wallet-" .. random_text(8),
                   walletBalance = 25000.5 },
      terminal = {},
      transaction = {
        transactionId = body.transaction_id or ("API-VACT_TRA-" .. random_text(10):upper()),
        type = body.transaction_type or "vact_transfer",
        time = iso(t), responseCode = body.response_code or "",
        transactionAmount = body.amount or 1500, fee = 15, sessionId = random_text(20),
        originatingFrom = "api", merchantTxRef = body.merchant_ref or random_text(10),
      },
      customer = { senderName = "Ada Lovelace", bankName = "Sim Bank", accountNumber = "0123456789" },
      order = { amount = body.amount or 1500, currency = "NGN", orderReference = random_text(12) },
    },
  }
end

-- POSTs one delivery to a plain-http loopback URL; returns the status.
local function deliver(url, headers, payload)
  local host, port, path = url:match("^http://([%d%.]+):(%d+)(/.*)$")
  if not host or not host:match("^127%.") then return nil, "url must be http://127.x.x.x:PORT/path" end
  local sock = ngx.socket.tcp()
  sock:settimeout(5000)
  local ok, err = sock:connect(host, tonumber(port))
  if not ok then return nil, err end
  local lines = { "POST " .. path .. " HTTP/1.1", "Host: " .. host .. ":" .. port, "Connection: close",
                  "Content-Type: application/json", "Content-Length: " .. #payload }
  for k, v in pairs(headers) do lines[#lines + 1] = k .. ": " .. v end
  lines[#lines + 1] = ""
  lines[#lines + 1] = payload
  ok, err = sock:send(table.concat(lines, "\r\n"))
  if not ok then return nil, err end
  local status_line = sock:receive("*l")
  sock:close()
  return tonumber(status_line and status_line:match("^HTTP/%d%.%d (%d+)"))
end

-- /_sim/webhook {url, key, event_type, duplicate, stale, future, tamper, ...}
local function send_webhook(body)
  local key = body.key or setting("webhook_key")
  if type(body.url) ~= "string" or type(key) ~= "string" then
    return { error = "url and key (or config webhook_key) are required" }
  end
  local event = make_event(body)
  local t = now() + (body.stale and -3600 or 0) + (body.future and 3600 or 0)
  local ts = iso(t)
  local sig = hmac_b64(key, signed_message(event, ts))
  if body.tamper then event.data.transaction.transactionId = event.data.transaction.transactionId .. "X" end
  local payload = cjson.encode(event)
  local headers = { ["nomba-signature"] = sig, ["nomba-sig-value"] = sig, ["nomba-timestamp"] = ts,
                    ["nomba-signature-algorithm"] = "HmacSHA256", ["nomba-signature-version"] = "1.0.0" }
  local out = { event = event, statuses = {} }
  for i = 1, body.duplicate and 2 or 1 do
    out.statuses[i] = deliver(body.url, headers, payload) or 0
  end
  return out
end

-- Control API -------------------------------------------------------------

local function reset()
  for _, k in ipairs(dict:get_keys(0)) do
    if k ~= "clients" then dict:delete(k) end
  end
  store("clients", config.clients)
  for k, v in pairs(config.settings or {}) do dict:set("set:" .. k, v) end
end

local function control(path, body)
  if path == "/_sim/reset" then
    reset()
  elseif path == "/_sim/fault" then
    local ep = body.endpoint or "issue"
    local q = load("faults:" .. ep) or {}
    q[#q + 1] = body
    store("faults:" .. ep, q)
  elseif path == "/_sim/clear_faults" then
    for ep in pairs({ issue = 1, refresh = 1, revoke = 1, authorize = 1, protected = 1 }) do
      dict:delete("faults:" .. ep)
    end
  elseif path == "/_sim/config" then
    for k in pairs(DEFAULTS) do
      if body[k] ~= nil then dict:set("set:" .. k, body[k]) end
    end
    if body.clients then
      local cs = clients()
      for _, c in ipairs(body.clients) do cs[#cs + 1] = c end
      store("clients", cs)
    end
  elseif path == "/_sim/log" then
    local out = {}
    for i = 1, dict:get("log:n") or 0 do
      out[#out + 1] = load("log:" .. i)
    end
    ngx.header["Content-Type"] = "application/json"
    ngx.print(cjson.encode(out))
    return ngx.exit(200)
  elseif path == "/_sim/counts" then
    local out = {}
    for _, k in ipairs(dict:get_keys(0)) do
      local name = k:match("^count:(.*)$")
      if name then out[name] = dict:get(k) end
    end
    ngx.header["Content-Type"] = "application/json"
    ngx.print(cjson.encode(out))
    return ngx.exit(200)
  elseif path == "/_sim/webhook" then
    ngx.header["Content-Type"] = "application/json"
    ngx.print(cjson.encode(send_webhook(body)))
    return ngx.exit(200)
  elseif path == "/_sim/state" then
    local out = {}
    for k in pairs(DEFAULTS) do out[k] = setting(k) end
    out.now = now()
    ngx.header["Content-Type"] = "application/json"
    ngx.print(cjson.encode(out))
    return ngx.exit(200)
  else
    ngx.status = 404
    ngx.print('{"error":"unknown control path"}')
    return ngx.exit(404)
  end
  ngx.header["Content-Type"] = "application/json"
  ngx.print('{"ok":true}')
  return ngx.exit(200)
end

local function log_request(endpoint, raw)
  local headers = {}
  for k, v in pairs(ngx.req.get_headers(50, true)) do headers[k] = v end
  local n = dict:incr("log:n", 1, 0)
  store("log:" .. n, { endpoint = endpoint, method = ngx.req.get_method(), path = ngx.var.uri,
                       headers = headers, body = raw, time = ngx.now(),
                       connection = tonumber(ngx.var.connection) })
  dict:incr("count:" .. endpoint, 1, 0)
end

--- Called from init_by_lua with the simulator's configuration.
function M.init(cfg)
  config = cfg
  dict = ngx.shared.sim
  reset()
end

--- Called from init_worker_by_lua: seeds this worker's generator.
function M.init_worker()
  dict = ngx.shared.sim
  math.randomseed(ngx.worker.pid() * 1000003 + math.floor(ngx.now() * 1000))
end

--- content_by_lua: serves one request.
function M.handle()
  local path = ngx.var.uri
  ngx.req.read_body()
  local raw = ngx.req.get_body_data() or ""
  if path:sub(1, 6) == "/_sim/" then
    return control(path, cjson.decode(raw) or {})
  end
  local endpoint = ENDPOINTS[path]
  if not endpoint then
    return fail(404, "404", "Not found")
  end
  log_request(endpoint, raw)
  local f = take_fault(endpoint)
  if f and f.pass then                                  -- only a delay, then a normal answer
    if f.delay and f.delay > 0 then ngx.sleep(f.delay) end
  elseif f then
    return play_fault(f)
  end
  if endpoint ~= "protected" and ngx.req.get_method() ~= "POST" then
    return fail(405, "02", "Use POST")
  end
  local account = ngx.var.http_accountid
  if not account or account == "" then
    return fail(400, "02", "The accountId header is required")
  end
  local body = {}
  if endpoint ~= "protected" then
    local ctype = ngx.var.http_content_type or ""
    if not ctype:find("application/json", 1, true) then
      return fail(400, "02", "Content-Type must be application/json")
    end
    body = cjson.decode(raw)
    if type(body) ~= "table" then
      return fail(400, "02", "The body must be a JSON object")
    end
  end
  return handlers[endpoint](body, account)
end

return M
