--- The options of oauth.new: their types, their defaults (written here and
-- nowhere else: the C core and the OpenResty transport take them from the
-- normalized options) and their checks. (Private to nomba.oauth.)
local core = require "nomba.oauth.core"

local type, pairs, ipairs, tostring, error, setmetatable, getmetatable =
  type, pairs, ipairs, tostring, error, setmetatable, getmetatable

local LIMITS = core.LIMITS      -- the bounds on numbers, written once in C (nomba.h)

local O = {
  PRODUCTION_URL = "https://api.nomba.com",
  SANDBOX_URL = "https://sandbox.nomba.com",
}

--- The defaults of every option that has one.
O.DEFAULTS = {
  timeout = 10,                 -- seconds per attempt
  connect_timeout = 5,
  retries = 2,                  -- extra attempts on transient failures
  refresh_skew = 300,           -- renew when fewer seconds remain
  max_response_bytes = 65536,
  request_max_response_bytes = 1048576,   -- an API call's, when neither it nor the client gives one
  user_agent = "nomba-oauth-lua/" .. core._VERSION:match("[%d%.]+$"),
  -- the policy's numbers (the machine, renewal.lua, request.lua)
  backoff = { base = 0.2, cap = 5 },      -- seconds: exponential with full jitter
  retry_after_cap = 30,                   -- the longest Retry-After (or rate-limit window) waited out
  min_attempt = 0.5,                      -- seconds: the least of a call's deadline worth another attempt
  lock_margin = 1,                        -- seconds the store's renewal lock outlives its holder's deadline
  -- the 401 rule (unauthorized.lua): how long an accountId refused on a renewed token is remembered
  -- (seconds), a renewed token's mark against concurrent 401s (in timeouts), a foreign mark read
  -- from the store kept here (seconds), the accountIds kept here
  unauthorized = { foreign_ttl = 86400, renewed_timeouts = 2, recheck = 60, kept = 64 },
  renew_pause = 1,                        -- seconds between renewal tries while valid, or after a failure
  busy_backoff = { first = 0.0025, cap = 0.2 },   -- seconds: waiting for another holder of the store's lock
  alone_backoff = { first = 1, cap = 30 },        -- seconds between renewals alone while the store fails
  rate_wait_cap = 3600,                   -- the longest rate-limit wait a client keeps to itself
  -- the OpenResty transport's connection pool, and keep_fresh's timer (seconds)
  resty = { pool_size = 16, keepalive_ms = 60000, keep_fresh_interval = 1 },
  -- the stores: the prefix of their keys; Redis' pooled connections (ms);
  -- the file store's largest value and the wait of its add lock (seconds);
  -- how far nginx's wall clock may step ahead under a shared dict's TTLs (s);
  -- the least of Redis' bound left worth a new connection (s); a Cluster's
  -- redirects per call; the pause between a failover's retries (s); how
  -- often a Redis store looks again at its data-loss marker and asks
  -- Sentinel where the master is (s); the longest a write waits for its
  -- replicas (s)
  store = { prefix = "nomba-oauth:", redis_keepalive_ms = 10000, redis_timeout = 5, file_max = 65536, file_add_wait = 5,
            file_sweep_every = 60, shdict_step_slack = 3600, redis_retry_least = 0.05,
            redis_redirects = 5, redis_failover_pause = 0.1, redis_check_every = 1,
            redis_replica_wait = 0.1 },
  -- webhooks: how old a delivery's timestamp may be (Nomba's fifth retry
  -- comes about 95 minutes after the first send, with the first send's
  -- timestamp), how far in the future (clock skew), how long a processed
  -- requestId is remembered (never less than max_age), how long a claim
  -- holds while its handler runs (less than Nomba's first retry, 120 s),
  -- the largest body received
  webhook = { max_age = 7200, max_skew = 300, dedupe_ttl = 86400, lease = 60, max_body = 1048576 },
  paths = {
    issue = "/v1/auth/token/issue",
    refresh = "/v1/auth/token/refresh",
    revoke = "/v1/auth/token/revoke",
    authorize = "/v1/auth/token/authorize",
  },
}

local TYPES = {
  account_id = "string", client_id = "string", client_secret = "string",
  base_url = "string", sandbox = "boolean", timeout = "number",
  connect_timeout = "number", retries = "number", refresh_skew = "number",
  cafile = "string", capath = "string", pinned_pubkey = "string", proxy = "string",
  user_agent = "string", max_response_bytes = "number", paths = "table",
  on_event = "function", store = "table", store_key = "string", transport = "function",
  nonblocking = "boolean", token = "table", on_token = "function", log = "function",
}

-- A misuse found while checking options; oauth.new re-raises it at its caller.
O.Misuse = {}

local function bad(name, msg)
  error(setmetatable({ "nomba.oauth.new: option '" .. name .. "' " .. msg }, O.Misuse), 0)
end

local function printable(name, v)
  if v:find("[%z\1-\31\127]") then bad(name, "must not contain control characters") end
end

