--- Nomba webhooks: verify a delivery's signature, sign one (for tests),
-- and process each event once.
--
-- Nomba signs eight fields of the event and the `nomba-timestamp` header,
-- joined with `:`, with HMAC-SHA256 under the merchant's signature key:
--
--    event_type:requestId:data.merchant.userId:data.merchant.walletId:
--    data.transaction.transactionId:data.transaction.type:
--    data.transaction.time:data.transaction.responseCode:<timestamp>
--
-- Only those fields are authenticated: a handler must read nothing else
-- from the event (or re-fetch the transaction from Nomba by its id). The
-- HMAC, the signature's decoding and the constant-time comparison are C
-- (`nomba.oauth.core`); the key is never kept, logged or echoed.
--
--    local event, err = oauth.webhook.verify { key = KEY, body = raw_body, headers = headers }
--    if event and oauth.webhook.dedupe(store, event.requestId, 86400) then grant(event) end
--
-- @module nomba.oauth.webhook

local core = require "nomba.oauth.core"
local DEFAULTS = require("nomba.oauth.options").DEFAULTS.webhook
local json = require("cjson.safe").new()

local type, error, floor = type, error, math.floor
local verify_c, sign_c = core.webhook_verify, core.webhook_sign

local M = {}

local ALGORITHM, VERSION = core.WEBHOOK_ALGORITHM, core.WEBHOOK_VERSION
local MAX_AGE = DEFAULTS.max_age           -- seconds a delivery may be off the local clock
local DEDUPE_TTL = DEFAULTS.dedupe_ttl

local function fail(reason, msg)
  local err = core.error("webhook", "webhook", msg)
  err.reason = reason
  return nil, err
end

local function rfc3339(t)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", floor(t))
end

local function check_key(key, fn)
  if type(key) ~= "string" or key == "" then
    error("nomba.oauth.webhook." .. fn .. ": key must be a non-empty string", 3)
  end
end

--- Verifies a delivery: the headers Nomba sends, the signature over the
-- signed fields and the timestamp, and the timestamp's age.
-- @tparam table opts `key` (the signature key set on Nomba's dashboard),
--   `body` (the raw request body), `headers` (names in any case),
--   `max_age` (seconds, default 300, either way of the local clock),
--   `now` (Unix seconds, default the wall clock)
-- @treturn table the decoded event
-- @treturn[2] nil
-- @treturn[2] Error err, `kind = "webhook"`, `reason` one of `missing_header`,
--   `unknown_algorithm`, `unknown_version`, `bad_json`, `bad_signature`, `stale`, `future`
function M.verify(opts)
  if type(opts) ~= "table" then error("nomba.oauth.webhook.verify: bad argument #1 (table expected)", 2) end
  check_key(opts.key, "verify")
  if type(opts.body) ~= "string" then error("nomba.oauth.webhook.verify: body must be a string", 2) end
  if type(opts.headers) ~= "table" then error("nomba.oauth.webhook.verify: headers must be a table", 2) end
  local max_age = opts.max_age or MAX_AGE
  if type(max_age) ~= "number" or not (max_age > 0 and max_age <= 86400) then
    error("nomba.oauth.webhook.verify: max_age must be a number of seconds from 0 to 86400", 2)
  end
  local now = opts.now or core.time()
  if type(now) ~= "number" or now - now ~= 0 then
    error("nomba.oauth.webhook.verify: now must be a finite number", 2)
  end

  local event, reason, msg = verify_c(opts.key, opts.body, opts.headers, now, max_age)
  if not event then return fail(reason, msg) end
  return event
end

--- Signs an event as Nomba does: the headers of a delivery. A helper for
-- tests and the simulator; a receiver never needs it.
-- @tparam table opts `key`, `event` (a table or its JSON), `timestamp`
--   (RFC 3339 text or Unix seconds; default now)
-- @treturn table headers `nomba-signature`, `nomba-sig-value`,
--   `nomba-signature-algorithm`, `nomba-signature-version`, `nomba-timestamp`
-- @treturn string the body (the event as JSON)
function M.sign(opts)
  if type(opts) ~= "table" then error("nomba.oauth.webhook.sign: bad argument #1 (table expected)", 2) end
  check_key(opts.key, "sign")
  local event, body = opts.event, opts.event
  if type(event) == "table" then body = json.encode(event) end
  local ts = opts.timestamp or core.time()
  if type(ts) == "number" then ts = rfc3339(ts) end
  if type(ts) ~= "string" then error("nomba.oauth.webhook.sign: timestamp must be a string or a number", 2) end
  local sig = type(body) == "string" and sign_c(opts.key, event, ts)
  if not sig then error("nomba.oauth.webhook.sign: event must be a table or a JSON object", 2) end
  return {
    ["nomba-signature"] = sig, ["nomba-sig-value"] = sig,
    ["nomba-signature-algorithm"] = ALGORITHM, ["nomba-signature-version"] = VERSION,
    ["nomba-timestamp"] = ts,
  }, body
end

--- Whether this is the first time a `requestId` is seen within `ttl`
-- seconds, across everything that shares the store (every worker, process
-- or host): Nomba may deliver an event more than once.
-- @param store any store of `nomba.oauth.store` (or one with `add` or `lock`)
-- @tparam string request_id the event's `requestId`
-- @tparam[opt=86400] number ttl
-- @treturn boolean true the first time, false after
-- @treturn[2] nil
-- @treturn[2] Error err, `kind = "webhook"`, `reason = "store"` when the store failed
function M.dedupe(store, request_id, ttl)
  if type(store) ~= "table" or (store.add == nil and store.lock == nil) then
    error("nomba.oauth.webhook.dedupe: bad argument #1 (a store expected)", 2)
  end
  if type(request_id) ~= "string" or request_id == "" or #request_id > 256 or request_id:find("[%z\1-\31\127]") then
    error("nomba.oauth.webhook.dedupe: bad argument #2 (request_id must be 1 to 256 printable bytes)", 2)
  end
  ttl = ttl or DEDUPE_TTL
  if type(ttl) ~= "number" or not (ttl > 0 and ttl <= 31622400) then
    error("nomba.oauth.webhook.dedupe: bad argument #3 (ttl must be a number of seconds up to a year)", 2)
  end
  local key = "webhook:" .. request_id
  local ok, first, err
  if store.add then
    ok, first, err = pcall(store.add, store, key, "1", ttl)
  else
    ok, first, err = pcall(store.lock, store, key, ttl)
  end
  -- only a boolean is an answer: a store that returns nothing has not said
  -- "seen before", and taking it so would drop an event Nomba never resends
  if not ok or type(first) ~= "boolean" then
    local why = ok and err or first
    local s = type(why) == "string" and why or "the store failed"
    return fail("store", "dedupe: " .. (#s > 200 and s:sub(1, 200) or s))
  end
  return first == true
end

--- The key under which `dedupe` remembers a requestId (to forget it when
-- processing failed and the delivery should be accepted again).
-- @tparam string request_id
-- @treturn string
function M.dedupe_key(request_id)
  return "webhook:" .. request_id
end

return M
