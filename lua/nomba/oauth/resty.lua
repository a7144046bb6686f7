--- The OpenResty transport: nomba.oauth's requests on ngx.socket.tcp, so a
-- worker never blocks on a token request.
--
--    local oauth = require "nomba.oauth"
--    local client = oauth.new {
--      account_id = ..., client_id = ..., client_secret = ...,
--      transport = require "nomba.oauth.resty",          -- cosockets
--      store = oauth.store.shdict(ngx.shared.nomba),     -- one token for all workers
--    }
--
-- TLS: verification is always on (`sslhandshake(session, server_name, true)`);
-- trust comes from nginx's `lua_ssl_trusted_certificate` (and
-- `lua_ssl_verify_depth`), not from the client's `cafile`. Host names other
-- than localhost need nginx's `resolver` directive.
--
-- Connections are kept alive in a pool whose name holds the host, the port,
-- the server name and the verification, so a pooled connection is never
-- reused for another name. Answers may use Content-Length or chunked
-- encoding; `max_response_bytes` caps what is read.
--
-- Cosockets work in the rewrite, access, content, timer and ssl phases; in the
-- others (init, init_worker, set, header/body filters, log) a request fails
-- at once with a `config` error naming the phase and the remedy: renew from a
-- timer with `keep_fresh` and read the shared token.
-- @module nomba.oauth.resty

local ngx = ngx
local core = require "nomba.oauth.core"

local tonumber, tostring, pairs, pcall, type, setmetatable = tonumber, tostring, pairs, pcall, type, setmetatable
local concat, lower, find, fmt = table.concat, string.lower, string.find, string.format
local new_error = core.error

local M = { _VERSION = core._VERSION }

local COSOCKET_PHASES = { rewrite = true, access = true, content = true, timer = true,
                          ssl_cert = true, ssl_session_fetch = true, preread = true }

local POOL_SIZE, KEEPALIVE_MS = 16, 60000

local function parse_url(url)
  local scheme, host, port, path = url:match("^(%a+)://([^/:]+):?(%d*)(.*)$")
  if not scheme then
    local s6, h6, p6, path6 = url:match("^(%a+)://%[([^%]]+)%]:?(%d*)(.*)$")
    scheme, host, port, path = s6, h6, p6, path6
  end
  if not scheme then return nil end
  scheme = lower(scheme)
  port = tonumber(port) or (scheme == "https" and 443 or 80)
  if path == "" then path = "/" end
  return scheme, host, port, path
end

local function fail(kind, op, msg, retryable)
  return nil, new_error(kind, op or "token", msg, { retryable = retryable })
end

-- Reads an answer body of n bytes.
local function read_n(sock, n)
  local body, err = sock:receive(n)
  if not body then return nil, err end
  return body
end

