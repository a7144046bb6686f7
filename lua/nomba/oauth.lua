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
local options = require "nomba.oauth.options"
local shared_token = require "nomba.oauth.shared_token"
local events = require "nomba.oauth.events"
local metrics = require "nomba.oauth.metrics"
local token = require "nomba.oauth.token"

local pcall, error, getmetatable, setmetatable = pcall, error, getmetatable, setmetatable

-- What clients made with the same options share, read through their
-- state's metatable: the configuration the policy reads (a platform's
-- thousands of tenants then hold only their own fields). The last one made
-- is reused while its fields match; held weakly, so it goes with its
-- clients (and with them, say, a store's connection).
local PROFILE = { "on_event", "transport", "nonblocking", "retries", "timeout", "store", "on_token", "log",
                  "base_url", "max_response" }
local last_profile = setmetatable({}, { __mode = "v" })

local function same_profile(p, o)
  for i = 1, #PROFILE do
    local k = PROFILE[i]
    if p[k] ~= o[k] then return false end
  end
  return true
end

local function profile_of(o)
  local mt = last_profile[1]
  if mt and same_profile(mt.__index, o) then return mt end
  local p = {}
  for i = 1, #PROFILE do p[PROFILE[i]] = o[PROFILE[i]] end
  mt = { __index = p }
  last_profile[1] = mt
  return mt
end

local M = {
  _VERSION = core._VERSION,
  PRODUCTION_URL = options.PRODUCTION_URL,
  SANDBOX_URL = options.SANDBOX_URL,
  Error = core.Error,
  pkce = core.pkce,
}

--- Making a client.
-- And the metrics of every client.
-- @section clients

--- Makes a client. Misused options raise, naming the option; nothing is
-- sent until a token is needed. The options (docs/API.md has the table
-- with every default and bound):
--
-- * `account_id`, `client_id` (required); `client_secret` for the
--   client-credentials flow (without it, a PKCE client);
-- * `base_url` (production; `sandbox = true` for the sandbox), `paths`
--   (the token endpoints' paths), `proxy`;
-- * `cafile`, `capath` (CAs to trust besides the system's), `pinned_pubkey`;
-- * `timeout` (seconds for one attempt), `connect_timeout`, `retries`,
--   `refresh_skew` (how early a token is renewed), `max_response_bytes`;
-- * `store` (share one token: `oauth.store.memory()`, `.shdict(dict)`,
--   `.redis(...)`, `.file(dir)`, or your own), `store_key`;
-- * `token` (start from a saved token), `on_token(tok)` (every adopted
--   token: save it), `on_event(ev)`, `log(level, message)` (`false`: none);
-- * `transport` (a Lua transport, e.g. `require "nomba.oauth.resty"`),
--   `nonblocking` (the step() mode), `user_agent`.
-- @function new
-- @tparam table opts the options above
-- @treturn Client a client (raises on a misused option, naming it)

--- A Prometheus text exposition (format 0.0.4) of every live client of this
-- Lua state: `nomba_oauth_token_expires_in_seconds`, the last renewal's
-- time and success, and counters of issues, refreshes, renewal failures,
-- 401s, rate-limit waits, API calls and their failures, labelled by
-- `account_id` and `client_id` (and `worker` in nginx). No secret.
-- @function metrics
-- @treturn string the exposition, for a `/metrics` endpoint

--- A client's methods.
-- A misused argument raises, naming it; a failure returns `nil, err`.
-- @section methods

--- The method table of every client (metatable `nomba.oauth.Client`).
-- @table Client
local Client = require "nomba.oauth.client"
M.Client = Client
token.install(Client)

--- The kept access token while more than `refresh_skew` seconds remain;
-- otherwise refresh, and on a refused refresh issue afresh. On Lua 5.3 and
-- 5.4 the fresh-token path is C (core.install_fast_paths) and only the
-- renewal runs in Lua. With `{wait = false}` it never blocks: the kept
-- token while it is valid (even during a renewal), else `nil, err` with
-- `err.kind == "pending"`.
-- @function Client:token
-- @tparam[opt] table opts `wait = false` for the non-blocking mode
-- @treturn string access_token, or `nil, err`

--- Headers for calling any other Nomba API.
-- @function Client:headers
-- @treturn table `{Authorization = "Bearer ...", accountId = "..."}`, or `nil, err`

--- Forgets the kept access token (after a 401 from another Nomba API): it is
-- never handed out again and the next `token()` renews. Written in C.
-- @function Client:invalidate

--- Wipes the secret and the tokens and frees the libcurl handle; every
-- method then answers `nil, err` with `err.kind == "closed"`. Calling it
-- twice is fine; `__gc` and `__close` do the same. Written in C.
-- @function Client:close

--- PKCE helpers.
-- RFC 7636, in C on OpenSSL.
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

--- Errors.
-- @section errors

--- The metatable of every error value (`getmetatable(err) == oauth.Error`).
-- Fields: `kind`, `op`, `status`, `code`, `message`, `retryable`, `retry_after`.
-- @table Error


-- (the functions documented in the "clients" section)
function M.new(opts)
  local ok, o = pcall(options.normalize, opts)
  if not ok then
    if getmetatable(o) == options.Misuse then error(o[1], 2) end
    error(o, 0)
  end
  if o.log == nil then o.log = events.default_log elseif o.log == false then o.log = nil end
  -- the default of API calls only when given (else calls take 1 MiB)
  o.max_response = opts.max_response_bytes ~= nil and o.max_response_bytes or nil
  local state = setmetatable({ account_id = o.account_id, client_id = o.client_id }, profile_of(o))
  local client = core.new(o, state)
  metrics.register(client, state)
  if o.token then
    local seeded, why = pcall(core.seed, client, o.token)
    if not seeded then error(why, 2) end
  end
  if o.store then
    if o.store_key then core.set_store_key(client, o.store_key) end
    shared_token.keys(client, state)
    if o.store.set_timeout ~= nil and o.store.timeout == nil then
      pcall(o.store.set_timeout, o.store, o.timeout)   -- a store without its own bound gets ours
    end
  end
  return client
end

function M.metrics()
  return metrics.metrics()
end

M.store = require "nomba.oauth.store"
M.webhook = require "nomba.oauth.webhook"

return M

