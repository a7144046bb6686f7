--- A few of Nomba's other APIs, as the simulator serves them (inside nginx):
-- each checks the bearer and the accountId like the real API (the parent
-- account, or one of its sub-accounts), and answers the X-Rate-Limit-*
-- headers, with 429 past the limit (setting `rate_limit` calls a second per
-- account; 0: no limit).
--   GET  /v1/accounts/balance       the balance (and the accountId it is for)
--   POST /v1/checkout/order         an order: a checkout link (count "orders")
--   GET  /v1/transactions/accounts  transactions, paged by `page` and `limit`
local ngx = ngx
local S = require "nomba.oauth.simulator.state"
local respond, fail, now, load = S.respond, S.fail, S.now, S.load

local H = {}

-- Why a call is refused, counted: no token, unknown (revoked or never
-- issued), expired, or of a session another login ended.
local function refused(why)
  S.dict:incr("count:api_refused", 1, 0)
  S.dict:incr("count:api_refused_" .. why, 1, 0)
end

-- The token's record when the bearer is valid for this accountId.
local function authorized(account)
  local b = S.bearer()
  local at = b and load("at:" .. b)
  if not at then
    refused(b and "unknown" or "missing")
    return nil
  end
  if at.exp <= now() then
    refused("expired")
    return nil
  end
  if not S.current_session(at.client_id, at.session) then
    refused("ended")
    return nil
  end
  if at.account_id == account then return at end
  for _, c in ipairs(S.clients()) do
    if c.client_id == at.client_id then
      for _, sub in ipairs(c.sub_accounts or {}) do
        if sub == account then return at end
      end
    end
  end
end

-- The rate-limit headers for this account, and whether it is over.
local function rate(account)
  local limit = S.setting("rate_limit")
  if not limit or limit <= 0 then return {}, false end
  local key = "rl:" .. account .. ":" .. math.floor(ngx.now())
  local used = S.dict:incr(key, 1, 0, 2)
  local h = { ["X-Rate-Limit-Limit"] = tostring(limit), ["X-Rate-Limit-Window"] = "1s",
              ["X-Rate-Limit-Remaining"] = tostring(math.max(0, limit - used)) }
  return h, used > limit
end

local function guarded(account, f)
  local at = authorized(account)
  if not at then return fail(401, "401", "Unauthorized") end
  S.dict:incr("count:api_accepted", 1, 0)
  local h, over = rate(account)
  if over then
    h["Retry-After"] = "1"
    return respond(429, { code = "429", description = "Too many requests" }, h)
  end
  return f(at, h)
end

function H.protected(_, account)
  return guarded(account, function(_, h)
    return respond(200, { code = "00", description = "Success",
                          data = { balance = "1000.00", currency = "NGN", accountId = account } }, h)
  end)
end

function H.order(body, account)
  return guarded(account, function(_, h)
    local o = type(body.order) == "table" and body.order or body
    local amount = tonumber(o.amount)
    if not amount or amount <= 0 then return fail(400, "02", "order.amount is required") end
    local ref = o.orderReference or S.random_text(16)
    S.dict:incr("count:orders", 1, 0)
    return respond(200, { code = "00", description = "Success",
                          data = { orderReference = ref, checkoutLink = "https://checkout.nomba.com/pay/" .. ref,
                                   amount = ("%.2f"):format(amount), accountId = account } }, h)
  end)
end

function H.transactions(_, account)
  return guarded(account, function(_, h)
    local args = ngx.req.get_uri_args(20)
    local page, limit = tonumber(args.page) or 1, tonumber(args.limit) or 10
    local results = {}
    for i = 1, math.min(limit, 50) do
      results[i] = { id = ("tx-%d-%d"):format(page, i), amount = "100.00", type = "vact_transfer" }
    end
    return respond(200, { code = "00", description = "Success",
                          data = { page = page, limit = limit, results = results, query = args,
                                   accountId = account } }, h)
  end)
end

return H