-- Reads a chunked body, up to max bytes.
local function read_chunked(sock, max)
  local parts, total = {}, 0
  while true do
    local line, err = sock:receive("*l")
    if not line then return nil, err end
    local size = tonumber(line:match("^%s*(%x+)"), 16)
    if not size then return nil, "bad chunk size" end
    if size == 0 then
      repeat                                   -- trailers up to the empty line
        line, err = sock:receive("*l")
        if not line then return nil, err end
      until line == ""
      return concat(parts)
    end
    total = total + size
    if total > max then return nil, "too big" end
    local data
    data, err = sock:receive(size)
    if not data then return nil, err end
    parts[#parts + 1] = data
    local crlf
    crlf, err = sock:receive(2)
    if not crlf then return nil, err end
  end
end

--- Carries one request (the transport function of nomba.oauth).
-- @tparam table req `{op, method, url, headers, body, timeout, connect_timeout, max_response_bytes}`
-- @return `{status, headers, body}`, or `nil, err`
function M.request(req)
  local op = req.op
  local phase = ngx.get_phase()
  if not COSOCKET_PHASES[phase] then
    return fail("config", op, "cosockets are not available in the " .. phase .. " phase; get the token " ..
      "in rewrite, access or content, or keep it fresh with require('nomba.oauth.resty').keep_fresh(client)" ..
      " from init_worker_by_lua and read the shared token", false)
  end
  local scheme, host, port, path = parse_url(req.url)
  if not scheme then return fail("config", op, "bad URL", false) end
  local server_name = host
  -- localhost needs no resolver
  local addr = (host == "localhost") and "127.0.0.1" or host
  local verify = scheme == "https"
  local timeout_ms = (req.timeout or 10) * 1000
  local sock = ngx.socket.tcp()
  sock:settimeouts((req.connect_timeout or 5) * 1000, timeout_ms, timeout_ms)
  local pool = fmt("nomba-oauth:%s:%d:%s:%s", addr, port, server_name, verify and "verify" or "plain")
  local ok, err = sock:connect(addr, port, { pool = pool, pool_size = POOL_SIZE })
  if not ok then
    return fail(err == "timeout" and "timeout" or "transport", op, "connect: " .. tostring(err), true)
  end
  if verify and sock:getreusedtimes() == 0 then
    -- Debian's lua-resty-core 0.1.25 can raise here: keep it a typed error
    local called, session, herr = pcall(sock.sslhandshake, sock, nil, server_name, true)
    if not called or not session then
      sock:close()
      local why = called and herr or session
      return fail("tls", op, "TLS handshake: " .. tostring(why or "failed"), false)
    end
  end
  local lines = { fmt("%s %s HTTP/1.1", req.method or "POST", path),
                  "Host: " .. (port == 443 and host or host .. ":" .. port),
                  "Connection: keep-alive",
                  "Content-Length: " .. #(req.body or "") }
  for k, v in pairs(req.headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  lines[#lines + 1] = ""
  lines[#lines + 1] = req.body or ""
  local sent
  sent, err = sock:send(concat(lines, "\r\n"))
  if not sent then
    sock:close()
    return fail(err == "timeout" and "timeout" or "transport", op, "send: " .. tostring(err), true)
  end

  local status_line
  status_line, err = sock:receive("*l")
  if not status_line then
    sock:close()
    return fail(err == "timeout" and "timeout" or "transport", op, "receive: " .. tostring(err), true)
  end
  local status = tonumber(status_line:match("^HTTP/%d%.%d (%d%d%d)"))
  if not status then
    sock:close()
    return fail("protocol", op, "not an HTTP answer", false)
  end
  local headers, max = {}, req.max_response_bytes or 65536
  while true do
    local line
    line, err = sock:receive("*l")
    if not line then
      sock:close()
      return fail(err == "timeout" and "timeout" or "transport", op, "receive: " .. tostring(err), true)
    end
    if line == "" then break end
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if name then headers[lower(name)] = value end
  end
  local body
  local te, cl = headers["transfer-encoding"], tonumber(headers["content-length"] or "")
  if te and find(lower(te), "chunked", 1, true) then
    body, err = read_chunked(sock, max)
  elseif cl then
    if cl > max then
      sock:close()
      return fail("protocol", op, "the answer exceeds max_response_bytes", false)
    end
    if cl == 0 then body = "" else body, err = read_n(sock, cl) end
  else
    body, err = sock:receive("*a")
    if body and #body > max then err, body = "too big", nil end
  end
  if not body then
    sock:close()
    if err == "too big" then return fail("protocol", op, "the answer exceeds max_response_bytes", false) end
    if err == "timeout" then return fail("timeout", op, "receive: timeout", true) end
    return fail("protocol", op, "the answer is truncated (" .. tostring(err) .. ")", true)
  end
  local conn = lower(headers["connection"] or "")
  if conn == "close" or (not cl and not te) then
    sock:close()
  else
    sock:setkeepalive(KEEPALIVE_MS, POOL_SIZE)
  end
  return { status = status, headers = headers, body = body }
end

--- Keeps a client's token fresh from an ngx.timer, so request handlers never
-- wait for a renewal. Call it from init_worker_by_lua; with a shared store
-- every worker runs the timer and one of them renews (under the store's
-- lock) while all read.
-- @param client a nomba.oauth client (with this transport)
-- @tparam[opt] table opts `interval` (seconds, default 1), `on_error`
--   (function(err), called when a renewal fails)
-- @return true, or nil and the error of ngx.timer.every
function M.keep_fresh(client, opts)
  opts = opts or {}
  local interval = opts.interval or 1
  if type(interval) ~= "number" or interval <= 0 then
    error("nomba.oauth.resty.keep_fresh: interval must be a positive number", 2)
  end
  local on_error = opts.on_error
  local function tick(premature)
    if premature then return end
    local tok, err = client:token()
    if not tok and on_error then pcall(on_error, err) end
  end
  local ok, err = ngx.timer.every(interval, tick)
  if not ok then return nil, err end
  ngx.timer.at(0, tick)                         -- and right away
  return true
end

return setmetatable(M, { __call = function(_, req) return M.request(req) end })
