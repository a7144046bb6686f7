--- The methods of a client (metatable `nomba.oauth.Client`): the
-- operations, and the non-blocking mode's step, wait, start and sockets.
-- `token`, `headers` (nomba.oauth.token), `invalidate` and `close` (C) are
-- the others. Each method checks its arguments (a misuse raises, naming
-- the argument) and hands the operation to the machine.
-- @module nomba.oauth

--- A client's methods.
-- (Continued from nomba/oauth.lua: one section.)
-- @section methods
local core = require "nomba.oauth.core"
local platform = require "nomba.oauth.platform"
local machine = require "nomba.oauth.machine"
require "nomba.oauth.renewal"                    -- sets machine.idle: a step starts a due renewal
local wire = require "nomba.oauth.wire"
local request = require "nomba.oauth.request"
local metrics = require "nomba.oauth.metrics"

local type, error, ipairs = type, error, ipairs
local math_max, math_floor = math.max, math.floor
local state_of, new_error, now = core.state, core.error, platform.now

local Client = core.methods

local function check_client(self, method)
  if not core.is_client(self) then
    error("nomba.oauth: bad self to '" .. method .. "' (use client:" .. method .. "(...))", 3)
  end
  return state_of(self)
end

local function run(self, st, op, args)
  return machine.run(self, st, machine.op(op, args))
end

--- Where the client stands, for a health check or a dashboard: no secret.
-- @treturn table `{account_id, client_id, token = "none"|"valid"|"expiring"|"expired"|"closed",
--   expires_in, renewing, last_renewal = {at, op, ok, kind, status, code} | nil,
--   counts = {issues, refreshes, renewal_failures, unauthorized, rate_limit_waits, requests,
--   request_failures}, store, nonblocking}`
function Client:status()
  return metrics.status(self, check_client(self, "status"))
end

--- Issues a token with the client credentials; the client keeps it and,
-- with a store, publishes it: the login ended the shared session at Nomba.
-- @treturn table token `{access_token, refresh_token, expires_at, expires_in, business_id, token_type}`
-- @treturn[2] nil
-- @treturn[2] Error err
function Client:issue()
  return run(self, check_client(self, "issue"), "issue")
end

--- Refreshes the session; the client keeps the new token (and publishes
-- it, with a store). Nomba needs the
-- refresh token and, as the bearer, the session's access token (an
-- expired one will do): the kept ones, or the ones given, e.g. saved by
-- an earlier process: `client:refresh{refresh_token = rt, access_token = at}`.
-- Without any access token it fails at once (`config`), sending nothing.
-- @tparam[opt] string|table refresh_token a refresh token, or `{refresh_token =, access_token =}`
-- @treturn table token
-- @treturn[2] nil
-- @treturn[2] Error err
function Client:refresh(refresh_token)
  local st = check_client(self, "refresh")
  local rt, at = refresh_token, nil
  if type(refresh_token) == "table" then
    rt, at = refresh_token.refresh_token, refresh_token.access_token
  end
  if rt ~= nil and (type(rt) ~= "string" or rt == "") then
    error("nomba.oauth: bad argument #1 to 'refresh' (refresh_token must be a non-empty string)", 2)
  end
  if at ~= nil and (type(at) ~= "string" or not core.visible(at)) then
    error("nomba.oauth: bad argument #1 to 'refresh' (access_token must be a non-empty string of visible ASCII)", 2)
  end
  return run(self, st, "refresh", { refresh_token = rt, access_token = at })
end

--- Revokes the kept (or the given) access token. A kept one is dropped,
-- from the client and from its store.
-- @tparam[opt] string access_token
-- @treturn boolean true, or `nil, err`
function Client:revoke(access_token)
  local st = check_client(self, "revoke")
  if access_token ~= nil and (type(access_token) ~= "string" or access_token == "") then
    error("nomba.oauth: bad argument #1 to 'revoke' (access_token must be a non-empty string)", 2)
  end
  return run(self, st, "revoke", { access_token = access_token })
end

--- PKCE step 2: sends the code challenge, returns the auth code.
-- @tparam table opts `code_challenge` (required), `code_challenge_method`
--   ("S256" default, or "plain"), `redirect_uri`, `state`, `scope`
-- @treturn string auth_code, or `nil, err`
function Client:authorize(opts)
  local st = check_client(self, "authorize")
  if type(opts) ~= "table" then
    error("nomba.oauth: bad argument #1 to 'authorize' (table expected)", 2)
  end
  if type(opts.code_challenge) ~= "string" or opts.code_challenge == "" then
    error("nomba.oauth: bad argument #1 to 'authorize' (code_challenge is required)", 2)
  end
  local m = opts.code_challenge_method
  if m ~= nil and m ~= "S256" and m ~= "plain" then
    error("nomba.oauth: bad argument #1 to 'authorize'" ..
          " (code_challenge_method must be \"S256\" or \"plain\")", 2)
  end
  for _, k in ipairs { "redirect_uri", "state", "scope" } do
    if opts[k] ~= nil and type(opts[k]) ~= "string" then
      error("nomba.oauth: bad argument #1 to 'authorize' (" .. k .. " must be a string)", 2)
    end
  end
  return run(self, st, "authorize", opts)
end

