--- The Nomba simulator's request handler; runs inside nginx (LuaJIT).
--
-- Speaks the contract of docs/NOMBA_API.md: the token endpoints
-- (simulator/auth.lua), one protected endpoint, faults (simulator/faults.lua)
-- and signed webhook deliveries (simulator/webhooks.lua). State lives in
-- `lua_shared_dict sim` (simulator/state.lua), so every worker sees the same
-- tokens.
--
-- Control API under /_sim/ (JSON in and out):
--   POST /_sim/reset                 forget tokens, faults, log; settings to defaults
--   POST /_sim/fault   {endpoint=, status=, body=, headers=, delay=, body_delay=,
--                       drop=, truncate=, size=, content_type=, times=, pass=,
--                       echo=, retry_after_in=,
--                       raw = "header_drip" | "body_drip" | "stream" | "text", every=, bytes=,
--                       text=, hold=}
--                      (pass = true: only the delay, then the normal answer;
--                       hold = true: the request waits for /_sim/release first)
--                      (during = s: every request for s seconds, instead of `times`)
--   POST /_sim/revoke_all {client_id=}  revokes every access token of a client (server side)
--   POST /_sim/release {endpoint=}  lets the held requests to an endpoint go on
--   POST /_sim/config  {lifetime=, clock_offset=, code_lifetime=, omit_date=,
--                       expires_in=, one_session=, log=, clients={...}}
--                      (one_session, on by default: a login ends the client's session
--                       before, as Nomba's does; counts sessions_ended when it was in use)
--   POST /_sim/webhook {url=, key=, event_type=, duplicate=, stale=, future=, tamper=, ...}
--                      builds a payment event, signs it as Nomba does and POSTs it
--                      to url (http://127.x.x.x only); answers the event and statuses
--   GET  /_sim/log                   every request seen, oldest first
--   GET  /_sim/counts                requests per endpoint
--   GET  /_sim/state                 the settings in force
-- @module nomba.oauth.simulator.server

local cjson = require "cjson.safe"
local ngx = ngx
local S = require "nomba.oauth.simulator.state"
local handlers = require "nomba.oauth.simulator.auth"
local resources = require "nomba.oauth.simulator.resources"
local faults = require "nomba.oauth.simulator.faults"
local send_webhook = require "nomba.oauth.simulator.webhooks"
local setting, now, fail, store, load, clients = S.setting, S.now, S.fail, S.store, S.load, S.clients

local M = {}

local config          -- from init(): {clients = {...}, settings = {...}}

local ENDPOINTS = {
  ["/v1/auth/token/issue"] = "issue",
  ["/v1/auth/token/refresh"] = "refresh",
  ["/v1/auth/token/revoke"] = "revoke",
  ["/v1/auth/token/authorize"] = "authorize",
  ["/v1/accounts/balance"] = "protected",
  ["/v1/checkout/order"] = "order",
  ["/v1/transactions/accounts"] = "transactions",
}

-- The method each endpoint takes (the token endpoints: POST).
local METHOD = { protected = "GET", order = "POST", transactions = "GET" }
for name, h in pairs(resources) do handlers[name] = h end

-- Control API -------------------------------------------------------------

local function reset()
  for _, k in ipairs(S.dict:get_keys(0)) do
    if k ~= "clients" then S.dict:delete(k) end
  end
  store("clients", config.clients)
  for k, v in pairs(config.settings or {}) do S.dict:set("set:" .. k, v) end
end

local function control(path, body)
  if path == "/_sim/reset" then
    reset()
  elseif path == "/_sim/fault" then
    local ep = body.endpoint or "issue"
    local q = load("faults:" .. ep) or {}
    q[#q + 1] = body
    store("faults:" .. ep, q)
  elseif path == "/_sim/revoke_all" then           -- server-side revocation: every access token of a client
    local n = 0
    for _, k in ipairs(S.dict:get_keys(0)) do
      local t = k:sub(1, 3) == "at:" and load(k)
      if t and t.client_id == body.client_id then
        S.dict:delete(k)
        n = n + 1
      end
    end
    local cur = load("session:" .. tostring(body.client_id))
    if cur then
      cur.exp = 0
      store("session:" .. body.client_id, cur)
    end
    S.dict:incr("count:revoked", n, 0)
  elseif path == "/_sim/release" then
    S.dict:set("release:" .. (body.endpoint or "issue"), true)
  elseif path == "/_sim/clear_faults" then
    for _, ep in pairs(ENDPOINTS) do
      S.dict:delete("faults:" .. ep)
    end
  elseif path == "/_sim/config" then
    for k in pairs(S.DEFAULTS) do
      if body[k] ~= nil then S.dict:set("set:" .. k, body[k]) end
    end
    if body.clients then
      local cs = clients()
      for _, c in ipairs(body.clients) do cs[#cs + 1] = c end
      store("clients", cs)
    end
  elseif path == "/_sim/log" then
    local out = {}
    for i = 1, S.dict:get("log:n") or 0 do
      out[#out + 1] = load("log:" .. i)
    end
    ngx.header["Content-Type"] = "application/json"
    ngx.print(cjson.encode(out))
    return ngx.exit(200)
  elseif path == "/_sim/counts" then
    local out = {}
    for _, k in ipairs(S.dict:get_keys(0)) do
      local name = k:match("^count:(.*)$")
      if name then out[name] = S.dict:get(k) end
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
    for k in pairs(S.DEFAULTS) do out[k] = setting(k) end
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

local TOKEN_ENDPOINTS = { issue = true, refresh = true, revoke = true, authorize = true }

-- Logs a request (setting log: "all", or "auth" for the token endpoints
-- alone, as a long soak wants), and counts it either way.
local function log_request(endpoint, raw)
  if setting("log") ~= "all" and not TOKEN_ENDPOINTS[endpoint] then
    S.dict:incr("count:" .. endpoint, 1, 0)
    return
  end
  local headers = {}
  for k, v in pairs(ngx.req.get_headers(50, true)) do headers[k] = v end
  local n = S.dict:incr("log:n", 1, 0)
  store("log:" .. n, { endpoint = endpoint, method = ngx.req.get_method(), path = ngx.var.uri,
                       uri = ngx.var.request_uri, protocol = ngx.var.server_protocol,
                       headers = headers, body = raw, time = ngx.now(),
                       connection = tonumber(ngx.var.connection) })
  S.dict:incr("count:" .. endpoint, 1, 0)
end

--- Called from init_by_lua with the simulator's configuration.
function M.init(cfg)
  config = cfg
  S.bind()
  reset()
end

--- Called from init_worker_by_lua: seeds this worker's generator.
function M.init_worker()
  S.bind()
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
    log_request("unknown", raw)
    return fail(404, "404", "Not found")
  end
  log_request(endpoint, raw)
  local f = faults.take(endpoint)
  if f and f.hold then faults.hold(endpoint) end
  if f and (f.pass or f.after) then                     -- a delay, then the normal processing
    if f.delay and f.delay > 0 then ngx.sleep(f.delay) end
    ngx.ctx.drop_answer = f.after                       -- after: processed, then no answer
  elseif f then
    return faults.play(f)
  end
  local want = METHOD[endpoint] or "POST"
  if ngx.req.get_method() ~= want then
    return fail(405, "02", "Use " .. want)
  end
  local account = ngx.var.http_accountid
  if not account or account == "" then
    return fail(400, "02", "The accountId header is required")
  end
  local body = {}
  if want == "POST" then
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
