--- OAuth 2.0 tokens for the Nomba API: get, keep, refresh, revoke; PKCE.
--
-- The public module. The C core (`nomba.oauth.core`) owns the client
-- userdata, its secrets and the wire contract; this module holds the policy,
-- written once for every transport: option checks, retries with backoff and
-- jitter, Retry-After, `token()` with its refresh window and
-- refresh-then-issue fallback, single-flight renewal and events.
--
-- Conventions (as LuaSocket and lua-cjson): an operational failure returns
-- `nil, err` where `err` is an `oauth.Error` table; a programming mistake
-- raises at once, naming the argument.
-- @module nomba.oauth

local core = require "nomba.oauth.core"

local type, pairs, ipairs, pcall, error, tostring = type, pairs, ipairs, pcall, error, tostring
local setmetatable, getmetatable = setmetatable, getmetatable
local math_random, math_min = math.random, math.min
local co_running, co_yield = coroutine.running, coroutine.yield
local co_isyieldable = coroutine.isyieldable
local fresh, info_of, state_of, perform = core.fresh, core.info, core.state, core.perform
local now, new_error = core.now, core.error

-- A pcall that a yield can cross. Lua 5.2+ and LuaJIT have one; on plain
-- Lua 5.1 a protected call runs in a coroutine whose yields are passed on.
local pcall_y = pcall
if _VERSION == "Lua 5.1" and not rawget(_G, "jit") then
  local unpack, select, co_create, co_resume, co_status = unpack, select, coroutine.create,
    coroutine.resume, coroutine.status
  local function pack(...) return { n = select("#", ...), ... } end
  pcall_y = function(f, ...)
    if co_running() == nil then return pcall(f, ...) end   -- the main thread cannot yield anyway
    local co = co_create(f)
    local res = pack(co_resume(co, ...))
    while res[1] and co_status(co) == "suspended" do
      res = pack(co_resume(co, co_yield(unpack(res, 2, res.n))))
    end
    return unpack(res, 1, res.n)
  end
end

-- Whether the running code may yield (coroutine.isyieldable is 5.3+).
local function can_yield()
  if co_isyieldable then return co_isyieldable() end
  local co, main = co_running()
  if main ~= nil then return not main end                 -- 5.2, LuaJIT
  return co ~= nil                                        -- 5.1: nil in the main thread
end

local M = {
  _VERSION = core._VERSION,
  PRODUCTION_URL = "https://api.nomba.com",
  SANDBOX_URL = "https://sandbox.nomba.com",
  Error = core.Error,
  pkce = core.pkce,
}

local DEFAULT_PATHS = {
  issue = "/v1/auth/token/issue",
  refresh = "/v1/auth/token/refresh",
  revoke = "/v1/auth/token/revoke",
  authorize = "/v1/auth/token/authorize",
}

local BACKOFF_BASE, BACKOFF_CAP, RETRY_AFTER_CAP = 0.2, 5, 30
local LIMITS = core.LIMITS      -- the bounds on numbers, written once in C (nomba.h)
-- Forgets LuaJIT's hot-path copy of a client's token (see the end of the file).
local hot_clear = function() end
local store_call      -- defined with the stores below
local RENEW_INTERVAL = 1      -- at most one renewal attempt per second while a token is valid

--- The method table of every client (metatable `nomba.oauth.Client`).
local Client = core.methods
M.Client = Client

--- Forgets the kept access token (after a 401 from another Nomba API): it is
-- never handed out again and the next `token()` renews. Written in C.
-- @function Client:invalidate

--- Wipes the secret and the tokens and frees the libcurl handle; every
-- method then answers `nil, err` with `err.kind == "closed"`. Calling it
-- twice is fine; `__gc` and `__close` do the same. Written in C.
-- @function Client:close

--- PKCE helpers (RFC 7636), in C on OpenSSL.
-- @section pkce

--- A code verifier: 43 to 128 (default 43) characters of `[A-Za-z0-9-._~]`
-- from the OpenSSL CSPRNG, every symbol uniform. Raises on a bad length.
-- @function pkce.verifier
-- @tparam[opt=43] int length
-- @treturn string verifier

--- The code challenge of a verifier: `"S256"` (default) or `"plain"`.
-- Raises on an invalid verifier or an unknown method.
-- @function pkce.challenge
-- @tparam string verifier
-- @tparam[opt="S256"] string method
-- @treturn string challenge