--- PKCE step 4: exchanges the auth code and the verifier for a token; the client keeps it.
-- @tparam string auth_code
-- @tparam string code_verifier
-- @treturn table token, or `nil, err`
function Client:exchange(auth_code, code_verifier)
  local st = check_client(self, "exchange")
  if type(auth_code) ~= "string" or auth_code == "" then
    error("nomba.oauth: bad argument #1 to 'exchange' (auth_code must be a non-empty string)", 2)
  end
  if type(code_verifier) ~= "string" or not core.pkce_valid(code_verifier) then
    error("nomba.oauth: bad argument #2 to 'exchange'" ..
          " (code_verifier must be 43 to 128 characters of [A-Za-z0-9-._~])", 2)
  end
  return run(self, st, "exchange", { auth_code = auth_code, code_verifier = code_verifier })
end

--- An authorized call to any Nomba API, with the client's token and
-- accountId. A 401 renews the token once and makes the call once more; a
-- transient failure is retried only when the call is idempotent (GET, HEAD,
-- PUT, DELETE, OPTIONS, or `idempotent = true`) or provably never left.
-- @tparam table opts `method` ("GET"), `path` ("/v1/..." or a URL on
--   base_url), `query` (table), `json` (table; a number of more than 14
--   significant digits raises: lua-cjson would change it) or `body` (string)
--   with `content_type`, `headers` (table), `account_id`, `idempotent`,
--   `timeout` (the client's), `max_response_bytes` (the client's when it
--   gives one, else 1 MiB)
-- @treturn table res `{status, headers, body, json, code, data, rate_limit}`
-- @treturn[2] nil
-- @treturn[2] Error err (`kind` "http" or "api" with `err.response`; "timeout"
--   with `err.maybe_sent`; "rate_limited" with `retry_after`; ...)
function Client:request(opts)
  local st = check_client(self, "request")
  local args = request.check(self, st, opts)
  if core.closed(self) then return nil, new_error(self, "closed", "request", "the client is closed") end
  return request.call(self, st, args)
end

-- The non-blocking mode (libcurl's multi interface) ------------------------------

--- Never blocks: starts a due renewal if none is in flight, advances the
-- transfer, finishes it (keeping the new token, firing events, scheduling a
-- retry after a retryable failure). With a store, the shared token is read
-- first and the lock tried without waiting.
-- @treturn boolean true while work is in flight (a transfer, a retry timer, a look at the store)
function Client:step()
  return machine.step(self, check_client(self, "step"))
end

--- Blocks up to `seconds` until the transfer in flight can make progress (or
-- a retry timer is due); returns at once when nothing is in flight.
-- @tparam number seconds
-- @treturn boolean true while work is in flight
function Client:wait(seconds)
  local st = check_client(self, "wait")
  if type(seconds) ~= "number" or seconds ~= seconds or seconds < 0 then
    error("nomba.oauth: bad argument #1 to 'wait' (seconds must be a non-negative number)", 2)
  end
  return machine.wait(self, st, seconds)
end

--- Starts an explicit issue, refresh, revoke or API request without waiting;
-- step() finishes it and then calls `callback(result)` or `callback(nil, err)`.
-- @tparam string op "issue", "refresh", "revoke" or "request"
-- @tparam[opt] string|table tok the refresh token (refresh), access token
--   (revoke), or the options of `request`
-- @tparam[opt] function callback (may come right after `op`)
-- @treturn boolean true, or `nil, err` (kind "pending" when a transfer is in
--   flight; a request waits instead behind a renewal that step() began while
--   the kept token is still valid)
function Client:start(op, tok, callback)
  local st = check_client(self, "start")
  if op == "request" then
    if callback ~= nil and type(callback) ~= "function" then
      error("nomba.oauth: bad argument #3 to 'start' (function expected)", 2)
    end
    local args = request.check(self, st, tok)
    if core.closed(self) then return nil, new_error(self, "closed", op, "the client is closed") end
    return request.start(self, st, args, callback)
  end
  if op ~= "issue" and op ~= "refresh" and op ~= "revoke" then
    error("nomba.oauth: bad argument #1 to 'start' (\"issue\", \"refresh\", \"revoke\" or \"request\" expected)", 2)
  end
  if callback == nil and type(tok) == "function" then tok, callback = nil, tok end  -- start(op, cb)
  if tok ~= nil and type(tok) ~= "string" then
    error("nomba.oauth: bad argument #2 to 'start' (string expected)", 2)
  end
  if callback ~= nil and type(callback) ~= "function" then
    error("nomba.oauth: bad argument #3 to 'start' (function expected)", 2)
  end
  if core.closed(self) then return nil, new_error(self, "closed", op, "the client is closed") end
  if st.nb then return nil, new_error(self, "pending", op, "a transfer is already in flight") end
  local args = op == "refresh" and { refresh_token = tok } or op == "revoke" and { access_token = tok } or nil
  local busy, _, err = machine.begin(self, st, machine.op(op, args), callback)
  if busy then return true end
  return nil, err
end

--- The sockets libcurl watches for the transfer in flight, for an external
-- event loop (epoll, luv, cqueues): `{{fd = n, read = bool, write = bool}, ...}`,
-- and the milliseconds until `step()` is due anyway (-1: no timer).
-- @treturn table sockets
-- @treturn number timeout_ms
function Client:sockets()
  local st = check_client(self, "sockets")
  local socks, ms = wire.multi.sockets(self)
  local at = st.nb and st.nb.wake_at
  if at then ms = math_max(0, math_floor((at - now()) * 1000)) end
  return socks, ms
end

return Client
