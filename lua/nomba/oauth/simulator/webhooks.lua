--- The simulator's webhook deliveries (inside nginx): a realistic event,
-- signed as Nomba signs, POSTed to a loopback URL (/_sim/webhook).
local cjson = require "cjson.safe"
local ngx = ngx
local S = require "nomba.oauth.simulator.state"
local setting, now = S.setting, S.now
local random_text, iso = S.random_text, S.iso

-- Nomba's signing, written here apart from the library's (the simulator
-- must not share code with what it tests).
local hmac_b64 = S.hmac_b64

-- The message Nomba signs. Its samples write a responseCode "null" as "":
-- the JavaScript, Python and Go ones when it is exactly "null", the Java
-- one in any letter case (signer = "java").
local function signed_message(e, ts, signer)
  local d = type(e.data) == "table" and e.data or {}
  local m = type(d.merchant) == "table" and d.merchant or {}
  local t = type(d.transaction) == "table" and d.transaction or {}
  local function s(v) return v == nil and "" or tostring(v) end
  local code = s(t.responseCode)
  if code == "null" or (signer == "java" and code:lower() == "null") then code = "" end
  return table.concat({ s(e.event_type), s(e.requestId), s(m.userId), s(m.walletId), s(t.transactionId),
                        s(t.type), s(t.time), code, ts }, ":")
end

-- A genuine event re-cut: every signed field moved one place, so that
-- joined with ':' they are the very message Nomba signed (the time's colons
-- make it possible), under another requestId. A verifier must refuse it.
local function resplit(e)
  local m, t = e.data.merchant, e.data.transaction
  local hh, rest = t.time:match("^(.-T%d%d):(.*)$")
  e.requestId = e.requestId .. ":" .. m.userId
  m.userId, m.walletId = m.walletId, t.transactionId
  t.transactionId, t.type = t.type, hh
  t.time = rest
  return e
end

-- Nomba's retries of a failed delivery, in seconds after the one before.
local SCHEDULE = { 120, 280, 640, 1440, 3200 }

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

-- The headers and body of one delivery of event, dated `age` seconds ago.
local function delivery(body, key, event, age)
  event = cjson.decode(cjson.encode(event))         -- a copy: tamper and resplit change it
  local t = now() - age + (body.stale and -(body.stale_by or 9000) or 0) + (body.future and 3600 or 0)
  local ts = body.unix_ts and tostring(math.floor(t)) or iso(t)
  local sig = hmac_b64(key, signed_message(event, ts, body.signer))
  if body.tamper then event.data.transaction.transactionId = event.data.transaction.transactionId .. "X" end
  if body.resplit then event = resplit(event) end
  local headers = { ["nomba-signature"] = sig, ["nomba-sig-value"] = sig, ["nomba-timestamp"] = ts,
                    ["nomba-signature-algorithm"] = "HmacSHA256", ["nomba-signature-version"] = "1.0.0" }
  return headers, cjson.encode(event)
end

-- /_sim/webhook {url, key, event_type, request_id, response_code, signer,
--   unix_ts, duplicate, stale, future, tamper, resplit, retries, compress, ...}
-- retries: a failed delivery (not 2xx) is delivered again on Nomba's
-- schedule, up to five more times, `compress` times faster (default 1000);
-- each retry is dated as old as Nomba's would be (its timestamp is the
-- first send's), so the receiver's window sees Nomba's ages.
local function send_webhook(body)
  local key = body.key or setting("webhook_key")
  if type(body.url) ~= "string" or type(key) ~= "string" then
    return { error = "url and key (or config webhook_key) are required" }
  end
  local event = make_event(body)
  local out = { event = event, statuses = {}, ages = {} }
  local headers, payload = delivery(body, key, event, 0)
  out.event = cjson.decode(payload)
  for i = 1, body.duplicate and 2 or 1 do
    out.statuses[i], out.ages[i] = deliver(body.url, headers, payload) or 0, 0
  end
  if body.retries then
    local age, compress = 0, body.compress or 1000
    for _, wait in ipairs(SCHEDULE) do
      local last = out.statuses[#out.statuses]
      if last >= 200 and last < 300 then break end
      ngx.sleep(wait / compress)
      age = age + wait
      headers, payload = delivery(body, key, event, age)
      out.statuses[#out.statuses + 1] = deliver(body.url, headers, payload) or 0
      out.ages[#out.ages + 1] = age
    end
  end
  return out
end

return send_webhook