--- A fresh verifier and its S256 challenge.
-- @function pkce.pair
-- @tparam[opt=43] int length
-- @treturn string verifier
-- @treturn string challenge

--- Whether a verifier matches a challenge, compared in constant time.
-- @function pkce.verify
-- @tparam string verifier
-- @tparam string challenge
-- @tparam[opt="S256"] string method
-- @treturn boolean

--- Errors: the metatable of every error value (`getmetatable(err) == oauth.Error`).
-- Fields: `kind`, `op`, `status`, `code`, `message`, `retryable`, `retry_after`.
-- @table Error

-- Client methods.
-- @section Client

-- Options ------------------------------------------------------------------

local OPTIONS = {
  account_id = "string", client_id = "string", client_secret = "string",
  base_url = "string", sandbox = "boolean", timeout = "number",
  connect_timeout = "number", retries = "number", refresh_skew = "number",
  cafile = "string", capath = "string", pinned_pubkey = "string", proxy = "string",
  user_agent = "string", max_response_bytes = "number", paths = "table",
  on_event = "function", store = "table", store_key = "string", transport = "function",
  nonblocking = "boolean", token = "table", on_token = "function",
}

-- A misuse found while checking options; new() re-raises it at the caller.
local Misuse = {}

local function bad(name, msg)
  error(setmetatable({ "nomba.oauth.new: option '" .. name .. "' " .. msg }, Misuse), 0)
end

local function printable(name, v)
  if v:find("[%z\1-\31\127]") then bad(name, "must not contain control characters") end
end

-- Judged on libcurl's own parse of the URL (core.url), the parser that
-- connects: user info, a query or a fragment are refused, and plain http://
-- only goes to a loopback host. (core.new judges it again, with every path.)
local function check_url(u)
  local parts, why = core.url(u)
  if not parts then bad("base_url", why) end
end

-- Checks and completes the options of oauth.new; raises on misuse.
local function normalize(opts)
  if type(opts) ~= "table" then
    error(setmetatable({ "nomba.oauth.new: bad argument #1 (options table expected, got " ..
                         type(opts) .. ")" }, Misuse), 0)
  end
  for k, v in pairs(opts) do
    local want = OPTIONS[k]
    if not want then bad(tostring(k), "is unknown") end
    local callable = want == "function" and type(v) == "table" and getmetatable(v) and getmetatable(v).__call
    if type(v) ~= want and not callable then bad(k, "must be a " .. want .. " (got " .. type(v) .. ")") end
  end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  for _, k in ipairs { "account_id", "client_id" } do
    if o[k] == nil or o[k] == "" then bad(k, "is required") end
    printable(k, o[k])
  end
  if o.client_secret == "" then bad("client_secret", "must not be empty") end
  if o.store ~= nil then
    for _, m in ipairs { "get", "set", "delete", "lock", "unlock" } do
      if o.store[m] == nil then bad("store", "has no '" .. m .. "' method") end
    end
    if not o.client_secret and not o.store_key then
      bad("store_key", "is required for a client without client_secret that uses a store")
    end
  end
  if o.store_key ~= nil and #o.store_key < 16 then bad("store_key", "must be at least 16 bytes") end
  if o.nonblocking and (o.transport or o.store) then
    bad("nonblocking", "works with the default libcurl transport and without a store")
  end
  if o.base_url and o.sandbox then bad("sandbox", "conflicts with base_url: give one") end
  o.base_url = o.base_url or (o.sandbox and M.SANDBOX_URL or M.PRODUCTION_URL)
  o.base_url = o.base_url:gsub("/+$", "")
  printable("base_url", o.base_url)
  check_url(o.base_url)
  o.sandbox = nil
  -- every number is finite and bounded: NaN fails each comparison
  local function seconds(k, def, lo, hi)
    o[k] = o[k] or def
    if not (o[k] >= lo and o[k] <= hi) then bad(k, ("must be a number of seconds from %g to %g"):format(lo, hi)) end
  end
  seconds("timeout", 10, 0.001, LIMITS.timeout)
  seconds("connect_timeout", 5, 0.001, LIMITS.timeout)
  seconds("refresh_skew", 300, 0, LIMITS.lifetime)
  o.retries = o.retries or 2
  if not (o.retries >= 0 and o.retries <= 10) or o.retries % 1 ~= 0 then
    bad("retries", "must be an integer from 0 to 10")
  end
  o.max_response_bytes = o.max_response_bytes or 65536
  if not (o.max_response_bytes >= 256 and o.max_response_bytes <= LIMITS.response) or
     o.max_response_bytes % 1 ~= 0 then
    bad("max_response_bytes", ("must be an integer from 256 to %d"):format(LIMITS.response))
  end
  if #o.account_id > LIMITS.account_id then
    bad("account_id", ("must be at most %d bytes"):format(LIMITS.account_id))
  end
  if o.proxy ~= nil then printable("proxy", o.proxy) end
  if o.pinned_pubkey and not o.pinned_pubkey:match("^sha256//[%w%+/=;]+") then
    bad("pinned_pubkey", "must look like \"sha256//BASE64\"")
  end
  o.user_agent = o.user_agent or ("nomba-oauth-lua/" .. core._VERSION:match("[%d%.]+$"))
  printable("user_agent", o.user_agent)
  local paths = {}
  for k, v in pairs(DEFAULT_PATHS) do paths[k] = v end
  for k, v in pairs(o.paths or {}) do
    if not DEFAULT_PATHS[k] then bad("paths", "has an unknown key '" .. tostring(k) .. "'") end
    if type(v) ~= "string" or v:sub(1, 1) ~= "/" then
      bad("paths", "." .. k .. " must be a string starting with '/'")
    end
    printable("paths", v)
    paths[k] = v
  end
  o.paths = paths
  return o