-- The base URLs libcurl's parse accepted (core.url), so the next client of
-- the same one is not parsed again; bounded: emptied when it fills.
local good_urls, n_good_urls = {}, 0
local function check_base_url(u)
  if good_urls[u] then return end
  printable("base_url", u)
  local parts, why = core.url(u)
  if not parts then bad("base_url", why) end
  if n_good_urls >= 64 then good_urls, n_good_urls = {}, 0 end
  good_urls[u], n_good_urls = true, n_good_urls + 1
end

local REQUIRED = { "account_id", "client_id" }
local STORE_METHODS = { "get", "set", "delete", "lock", "unlock" }

local function callable(v)
  local mt = type(v) == "table" and getmetatable(v)
  return mt and mt.__call ~= nil
end

-- A number of seconds (or bytes) with a default, finite and within [lo, hi]
-- (NaN fails every comparison), optionally an integer.
local function number(o, k, lo, hi, integer, unit)
  local v = o[k]
  if v == nil then v = O.DEFAULTS[k] end
  if not (v >= lo and v <= hi) or (integer and v % 1 ~= 0) then
    bad(k, integer and ("must be an integer from %d to %d"):format(lo, hi)
                    or ("must be a number of %s from %g to %g"):format(unit, lo, hi))
  end
  o[k] = v
end

--- Checks and completes the options of oauth.new; raises (an O.Misuse) on
-- a misuse, naming the option. Returns a new table.
function O.normalize(opts)
  if type(opts) ~= "table" then
    error(setmetatable({ "nomba.oauth.new: bad argument #1 (options table expected, got " ..
                         type(opts) .. ")" }, O.Misuse), 0)
  end
  -- sized once for the fields every client gets (a constructor with nil
  -- values sizes the table, and saves its growing one field at a time)
  local o = { account_id = nil, client_id = nil, client_secret = nil, base_url = nil, timeout = nil,
              connect_timeout = nil, retries = nil, refresh_skew = nil, max_response_bytes = nil,
              user_agent = nil, paths = nil, log = nil }
  for k, v in pairs(opts) do
    local want = TYPES[k]
    if not want then bad(tostring(k), "is unknown") end
    local ok = type(v) == want or (want == "function" and callable(v)) or (k == "log" and v == false)
    if not ok then bad(k, "must be a " .. want .. " (got " .. type(v) .. ")") end
    o[k] = v
  end
  for _, k in ipairs(REQUIRED) do
    if o[k] == nil or o[k] == "" then bad(k, "is required") end
    printable(k, o[k])
  end
  if #o.account_id > LIMITS.account_id then
    bad("account_id", ("must be at most %d bytes"):format(LIMITS.account_id))
  end
  if o.client_secret == "" then bad("client_secret", "must not be empty") end
  if o.store ~= nil then
    for _, m in ipairs(STORE_METHODS) do
      if o.store[m] == nil then bad("store", "has no '" .. m .. "' method") end
    end
    if not o.client_secret and not o.store_key then
      bad("store_key", "is required for a client without client_secret that uses a store")
    end
  end
  if o.store_key ~= nil and #o.store_key < 16 then bad("store_key", "must be at least 16 bytes") end
  if o.nonblocking and o.transport then
    bad("nonblocking", "works with the default libcurl transport (remove transport)")
  end
  if o.base_url and o.sandbox then bad("sandbox", "conflicts with base_url: give one") end
  local base = o.base_url or (o.sandbox and O.SANDBOX_URL or O.PRODUCTION_URL)
  if base:byte(-1) == 47 then base = base:gsub("/+$", "") end     -- a trailing "/"
  o.base_url, o.sandbox = base, nil
  -- judged on libcurl's own parse (the parser that connects): no user info,
  -- query or fragment; plain http only to a loopback host
  check_base_url(base)
  number(o, "timeout", 0.001, LIMITS.timeout, false, "seconds")
  number(o, "connect_timeout", 0.001, LIMITS.timeout, false, "seconds")
  number(o, "refresh_skew", 0, LIMITS.lifetime, false, "seconds")
  number(o, "retries", 0, 10, true)
  number(o, "max_response_bytes", 256, LIMITS.response, true)
  if o.proxy ~= nil then printable("proxy", o.proxy) end
  if o.pinned_pubkey and not o.pinned_pubkey:match("^sha256//[%w%+/=;]+") then
    bad("pinned_pubkey", "must look like \"sha256//BASE64\"")
  end
  if o.user_agent then printable("user_agent", o.user_agent) else o.user_agent = O.DEFAULTS.user_agent end
  if o.paths == nil then
    o.paths = O.DEFAULTS.paths          -- read only, by core.new
    return o
  end
  local paths = {}
  for k, v in pairs(O.DEFAULTS.paths) do paths[k] = v end
  for k, v in pairs(o.paths) do
    if not O.DEFAULTS.paths[k] then bad("paths", "has an unknown key '" .. tostring(k) .. "'") end
    if type(v) ~= "string" or v:sub(1, 1) ~= "/" then
      bad("paths", "." .. k .. " must be a string starting with '/'")
    end
    printable("paths", v)
    paths[k] = v
  end
  o.paths = paths
  return o
end

return O
