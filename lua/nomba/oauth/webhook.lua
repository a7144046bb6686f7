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
-- Nomba delivers an event again when a delivery fails (five more times, up
-- to about 95 minutes later, with the first send's timestamp), and may
-- deliver it twice anyway. Grant each event exactly once with a claim:
--
--    local event, err = oauth.webhook.verify { key = KEY, body = raw_body, headers = headers }
--    local state = event and oauth.webhook.claim(store, event.requestId)
--    if state == "first" then
--      if grant(event) then oauth.webhook.done(store, event.requestId)
--      else oauth.webhook.release(store, event.requestId) end
--    end   -- "held": another worker is granting it now (answer 503); "done": a duplicate (200)
--
-- A process that dies while granting leaves a claim that expires after its
-- lease: the next delivery is granted then.
-- @module nomba.oauth.webhook

local core = require "nomba.oauth.core"
local DEFAULTS = require("nomba.oauth.options").DEFAULTS.webhook
local json = require("cjson.safe").new()

local type, error, floor, pcall = type, error, math.floor, pcall
local verify_c, sign_c = core.webhook_verify, core.webhook_sign

local M = {}

local ALGORITHM, VERSION = core.WEBHOOK_ALGORITHM, core.WEBHOOK_VERSION
local MESSAGE = core.LIMITS.message             -- the cap on a message (errors and events alike)
local WINDOW_CAP = 604800            -- a week: the longest max_age or ttl of a window

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

-- A number of seconds in (0, cap]; raises naming it otherwise.
local function seconds(v, name, fn, cap)
  if type(v) ~= "number" or not (v > 0 and v <= cap) then
    error(("nomba.oauth.webhook.%s: %s must be a number of seconds greater than 0 and at most %d"):format(
      fn, name, cap), 3)
  end
  return v
end

--- Verifies a delivery: the headers Nomba sends, the signature over the
-- signed fields and the timestamp, and the timestamp's age.
-- @tparam table opts `key` (the signature key set on Nomba's dashboard),
--   `body` (the raw request body), `headers` (names in any case),
--   `max_age` (seconds a delivery may be old, default 7200: Nomba's fifth
--   retry carries the first send's timestamp, about 95 minutes old),
--   `max_skew` (seconds it may be dated in the future, default 300),
--   `now` (Unix seconds, default the wall clock)
-- @treturn table the decoded event
-- @treturn[2] nil
-- @treturn[2] Error err, `kind = "webhook"`, `reason` one of `missing_header`,
--   `unknown_algorithm`, `unknown_version`, `bad_json`, `bad_field`, `bad_signature`, `stale`, `future`
function M.verify(opts)
  if type(opts) ~= "table" then error("nomba.oauth.webhook.verify: bad argument #1 (table expected)", 2) end
  check_key(opts.key, "verify")
  if type(opts.body) ~= "string" then error("nomba.oauth.webhook.verify: body must be a string", 2) end
  if type(opts.headers) ~= "table" then error("nomba.oauth.webhook.verify: headers must be a table", 2) end
  local max_age = seconds(opts.max_age or DEFAULTS.max_age, "max_age", "verify", WINDOW_CAP)
  local max_skew = seconds(opts.max_skew or DEFAULTS.max_skew, "max_skew", "verify", WINDOW_CAP)
  local now = opts.now or core.time()
  if type(now) ~= "number" or now - now ~= 0 then
    error("nomba.oauth.webhook.verify: now must be a finite number", 2)
  end

  local event, reason, msg = verify_c(opts.key, opts.body, opts.headers, now, max_age, max_skew)
  if not event then return fail(reason, msg) end
  return event
end

--- Signs an event as Nomba does: the headers of a delivery. A helper for
-- tests and the simulator; a receiver never needs it.
-- @tparam table opts `key`, `event` (a table or its JSON), `timestamp`
--   (RFC 3339 text or Unix seconds, a number; default now)
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

-- A requestId from a delivery as a key: nil and an error when it cannot be
-- one (it came from the network: never a raise).
local function id_key(request_id)
  if type(request_id) ~= "string" or request_id == "" or #request_id > 256 or request_id:find("[%z\1-\31\127]") then
    return fail("bad_request_id", "the requestId is not 1 to 256 printable bytes")
  end
  return "webhook:" .. request_id
end

local function check_store(store, fn)
  if type(store) ~= "table" or (store.add == nil and store.lock == nil) or store.get == nil or
     store.delete == nil then
    error("nomba.oauth.webhook." .. fn .. ": bad argument #1 (a store with add or lock, get and delete expected)", 3)
  end
end

-- Calls store:method(...): its answer, then nil; or nil and the error
-- when it raised, answered nil and an error, or answered what `want`
-- refuses (a store failure).
local function call(store, method, want, ...)
  local ok, v, err = pcall(store[method], store, ...)
  local why
  if not ok then
    why = v
  elseif v == nil and err ~= nil then
    why = err
  elseif want and not want(v) then
    why = method .. " answered a " .. type(v)
  else
    return v, nil
  end
  local s = type(why) == "string" and why or "the store failed"
  return fail("store", method .. ": " .. (#s > MESSAGE and s:sub(1, MESSAGE) or s))
end

-- only a boolean is an answer of add or lock: a store that answers nothing
-- has not said "there already", and taking it so would drop an event
local function boolean(v) return type(v) == "boolean" end
local function value(v) return v == nil or v == false or type(v) == "string" end

-- Sets key once, for ttl seconds: true when it was set, false when it was
-- there; or nil and the error.
local function add_once(store, key, ttl)
  if store.add then return call(store, "add", boolean, key, "1", ttl) end
  return call(store, "lock", boolean, key, ttl)
end

--- Whether this is the first time a `requestId` is seen within `ttl`
-- seconds, across everything that shares the store (every worker, process
-- or host): at most once. A process that dies after it but before it
-- grants the event loses it; `claim` and `done` grant exactly once.
-- @param store any store of `nomba.oauth.store` (or one with `add` or `lock`)
-- @tparam string request_id the event's `requestId`
-- @tparam[opt=86400] number ttl
-- @treturn boolean true the first time, false after
-- @treturn[2] nil
-- @treturn[2] Error err, `kind = "webhook"`, `reason = "store"` when the store failed,
--   `"bad_request_id"` when the id cannot be a key (empty, over 256 bytes, control bytes)
function M.dedupe(store, request_id, ttl)
  check_store(store, "dedupe")
  ttl = seconds(ttl or DEFAULTS.dedupe_ttl, "ttl", "dedupe", 31622400)
  local key, err = id_key(request_id)
  if not key then return nil, err end
  local first, serr = add_once(store, key, ttl)
  if serr then return nil, serr end
  return first
end

--- Claims a `requestId` for processing, across everything that shares the
-- store. "first": process it, then call `done` (or `release` when it
-- failed). "held": another worker or host is processing it now (answer a
-- status Nomba retries, such as 503). "done": it was processed (a
-- duplicate: answer 200). A claim expires after `lease` seconds, so a
-- process that dies while processing loses it and a later delivery is
-- processed; the lease must be longer than the handler takes.
-- @param store any store of `nomba.oauth.store` (or one with `add` or `lock`, `get` and `delete`)
-- @tparam string request_id the event's `requestId`
-- @tparam[opt=60] number lease seconds
-- @treturn string "first", "held" or "done"
-- @treturn[2] nil
-- @treturn[2] Error err, `reason = "store"` or `"bad_request_id"`
function M.claim(store, request_id, lease)
  check_store(store, "claim")
  lease = seconds(lease or DEFAULTS.lease, "lease", "claim", WINDOW_CAP)
  local key, err = id_key(request_id)
  if not key then return nil, err end
  local got, serr = add_once(store, key, lease)
  if serr then return nil, serr end
  -- the done mark is written before a claim goes: read it after the claim
  local mark
  mark, serr = call(store, "get", value, key .. ":done")
  if serr or mark == "done" then
    if got then call(store, "delete", nil, key) end
    if serr then return nil, serr end
    return "done"
  end
  return got and "first" or "held"
end

--- Marks a claimed `requestId` processed for `ttl` seconds (never less than
-- the verification window), then lets its claim go.
-- @param store the store of the claim
-- @tparam string request_id
-- @tparam[opt=86400] number ttl
-- @treturn boolean true, or `nil, err` (the store failed: the claim then
--   expires after its lease and a redelivery is processed again)
function M.done(store, request_id, ttl)
  check_store(store, "done")
  ttl = seconds(ttl or DEFAULTS.dedupe_ttl, "ttl", "done", 31622400)
  local key, err = id_key(request_id)
  if not key then return nil, err end
  local _, serr = call(store, "set", nil, key .. ":done", "done", ttl)
  if serr then return nil, serr end
  call(store, "delete", nil, key)
  return true
end

--- Lets a claim go without marking it processed (the handler failed): the
-- next delivery is processed.
-- @param store the store of the claim
-- @tparam string request_id
-- @treturn boolean true, or `nil, err`
function M.release(store, request_id)
  check_store(store, "release")
  local key, err = id_key(request_id)
  if not key then return nil, err end
  local _, serr = call(store, "delete", nil, key)
  if serr then return nil, serr end
  return true
end

--- The key under which `dedupe` remembers a requestId (to forget it when
-- processing failed and the delivery should be accepted again).
-- @tparam string request_id
-- @treturn string
function M.dedupe_key(request_id)
  return "webhook:" .. request_id
end

M.WINDOW_CAP = WINDOW_CAP

return M