end

--- Makes a client.
-- @tparam table opts see the README and API reference: `account_id` and
--   `client_id` are required; `client_secret` for the client-credentials flow.
-- @treturn Client a client (raises on a misused option, naming it)
function M.new(opts)
  local ok, o = pcall(normalize, opts)
  if not ok then
    if getmetatable(o) == Misuse then error(o[1], 2) end
    error(o, 0)
  end
  local state = { on_event = o.on_event, transport = o.transport, nonblocking = o.nonblocking,
                  retries = o.retries, timeout = o.timeout, store = o.store, on_token = o.on_token }
  local client = core.new(o, state)
  if o.token then
    local seeded, why = pcall(core.seed, client, o.token)
    if not seeded then error(why, 2) end
  end
  if o.store then
    if o.store_key then core.set_store_key(client, o.store_key) end
    state.skey = core.store_id(client)
    state.lkey = state.skey .. ":lock"
    state.gkey = state.skey .. ":gen"       -- the generation a revoke renews
    if o.store.set_timeout ~= nil and o.store.timeout == nil then
      pcall(o.store.set_timeout, o.store, o.timeout)   -- a store without its own bound gets ours
    end
  end
  return client
end

M.store = require "nomba.oauth.store"
M.webhook = require "nomba.oauth.webhook"

-- One attempt, events, retries -----------------------------------------------

local ngx_sleep
do
  local ngx = rawget(_G, "ngx")
  if type(ngx) == "table" and type(ngx.sleep) == "function" then
    ngx_sleep = function(s)
      local ok = pcall(ngx.sleep, s)
      if not ok then core.sleep(s) end     -- a phase that cannot yield
    end
  end
end
local sleep = ngx_sleep or core.sleep

local function emit(st, ev)
  local f = st.on_event
  if f then pcall(f, ev) end
end

-- on_token: the application's hook, called with every token the client
-- adopts (issued, refreshed, exchanged, or newer from the store). It
-- receives secrets by design; an error inside it is swallowed.
local function adopted(st, tok)
  local f = st.on_token
  if f and tok then pcall(f, tok) end
end

-- One HTTP attempt through the configured transport.
local function attempt(self, st, op, args)
  local transport = st.transport
  if not transport then
    return perform(self, op, args, st.timeout)
  end
  local req, err = core.request(self, op, args)
  if not req then return nil, err end
  local ok, resp, msg = pcall_y(transport, req)
  req.body = nil
  if not ok then
    return nil, new_error("transport", op, "the transport raised an error", { retryable = true })
  end
  if resp == nil then
    if getmetatable(msg) == M.Error then return nil, msg end   -- the transport typed it
    msg = tostring(msg or "the transport failed")
    local kind = msg:lower():find("timeout") and "timeout" or
                 msg:lower():find("timed out") and "timeout" or "transport"
    return nil, new_error(kind, op, msg, { retryable = true })
  end
  if type(resp) ~= "table" or type(resp.status) ~= "number" then
    return nil, new_error("protocol", op, "the transport returned no status")
  end
  if resp.body ~= nil and type(resp.body) ~= "string" then
    return nil, new_error("protocol", op, "the transport returned a body that is not a string")
  end
  return core.answer(self, op, resp.status, resp.headers, resp.body)
