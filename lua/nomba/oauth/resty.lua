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
-- Bounds: one deadline (`timeout`) covers resolving, connecting, TLS,
-- sending and every read; resolving a name runs in a light thread that is
-- killed at the deadline, since nginx's resolver waits for its own
-- `resolver_timeout`. Answers are read in pieces: headers are capped at
-- 32 KiB, a body is refused as soon as it passes `max_response_bytes`
-- (Content-Length, chunked, or up to the close). The URL is the one
-- libcurl's parser sees (`core.url`). The client's `proxy` option, an
-- http:// URL, makes every connection a CONNECT tunnel through that proxy
-- (as lua-resty-http's `https_proxy`), TLS verified end to end for Nomba's
-- name; no proxy variable of the environment is ever read (`"env"` is
-- refused here).
--
-- Connections are kept alive in a pool whose name holds the host, the port
-- and the verification, so a pooled connection is never reused for another
-- name.
--
-- Cosockets work in the rewrite, access, content, timer and ssl phases; in the
-- others (init, init_worker, set, header/body filters, log) a request fails
-- at once with a `config` error naming the phase and the remedy: renew from a
-- timer with `keep_fresh` and read the shared token.
-- @module nomba.oauth.resty

local ngx = ngx
local core = require "nomba.oauth.core"
local platform = require "nomba.oauth.platform"
local DEFAULTS = require("nomba.oauth.options").DEFAULTS

local tostring, pairs, pcall, type, setmetatable = tostring, pairs, pcall, type, setmetatable
local concat, find, fmt = table.concat, string.find, string.format
local new_frame = core.frame

local M = { _VERSION = core._VERSION }

local POOL_SIZE, KEEPALIVE_MS = DEFAULTS.resty.pool_size, DEFAULTS.resty.keepalive_ms

-- A failure, as a raw outcome the C core makes the error of (outcome.c):
-- `sent` false when no byte of the request left, which lets the machine
-- send a payment again, as libcurl's driver does.
local function fail(outcome, msg, sent, status)
  return nil, { outcome = outcome, message = msg, sent = sent, status = status }
end

local PIECE = 16384                     -- bytes read at a time

-- Seconds of the nginx clock, fresh.
local function now()
  ngx.update_time()
  return ngx.now()
end

-- Sets the socket's timeout to what is left of the deadline; false when
-- nothing is left.
local function bound(sock, deadline)
  local left = deadline - now()
  if left <= 0 then return false end
  sock:settimeout(math.max(1, math.floor(left * 1000)))
  return true
end

-- A host libcurl would not resolve through DNS.
local function literal(host)
  return host == "localhost" or host:match("^%d+%.%d+%.%d+%.%d+$") ~= nil or host:sub(1, 1) == "["
end

-- URLs as libcurl's parser sees them, remembered: a client calls the same
-- few URLs again and again (at most URL_CACHE of them, then it starts over).
local URL_CACHE, urls, nurls = 64, {}, 0
local function parsed(url)
  local u = urls[url]
  if u then return u end
  local why
  u, why = core.url(url)
  if not u then return nil, why end
  local verify = u.scheme == "https"             -- what each request to it needs, made once
  u.pool = fmt("nomba-oauth:%s:%d:%s", u.host, u.port, verify and "verify" or "plain")
  u.host_line = "Host: " .. ((u.port == 443 and verify) and u.host or u.host .. ":" .. u.port)
  u.literal = literal(u.host)
  if nurls >= URL_CACHE then urls, nurls = {}, 0 end
  urls[url], nurls = u, nurls + 1
  return u
end

-- Connects within the deadline. nginx's resolver waits for its own
-- resolver_timeout (30 s by default), so a name is resolved in a light
-- thread that is killed when the deadline passes.
local function connect(sock, u, opts, deadline)
  local host, port = u.host, u.port
  if not bound(sock, deadline) then return nil, "timeout" end
  if u.literal then
    return sock:connect(host == "localhost" and "127.0.0.1" or host, port, opts)
  end
  local ok, th = pcall(ngx.thread.spawn, function() return sock:connect(host, port, opts) end)
  if not ok then return sock:connect(host, port, opts) end      -- a phase without light threads
  local timer = ngx.thread.spawn(function()
    ngx.sleep(math.max(0.001, deadline - now()))
    return "deadline"
  end)
  local _, a, b = ngx.thread.wait(th, timer)
  ngx.thread.kill(th)
  ngx.thread.kill(timer)
  if a == "deadline" then return nil, "timeout", " (resolving " .. host .. ")" end
  return a, b
end

-- A cosocket's error: "timeout" is its word for the time running out.
local function io_fail(outcome, what, err, sent, detail)
  return fail(err == "timeout" and "timeout" or outcome, what .. ": " .. tostring(err) .. (detail or ""), sent)
end

-- The proxy of a request: its parts (and the pool of tunnels through it to
-- the request's host), or nil and a config failure.
local proxies = {}
local function proxy_of(proxy, u)
  local p = proxies[proxy]
  if not p then
    if proxy == "env" then
      return nil, select(2, fail("config", "the OpenResty transport reads no proxy variables: give the " ..
        "proxy's URL as the proxy option", false))
    end
    local why
    p, why = core.url(proxy, "proxy")
    if not p then return nil, select(2, fail("config", "proxy " .. tostring(why), false)) end
    p.literal = literal(p.host)
    proxies[proxy] = p
  end
  return p, fmt("%s via %s:%d", u.pool, p.host, p.port)
end

-- Through a proxy: asks it for a tunnel to the request's host (CONNECT),
-- within the deadline. True, or nil and the failure (the request never left).
local function tunnel(sock, u, deadline)
  local target = u.host:find(":", 1, true) and not u.host:find("^%[") and ("[" .. u.host .. "]") or u.host
  target = target .. ":" .. u.port
  if not bound(sock, deadline) then return fail("timeout", "proxy CONNECT: timeout", false) end
  local ok, err = sock:send("CONNECT " .. target .. " HTTP/1.1\r\nHost: " .. target .. "\r\n\r\n")
  if not ok then return io_fail("proxy", "proxy CONNECT", err, false) end
  local status, total = nil, 0
  while true do                                 -- the status line, then header lines up to the empty one
    if not bound(sock, deadline) then return fail("timeout", "proxy CONNECT: timeout", false) end
    local line, rerr = sock:receive("*l")
    if not line then return io_fail("proxy", "proxy CONNECT", rerr, false) end
    total = total + #line + 2
    if total > 8192 then return fail("proxy", "proxy CONNECT: an answer over 8 KiB", false) end
    if not status then
      status = tonumber(line:match("^HTTP/1%.[01] (%d%d%d)"))
      if not status then return fail("proxy", "proxy CONNECT: not an HTTP answer", false) end
    elseif line == "" then
      break
    end
  end
  if status == 407 then
    return fail("config", "proxy CONNECT: the proxy asks for authentication (407), which this " ..
      "transport does not send", false)
  end
  if status < 200 or status > 299 then
    return fail("proxy", ("proxy CONNECT: the proxy answered %d"):format(status), false)
  end
  return true
end

-- A connected (and, for https, TLS-verified) socket for the request's
-- host, within the deadlines; or nil and the failure. Through a proxy: a
-- tunnel to the host, in a pool of its own.
local function open(u, deadline, connect_deadline, proxy)
  local host, verify = u.host, u.scheme == "https"
  local sock = ngx.socket.tcp()
  local via, pool = nil, u.pool
  if proxy then
    local p, perr = proxy_of(proxy, u)
    if not p then return nil, perr end
    via, pool = p, perr
  end
  local ok, err, detail = connect(sock, via or u, { pool = pool, pool_size = POOL_SIZE }, connect_deadline)
  if not ok then
    sock:close()
    if type(err) == "string" and err:find("no resolver defined", 1, true) then
      return fail("config", "nginx has no resolver for " .. host .. ": add a `resolver` directive " ..
        "to the http block (the nameserver of /etc/resolv.conf, e.g. `resolver 127.0.0.53 ipv6=off;`)", false)
    end
    local outcome = (type(err) == "string" and err:find("could not be resolved", 1, true)) and "resolve" or "refused"
    return io_fail(outcome, via and "connect to the proxy" or "connect", err, false, detail)
  end
  if via and sock:getreusedtimes() == 0 then
    local tok, terr = tunnel(sock, u, connect_deadline)
    if not tok then
      sock:close()
      return nil, terr
    end
  end
  if verify and sock:getreusedtimes() == 0 then
    if not bound(sock, deadline) then
      sock:close()
      return fail("timeout", "TLS handshake: timeout", false)
    end
    -- Debian's lua-resty-core 0.1.25 can raise here: keep it a failure
    local called, session, herr = pcall(sock.sslhandshake, sock, nil, host, true)
    if not called or not session then
      sock:close()
      local e = called and herr or session
      return io_fail("tls", "TLS handshake", e or "failed", false)
    end
  end
  return sock
end

-- The request's bytes: request line, headers, body.
local function encode(req, u)
  local path = u.path
  local q = find(req.url, "?", 1, true)
  if q then path = path .. req.url:sub(q) end
  local lines = { fmt("%s %s HTTP/1.1", req.method or "POST", path), u.host_line,
                  "Connection: keep-alive",
                  "Content-Length: " .. #(req.body or "") }
  for k, v in pairs(req.headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  lines[#lines + 1] = ""
  lines[#lines + 1] = req.body or ""
  return concat(lines, "\r\n")
end

-- Reads the answer into a frame (core.frame: the one framing rule, in C),
-- a piece at a time within the deadline; the socket goes back to the pool
-- when it can carry another request. The frame, or nil and the failure.
local function receive(sock, deadline, method, max)
  local fr = new_frame(method, max)
  while true do
    if not bound(sock, deadline) then
      sock:close()
      return fail("timeout", "receive: timeout", true, fr:status())
    end
    local data, err = sock:receiveany(PIECE)
    local done, outcome, msg, status
    if data then
      done, outcome, msg, status = fr:feed(data)
    elseif err == "timeout" then
      sock:close()
      return fail("timeout", "receive: timeout", true, fr:status())
    else
      done, outcome, msg, status = fr:finish(err ~= "closed")
    end
    if done == nil then
      sock:close()
      return fail(outcome, msg, true, status)
    end
    if done then break end
  end
  if fr:reusable() then
    sock:setkeepalive(KEEPALIVE_MS, POOL_SIZE)
  else
    sock:close()
  end
  return fr
end

--- Carries one request (the transport function of nomba.oauth). One
-- deadline, `timeout` seconds, bounds the whole attempt: resolving,
-- connecting, TLS, sending and every read.
-- @tparam table req `{op, method, url, headers, body, timeout, connect_timeout, max_response_bytes}`
-- @return the answer as a frame (core.frame), read by the C core as
--   libcurl's answers are, or `nil` and the failure (a raw outcome the
--   C core makes the error of)
function M.request(req)
  local may, phase = platform.cosockets()
  if not may then
    return fail("config", "cosockets are not available in the " .. phase .. " phase; get the token " ..
      "in rewrite, access or content, or keep it fresh with require('nomba.oauth.resty').keep_fresh(client)" ..
      " from init_worker_by_lua and read the shared token", false)
  end
  -- the URL as libcurl's parser sees it (the same judgement as oauth.new)
  local url = req.url
  local q = find(url, "?", 1, true)
  local u, why = parsed(q and url:sub(1, q - 1) or url)     -- the query goes as it is (request.lua's URL rule)
  if not u then return fail("config", "bad URL: " .. tostring(why), false) end
  local deadline = now() + (req.timeout or DEFAULTS.timeout)
  local connect_deadline = math.min(deadline, now() + (req.connect_timeout or DEFAULTS.connect_timeout))
  local sock, err = open(u, deadline, connect_deadline, req.proxy)
  if not sock then return nil, err end
  if not bound(sock, deadline) then            -- nothing of the request left
    sock:close()
    return fail("timeout", "send: timeout", false)
  end
  local sent
  sent, err = sock:send(encode(req, u))
  if not sent then
    sock:close()
    return io_fail("send", "send", err, true)
  end
  return receive(sock, deadline, req.method, req.max_response_bytes or DEFAULTS.max_response_bytes)
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
  local interval = opts.interval or DEFAULTS.resty.keep_fresh_interval
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

--- Feeds every client of this worker into nginx-lua-prometheus (the
-- `prometheus` module of knyar/nginx-lua-prometheus, which adds the workers
-- up in its shared dict): the counters of `oauth.metrics()` as counters
-- (`nomba_oauth_issues_total`, ...), incremented by what each client did
-- since the last sync, and `nomba_oauth_token_expires_in_seconds` as a
-- gauge, labelled `account_id` and `client_id`. Call it from
-- init_worker_by_lua with the instance `require("prometheus").init(dict)`
-- made there; the `/metrics` location then calls its `collect()`.
-- @param prometheus the nginx-lua-prometheus instance
-- @tparam[opt] table opts `interval` (seconds between syncs, default 1)
-- @treturn function sync, to call before `collect()` for figures to the moment
function M.prometheus(prometheus, opts)
  if type(prometheus) ~= "table" or type(prometheus.counter) ~= "function" or
     type(prometheus.gauge) ~= "function" then
    error("nomba.oauth.resty.prometheus: bad argument #1 (an nginx-lua-prometheus instance expected)", 2)
  end
  opts = opts or {}
  local interval = opts.interval or DEFAULTS.resty.keep_fresh_interval
  if type(interval) ~= "number" or interval <= 0 then
    error("nomba.oauth.resty.prometheus: interval must be a positive number", 2)
  end
  local metrics = require "nomba.oauth.metrics"
  local labels = { "account_id", "client_id" }
  local counters = {}
  for _, c in ipairs(metrics.COUNTERS) do
    counters[c[1]] = prometheus:counter("nomba_oauth_" .. c[1] .. "_total", c[2], labels)
  end
  local expires = prometheus:gauge("nomba_oauth_token_expires_in_seconds",
                                   "seconds the freshest kept token has left (0: none)", labels)
  local pushed = setmetatable({}, { __mode = "k" })     -- per client: the counts already fed in
  local function sync()
    local freshest = {}
    for client, st in metrics.each() do
      if not core.closed(client) then
        local l = { tostring(st.account_id), tostring(st.client_id) }
        local seen = pushed[client]
        if not seen then
          seen = {}
          pushed[client] = seen
        end
        for name, metric in pairs(counters) do
          local n = st.counts and st.counts[name] or 0
          local d = n - (seen[name] or 0)
          if d > 0 then
            metric:inc(d, l)
            seen[name] = n
          end
        end
        local key = l[1] .. "\0" .. l[2]
        local left = core.remaining(client)
        if not freshest[key] or left > freshest[key][1] then freshest[key] = { left, l } end
      end
    end
    for _, f in pairs(freshest) do expires:set(math.floor(f[1]), f[2]) end
  end
  local ok, err = ngx.timer.every(interval, function(premature) if not premature then sync() end end)
  if not ok then error("nomba.oauth.resty.prometheus: " .. tostring(err), 2) end
  return sync
end

-- The raw body of the request being served: in memory, or from the file
-- nginx buffered it to; nil when it is larger than max.
local function raw_body(max)
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if body then return #body <= max and body or nil end
  local path = ngx.req.get_body_file()
  if not path then return "" end
  local f = io.open(path, "rb")
  if not f then return nil end
  body = f:read(max + 1)
  f:close()
  if body and #body > max then return nil end
  return body or ""
end

local function answer(status, t)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.say(require("cjson.safe").encode(t))
  return ngx.exit(status)
end

--- Receives a Nomba webhook in a content handler: reads the raw body
-- (also when nginx buffered it to a file), verifies it, grants each
-- `requestId` exactly once across everything that shares `store` (a claim
-- while `handler(event)` runs, then a mark that it was processed), and
-- answers itself:
--   200  processed, or a duplicate of one processed;
--   400  a body that is not a JSON event, or a requestId that cannot be a key;
--   401  verification failed (the reason is in the body);
--   413  a body over `max_body`;
--   503  another worker or host is processing this event now (with
--        Retry-After): Nomba delivers it again later;
--   500  the store failed, or the handler raised or returned false: the
--        claim is let go, so Nomba's next delivery is processed.
-- A worker killed inside the handler leaves its claim to expire after
-- `lease` seconds; the next delivery is then processed.
-- @tparam table opts `key` (the signature key), `handler` (function(event)),
--   `store` (required, unless `dedupe = false`), `ttl` (seconds a processed
--   requestId is remembered, default 86400, never less than `max_age`),
--   `lease` (seconds a claim holds while the handler runs, default 60),
--   `max_age` (default 7200: Nomba's retries carry the first send's
--   timestamp), `max_skew` (default 300), `max_body` (bytes, default 1 MiB)
function M.webhook(opts)
  local webhook = require "nomba.oauth.webhook"
  local W = DEFAULTS.webhook
  if type(opts) ~= "table" or type(opts.handler) ~= "function" then
    error("nomba.oauth.resty.webhook: opts.handler must be a function", 2)
  end
  local store, dedupe = opts.store, opts.dedupe ~= false
  if dedupe and store == nil then
    error("nomba.oauth.resty.webhook: opts.store is required to grant each event once " ..
          "(Nomba delivers events more than once); give dedupe = false to go without", 2)
  end
  local max_age, ttl = opts.max_age or W.max_age, opts.ttl or W.dedupe_ttl
  if dedupe and type(ttl) == "number" and type(max_age) == "number" and ttl < max_age then
    error("nomba.oauth.resty.webhook: opts.ttl must be at least max_age: a delivery replayed inside " ..
          "the window after its requestId was forgotten would be granted again", 2)
  end
  local max = opts.max_body or W.max_body
  local body = raw_body(max)
  if not body then return answer(413, { error = "too_large" }) end
  local event, err = webhook.verify { key = opts.key, body = body, headers = ngx.req.get_headers(100),
                                      max_age = max_age, max_skew = opts.max_skew }
  if not event then return answer(err.reason == "bad_json" and 400 or 401, { error = err.reason }) end
  local id = event.requestId
  if dedupe then
    local state, cerr = webhook.claim(store, id, opts.lease)
    if not state then
      if cerr.reason == "bad_request_id" then return answer(400, { error = "bad_request_id" }) end
      ngx.log(ngx.ERR, "nomba.oauth webhook: ", tostring(cerr))
      return answer(500, { error = "store" })
    end
    if state == "done" then return answer(200, { ok = true, duplicate = true }) end
    if state == "held" then
      ngx.header["Retry-After"] = tostring(opts.lease or W.lease)
      return answer(503, { error = "in_progress" })
    end
  end
  local ok, res = pcall(opts.handler, event)
  if not ok or res == false then
    if not ok then ngx.log(ngx.ERR, "nomba.oauth webhook handler: ", tostring(res)) end
    if dedupe then webhook.release(store, id) end
    return answer(500, { error = "handler" })
  end
  if dedupe then
    local done, derr = webhook.done(store, id, ttl)
    if not done then
      -- granted, but the store did not take the mark (Redis restarting, say):
      -- the claim still holds the event for its lease; the mark is tried
      -- again from a timer until it lands or the lease would be over, since
      -- an event whose claim lapsed unmarked would be granted again
      ngx.log(ngx.ERR, "nomba.oauth webhook: processed, but not marked yet (trying again): ", tostring(derr))
      local until_t, wait = now() + (opts.lease or W.lease), 0.1
      local function again(premature)
        if premature then return end
        if webhook.done(store, id, ttl) then return end
        wait = math.min(wait * 2, 2)
        if now() + wait < until_t then ngx.timer.at(wait, again)
        else ngx.log(ngx.ERR, "nomba.oauth webhook: ", id, " was processed but could not be marked done") end
      end
      ngx.timer.at(wait, again)
    end
  end
  return answer(200, { ok = true })
end

return setmetatable(M, { __call = function(_, req) return M.request(req) end })
