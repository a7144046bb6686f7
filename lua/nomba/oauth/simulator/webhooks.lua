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

local function signed_message(e, ts)
  local d = type(e.data) == "table" and e.data or {}
  local m = type(d.merchant) == "table" and d.merchant or {}
  local t = type(d.transaction) == "table" and d.transaction or {}
  local function s(v) return v == nil and "" or tostring(v) end
  return table.concat({ s(e.event_type), s(e.requestId), s(m.userId), s(m.walletId), s(t.transactionId),
                        s(t.type), s(t.time), s(t.responseCode), ts }, ":")
end

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

-- /_sim/webhook {url, key, event_type, duplicate, stale, future, tamper, ...}
local function send_webhook(body)
  local key = body.key or setting("webhook_key")
  if type(body.url) ~= "string" or type(key) ~= "string" then
    return { error = "url and key (or config webhook_key) are required" }
  end
  local event = make_event(body)
  local t = now() + (body.stale and -3600 or 0) + (body.future and 3600 or 0)
  local ts = iso(t)
  local sig = hmac_b64(key, signed_message(event, ts))
  if body.tamper then event.data.transaction.transactionId = event.data.transaction.transactionId .. "X" end
  local payload = cjson.encode(event)
  local headers = { ["nomba-signature"] = sig, ["nomba-sig-value"] = sig, ["nomba-timestamp"] = ts,
                    ["nomba-signature-algorithm"] = "HmacSHA256", ["nomba-signature-version"] = "1.0.0" }
  local out = { event = event, statuses = {} }
  for i = 1, body.duplicate and 2 or 1 do
    out.statuses[i] = deliver(body.url, headers, payload) or 0
  end
  return out
end

return send_webhook