end

-- How long to wait before attempt n + 1, or nil when the server asks for
-- more than RETRY_AFTER_CAP (then the error is the answer).
local function backoff(err, n)
  if err.retry_after then
    if err.retry_after > RETRY_AFTER_CAP then return nil end
    return err.retry_after
  end
  return math_random() * math_min(BACKOFF_CAP, BACKOFF_BASE * 2 ^ (n - 1))
end

-- Performs op with retries on connect errors, timeouts, 429 and 5xx:
-- exponential backoff with full jitter, Retry-After honoured up to 30 s.
local function request(self, st, op, args)
  local tries = st.retries + 1
  local err
  for n = 1, tries do
    local t0 = now()
    local res, e, status = attempt(self, st, op, args)
    if res == nil and (e.kind == "closed" or e.kind == "config") then
      return nil, e                         -- no request was made
    end
    emit(st, { op = op, attempt = n, ok = res ~= nil, status = status,
               elapsed = now() - t0, kind = e and e.kind, code = e and e.code })
    if res ~= nil then
      hot_clear(self)
      if op == "issue" or op == "refresh" or op == "exchange" then adopted(st, res) end
      return res
    end
    err = e
    if not e.retryable or n == tries then break end
    local wait = backoff(e, n)
    if not wait then break end
    sleep(wait)
  end
  return nil, err
end

-- Stores -----------------------------------------------------------------------

-- Calls a store method; trouble (nil, err or a raise) becomes an event and
-- the second result `true`, and never reaches the caller.
-- What each store method may answer: anything else is a store error.
local STORE_ANSWERS = {
  get = function(v) return v == nil or v == false or type(v) == "string" end,
  lock = function(v) return type(v) == "boolean" end,
}

-- tostring() of anything, even a value whose __tostring raises or returns
-- a non-string.
local function safe_text(v)
  local ok, s = pcall(tostring, v)
  if ok and type(s) == "string" then return s end
  return "(an error value that cannot be printed)"
end

-- Calls a store method; any misbehaviour (nil, err; a raise; an answer of
-- the wrong type; an error value that raises when printed) becomes a
-- store_error event and the second result `true`, and never reaches the
-- caller.
store_call = function(st, method, ...)
  local store = st.store
  local ok, v, err = pcall_y(function(...) return store[method](store, ...) end, ...)
  local why
  if not ok then
    why = safe_text(v)
  elseif v == nil and err ~= nil then
    why = safe_text(err)
  elseif STORE_ANSWERS[method] and not STORE_ANSWERS[method](v) then
    why = method .. " answered a " .. type(v)
  else
    return v or nil, false
  end
  emit(st, { op = "store", ok = false, kind = "store_error", method = method,
             message = #why > 200 and why:sub(1, 200) .. "..." or why })
  return nil, true
end

-- The associated data a sealed value is bound to: the store key and the
-- generation a revoke renews, so a revoked token written back never opens.
local function store_aad(st, gen)
  if gen == nil then return st.skey end
  return st.skey .. "#" .. gen
end

-- Reads the shared token and adopts it when it opens and is newer; returns
-- the associated data (for sealing) or nil when the store failed.
local function read_shared(self, st)
  local gen, failed = store_call(st, "get", st.gkey)
  if failed then return nil end
  local aad = store_aad(st, gen)
  local blob
  blob, failed = store_call(st, "get", st.skey)
  if failed then return nil end
  if blob and core.adopt(self, aad, blob) then
    hot_clear(self)
    adopted(st, core.kept(self))
  end
  return aad
end

-- Methods ----------------------------------------------------------------------

local function check_client(self, method)
  if not core.is_client(self) then
    error("nomba.oauth: bad self to '" .. method .. "' (use client:" .. method .. "(...))", 3)
  end
  return state_of(self)
end

--- Issues a token with the client credentials; the client keeps it.
-- @treturn table token `{access_token, refresh_token, expires_at, expires_in, business_id, token_type}`
-- @treturn[2] nil
-- @treturn[2] Error err
function Client:issue()
  return request(self, check_client(self, "issue"), "issue")
end

--- Refreshes the session; the client keeps the new token. Nomba needs the
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
  if at ~= nil and (type(at) ~= "string" or not at:match("^[\33-\126]+$")) then
    error("nomba.oauth: bad argument #1 to 'refresh' (access_token must be a non-empty string of visible ASCII)", 2)
  end
  return request(self, st, "refresh", { refresh_token = rt, access_token = at })
end

--- Revokes the kept (or the given) access token. A kept one is dropped.
-- @tparam[opt] string access_token
-- @treturn boolean true, or `nil, err`
function Client:revoke(access_token)
  local st = check_client(self, "revoke")
  if access_token ~= nil and (type(access_token) ~= "string" or access_token == "") then
    error("nomba.oauth: bad argument #1 to 'revoke' (access_token must be a non-empty string)", 2)
  end
  if st.store then read_shared(self, st) end      -- the shared token may be the one revoked
  local ok, err = request(self, st, "revoke", { access_token = access_token })
  if ok then
    if core.drop(self, access_token) and st.store then
      -- the shared token is gone: a new generation first, so a copy of its
      -- sealed value never opens again
      store_call(st, "set", st.gkey, core.pkce.verifier(43))
      store_call(st, "delete", st.skey)
    end
    hot_clear(self)
  end
  return ok, err
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
  return request(self, st, "authorize", opts)
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
  return request(self, st, "exchange", { auth_code = auth_code, code_verifier = code_verifier })
end

-- token() --------------------------------------------------------------------

-- A refresh the server refused for good (not a passing failure): issue afresh.
local function refused(err)
  return err.kind == "config" or
         ((err.kind == "api" or err.kind == "http") and not err.retryable)
end

local function renew(self, st, info)
  local err
  if info.has_refresh then
    local tok, e = request(self, st, "refresh", {})
    if tok then return tok end
    err = e
    if not refused(e) then return nil, e end
  end
  if not info.has_secret then
    return nil, err or new_error("config", "token",
      "this PKCE client has no valid token and cannot issue one: use authorize and exchange")
  end
  return request(self, st, "issue")
end

-- Waits while another coroutine of this Lua state renews (single-flight).
local function wait_for_renewal(st)
  local deadline = now() + st.timeout * (st.retries + 1) + RETRY_AFTER_CAP
  while st.renewing and now() < deadline do
    if ngx_sleep then
      ngx_sleep(0.005)
    elseif can_yield() then
      co_yield()
    else
      break                               -- nobody else can be renewing
    end
  end
end

-- Renews this client's token (single-flight inside the Lua state).
local function local_token(self, st, info)
  if info.closed then                    -- closed meanwhile (by a store callback, say)
    return nil, new_error("closed", "token", "the client is closed")
  end
  if st.renewing then
    wait_for_renewal(st)
    local tok = fresh(self, 0)
    if tok then return tok end
    if st.last_err then return nil, st.last_err end
    info = info_of(self)
  end
  if info.valid and st.last_try and now() - st.last_try < RENEW_INTERVAL then
    return (fresh(self, 0))              -- renewed a moment ago: no stampede
  end
  st.renewing, st.last_try, st.last_err = true, now(), nil
  local ok, tok, err = pcall_y(renew, self, st, info)
  st.renewing = false
  if not ok then error(tok, 0) end
  if tok then return tok.access_token end
  st.last_err = err
  local kept = fresh(self, 0)            -- a failed renewal never drops a valid token
  if kept then return kept end
  return nil, err
end

-- Whether this code may wait (sleep or yield) without blocking a server;
-- under OpenResty also the name of the phase.
local WAIT_PHASES = { rewrite = true, access = true, content = true, timer = true,
                      ssl_cert = true, ssl_session_fetch = true }
local function can_wait()
  local ngx = rawget(_G, "ngx")
  if type(ngx) == "table" and type(ngx.get_phase) == "function" then
    local phase = ngx.get_phase()
    return WAIT_PHASES[phase] == true, phase
  end
  return true
end

-- Holding the store's lock: renew unless someone just did, then publish.
local function renew_locked(self, st)
  local aad = read_shared(self, st)             -- renewed by someone just now?
  local tok = fresh(self)
  if tok then return tok end
  local before = info_of(self).remaining
  local err
  tok, err = local_token(self, st, info_of(self))
  local info = info_of(self)
  if tok and aad and info.remaining > before then
    local sealed = core.seal(self, aad)
    if sealed then store_call(st, "set", st.skey, sealed, info.remaining) end
  end
  return tok, err
end

-- The token shared through a store: read it; if it needs renewing, take
-- the lock and renew (then publish), or, while another holder renews, use
-- the kept token if it is still valid, else wait for the holder.
local function shared_token(self, st)
  local lock_ttl = st.timeout * (st.retries + 1) + 1
  local deadline = now() + lock_ttl + st.timeout
  local pause = 0.005
  while true do
    if not read_shared(self, st) then return local_token(self, st, info_of(self)) end  -- store down: alone
    local tok = fresh(self)
    if tok then return tok end
    local got, failed = store_call(st, "lock", st.lkey, lock_ttl)
    if failed then return local_token(self, st, info_of(self)) end
    if got then
      -- the lock is released on every path, a raise included
      local ok, t, err = pcall_y(renew_locked, self, st)
      store_call(st, "unlock", st.lkey)
      if not ok then error(t, 0) end
      return t, err
    end
    -- another worker or host renews: a still-valid kept token will do
    local kept = fresh(self, 0)
    if kept then return kept end
    if now() >= deadline then return local_token(self, st, info_of(self)) end
    local may, phase = can_wait()
    if not may then
      return nil, new_error("config", "token", "no valid token yet, and the " .. tostring(phase) ..
        " phase cannot wait for the renewal in progress")
    end
    sleep(pause * (0.5 + math_random()))
    pause = math_min(pause * 2, 0.2)
  end
end

local nb_token            -- the non-blocking mode's token(), below

local function slow_token(self, opts)
  local st = state_of(self)
  local info = info_of(self)
  if info.closed then return nil, new_error("closed", "token", "the client is closed") end
  if st.nonblocking or st.nb or (type(opts) == "table" and opts.wait == false) then
    return nb_token(self, st, opts)
  end
  if st.store then return shared_token(self, st) end
  return local_token(self, st, info)
end

local function check_token_self(self, method)
  if not core.is_client(self) then
    error("nomba.oauth: bad self to '" .. method .. "' (use client:" .. method .. "(...))", 3)
  end
end

local function token_slow(self, opts)
  check_token_self(self, "token")
  if opts ~= nil and type(opts) ~= "table" then
    error("nomba.oauth: bad argument #1 to 'token' (table expected, got " .. type(opts) .. ")", 2)
  end
  return slow_token(self, opts)
end

local function headers_slow(self)
  check_token_self(self, "headers")
  local tok, err = slow_token(self)
  if not tok then return nil, err end
  local bearer, account
  tok, bearer, account = fresh(self, 0)
  if not tok then return nil, new_error("protocol", "token", "the token expired at once") end
  return { Authorization = bearer, accountId = account }
end

-- Non-blocking mode (libcurl's multi interface) -----------------------------------

local function pending_error(msg)
  return new_error("pending", "token", msg or "no valid token yet; a renewal is in flight")
end

-- Starts the current attempt of a job; a job that cannot start ends at once.
local nb_finish
local function nb_begin(self, st, job)
  job.t0 = now()
  st.nb = job
  local ok, err = core.nb_start(self, job.op, job.args, st.timeout)
  if not ok then
    nb_finish(self, st, job, nil, err)
    return nil, err
  end
  return true
end

-- A job is over: note a renewal's outcome, fall back from a refused refresh
-- to issue, call the job's callback.
nb_finish = function(self, st, job, res, err)
  st.nb = nil
  if job.renewal then
    if res == nil and job.op == "refresh" and refused(err) and info_of(self).has_secret then
      return nb_begin(self, st, { op = "issue", attempt = 1, renewal = true })
    end
    st.nb_err = res == nil and err or nil
  end
  if res ~= nil then
    if job.op == "revoke" then core.drop(self, job.args.access_token) end
    hot_clear(self)
    if job.op == "issue" or job.op == "refresh" then adopted(st, res) end
  end
  if job.callback then pcall(job.callback, res, err) end
end

-- Starts a renewal when the kept token needs one and none was tried within
-- the last second.
local function nb_renew_if_due(self, st)
  if fresh(self) then return end
  local info = info_of(self)
  if info.closed or (st.nb_last_try and now() - st.nb_last_try < RENEW_INTERVAL) then return end
  st.nb_last_try = now()
  if info.has_refresh then
    nb_begin(self, st, { op = "refresh", args = {}, attempt = 1, renewal = true })
  elseif info.has_secret then
    nb_begin(self, st, { op = "issue", attempt = 1, renewal = true })
  else
    st.nb_err = new_error("config", "token",
      "this PKCE client has no valid token and cannot issue one: use authorize and exchange")
  end
end

--- Never blocks: starts a due renewal if none is in flight, advances the
-- transfer, finishes it (keeping the new token, firing events, scheduling a
-- retry after a retryable failure).
-- @treturn boolean true while work is in flight (a transfer or a retry timer)
function Client:step()
  local st = check_client(self, "step")
  if info_of(self).closed then
    st.nb = nil
    return false
  end
  local job = st.nb
  if not job then
    nb_renew_if_due(self, st)
    return st.nb ~= nil
  end
  if job.retry_at then
    if now() < job.retry_at then return true end
    job.retry_at = nil
    job.attempt = job.attempt + 1
    nb_begin(self, st, job)
    return st.nb ~= nil
  end
  local done, res, err, status = core.nb_progress(self)
  if done == false then return true end
  if done == nil then                     -- nothing in flight any more
    st.nb = nil
    return false
  end
  emit(st, { op = job.op, attempt = job.attempt, ok = res ~= nil, status = status,
             elapsed = now() - job.t0, kind = err and err.kind, code = err and err.code })
  if res == nil and err.retryable and job.attempt <= st.retries then
    local wait = backoff(err, job.attempt)
    if wait then
      job.retry_at = now() + wait
      return true
    end
  end
  nb_finish(self, st, job, res, err)
  return st.nb ~= nil
end

--- Blocks up to `seconds` until the transfer in flight can make progress (or
-- a retry timer is due); returns at once when nothing is in flight.
-- @tparam number seconds
-- @treturn boolean true while work is in flight
function Client:wait(seconds)
  local st = check_client(self, "wait")
  if type(seconds) ~= "number" or seconds < 0 then
    error("nomba.oauth: bad argument #1 to 'wait' (seconds must be a non-negative number)", 2)
  end
  local job = st.nb
  if not job then return false end
  if job.retry_at then
    core.sleep(math_min(seconds, math.max(0, job.retry_at - now())))
  else
    core.nb_wait(self, seconds)
  end
  return true
end

--- Starts an explicit issue, refresh or revoke without waiting; step()
-- finishes it and then calls `callback(result)` or `callback(nil, err)`.
-- @tparam string op "issue", "refresh" or "revoke"
-- @tparam[opt] string token the refresh token (refresh) or access token (revoke)
-- @tparam[opt] function callback
-- @treturn boolean true, or `nil, err` (kind "pending" when a transfer is in flight)
function Client:start(op, token, callback)
  local st = check_client(self, "start")
  if op ~= "issue" and op ~= "refresh" and op ~= "revoke" then
    error("nomba.oauth: bad argument #1 to 'start' (\"issue\", \"refresh\" or \"revoke\" expected)", 2)
  end
  if callback == nil and type(token) == "function" then token, callback = nil, token end  -- start(op, cb)
  if token ~= nil and type(token) ~= "string" then
    error("nomba.oauth: bad argument #2 to 'start' (string expected)", 2)
  end
  if callback ~= nil and type(callback) ~= "function" then
    error("nomba.oauth: bad argument #3 to 'start' (function expected)", 2)
  end
  if info_of(self).closed then return nil, new_error("closed", op, "the client is closed") end
  if st.nb then return nil, new_error("pending", op, "a transfer is already in flight") end
  local args = op == "refresh" and { refresh_token = token } or op == "revoke" and { access_token = token } or nil
  return nb_begin(self, st, { op = op, args = args, attempt = 1, callback = callback })
end

--- The sockets libcurl watches for the transfer in flight, for an external
-- event loop (epoll, luv, cqueues): `{{fd = n, read = bool, write = bool}, ...}`,
-- and the milliseconds until `step()` is due anyway (-1: no timer).
-- @treturn table sockets
-- @treturn number timeout_ms
function Client:sockets()
  local st = check_client(self, "sockets")
  local socks, ms = core.nb_sockets(self)
  if st.nb and st.nb.retry_at then
    ms = math.max(0, math.floor((st.nb.retry_at - now()) * 1000))
  end
  return socks, ms
end

-- token() in the non-blocking mode: the kept token while it is valid, even
-- during a renewal; otherwise a renewal is started and, with wait = false,
-- a "pending" error returned; else the caller yields (inside a coroutine)
-- or waits (curl_multi_poll) until the renewal ends.
nb_token = function(self, st, opts)
  local nowait = type(opts) == "table" and opts.wait == false
  if not st.nb then nb_renew_if_due(self, st) end
  while true do
    if st.nb then self:step() end
    local kept = fresh(self, 0)
    if kept then return kept end
    if not st.nb then
      if nowait and not st.nb_err then return nil, pending_error("no valid token yet") end
      return nil, st.nb_err or pending_error("no valid token yet")
    end
    if nowait then return nil, pending_error() end
    if can_yield() and not rawget(_G, "ngx") then
      co_yield()
    else
      self:wait(0.05)
    end
  end
end

--- The hot path: the kept access token while more than `refresh_skew` seconds
-- remain; otherwise refresh, and on a refused refresh issue afresh. On Lua
-- 5.3 and 5.4 the fresh-token path is C (core.install_fast_paths) and only
-- the renewal runs here.
-- With `{wait = false}` it never blocks: the kept token while it is valid
-- (even during a renewal), else `nil, err` with `err.kind == "pending"`.
-- @function Client:token
-- @tparam[opt] table opts `wait = false` for the non-blocking mode
-- @treturn string access_token, or `nil, err`

--- Headers for calling any other Nomba API.
-- @function Client:headers
-- @treturn table `{Authorization = "Bearer ...", accountId = "..."}`, or `nil, err`

-- LuaJIT cannot compile a call to a C function, so there the hot path keeps
-- its own copy of the fresh token in Lua: the strings and a deadline on the
-- same monotonic coarse clock, read through the FFI (which LuaJIT compiles).
-- The copy lives in a weak-keyed table that holds nothing but strings and a
-- number, so it never keeps a client alive; everything that changes the
-- kept token clears it.
local function ffi_clock()
  if not rawget(_G, "jit") then return nil end
  local ok, ffi = pcall(require, "ffi")
  if not ok or ffi.os ~= "Linux" then return nil end
  ok = pcall(ffi.cdef, [[
    typedef struct { long tv_sec; long tv_nsec; } nomba_oauth_timespec;
    int clock_gettime(int clk, nomba_oauth_timespec *ts);
  ]])
  if not ok then return nil end
  local ts, C, tonum = ffi.new("nomba_oauth_timespec"), ffi.C, tonumber
  local COARSE = 6                                 -- CLOCK_MONOTONIC_COARSE
  if C.clock_gettime(COARSE, ts) ~= 0 then return nil end
  return function()
    C.clock_gettime(COARSE, ts)
    return tonum(ts.tv_sec) + tonum(ts.tv_nsec) * 1e-9
  end
end

if not core.install_fast_paths(token_slow, headers_slow) then
  local clock = ffi_clock()
  if clock then
    local HOT = setmetatable({}, { __mode = "k" })
    hot_clear = function(self) HOT[self] = nil end
    local function rehot(self)
      local tok, bearer, account = fresh(self)
      if not tok then
        HOT[self] = nil
        return
      end
      local info = info_of(self)
      HOT[self] = { tok, bearer, account, clock() + info.remaining - info.skew }
    end

    function Client:token(opts)
      local h = HOT[self]
      if h and clock() < h[4] then return h[1] end
      local tok, err = fresh(self)                 -- the copy is gone, the token may not be
      if not tok then tok, err = token_slow(self, opts) end
      if tok then rehot(self) end
      return tok, err
    end

    function Client:headers()
      local h = HOT[self]
      if h and clock() < h[4] then return { Authorization = h[2], accountId = h[3] } end
      local res, err
      local tok, bearer, account = fresh(self)
      if tok then
        res = { Authorization = bearer, accountId = account }
      else
        res, err = headers_slow(self)
      end
      if res then rehot(self) end
      return res, err
    end

    local c_invalidate, c_close = Client.invalidate, Client.close
    function Client:invalidate()
      HOT[self] = nil
      return c_invalidate(self)
    end
    function Client:close()
      HOT[self] = nil
      return c_close(self)
    end
  else
    function Client:token(opts)
      local tok = fresh(self)
      if tok then return tok end
      return token_slow(self, opts)
    end

    function Client:headers()
      local tok, bearer, account = fresh(self)
      if tok then return { Authorization = bearer, accountId = account } end
      return headers_slow(self)
    end
  end
end

return M
