--- A game server's billing hook: a player buys an item, the hook creates a
-- Nomba checkout order for it with client:request, and keeps working when
-- the token is revoked in the middle of the run (another process, the
-- dashboard, a security sweep): the 401 renews the session once and the
-- order is made once, never twice.
--
--    make examples      # runs this against the simulator
local oauth = require "nomba.oauth"

local client = oauth.new {
  account_id = assert(os.getenv("NOMBA_ACCOUNT_ID"), "set NOMBA_ACCOUNT_ID"),
  client_id = assert(os.getenv("NOMBA_CLIENT_ID"), "set NOMBA_CLIENT_ID"),
  client_secret = assert(os.getenv("NOMBA_CLIENT_SECRET"), "set NOMBA_CLIENT_SECRET"),
  base_url = os.getenv("NOMBA_BASE_URL"), cafile = os.getenv("NOMBA_CAFILE"),
  on_event = function(ev)
    if ev.op == "request" or not ev.ok then
      print(("  [event] %s %s %s -> %s"):format(ev.op, ev.method or "", ev.path or "",
            ev.ok and ev.status or ev.kind .. " " .. tostring(ev.status)))
    end
  end,
}

-- One purchase: an order whose reference is the purchase id, so a retry by
-- the game (not by the library) could never make a second one at Nomba.
local function checkout(purchase)
  local res, err = client:request {
    method = "POST", path = "/v1/checkout/order",
    json = { order = { amount = ("%.2f"):format(purchase.price), currency = "NGN",
                       orderReference = purchase.id, customerEmail = purchase.email } },
  }
  if not res then
    if err.maybe_sent then
      return nil, "unknown outcome: look the order up by its reference before charging again (" .. tostring(err) .. ")"
    end
    return nil, tostring(err)
  end
  return res.data.checkoutLink
end

local purchases = {
  { id = "p-1001", price = 1500, email = "ada@example.com" },
  { id = "p-1002", price = 250, email = "alan@example.com" },
  { id = "p-1003", price = 9900, email = "grace@example.com" },
}
for i, p in ipairs(purchases) do
  if i == 2 then
    -- the token is revoked elsewhere, mid-run
    assert(oauth.new {
      account_id = os.getenv("NOMBA_ACCOUNT_ID"), client_id = os.getenv("NOMBA_CLIENT_ID"),
      client_secret = os.getenv("NOMBA_CLIENT_SECRET"), base_url = os.getenv("NOMBA_BASE_URL"),
      cafile = os.getenv("NOMBA_CAFILE"),
    }:revoke(client:token()))
    print("(the session's token was revoked elsewhere)")
  end
  local link, err = checkout(p)
  print(("purchase %s: %s"):format(p.id, link or ("FAILED: " .. err)))
  if not link then os.exit(1) end
end
local balance = assert(client:request { path = "/v1/accounts/balance" })
print(("balance %s %s; rate limit %d of %d left"):format(balance.data.balance, balance.data.currency,
      balance.rate_limit.remaining, balance.rate_limit.limit))
client:close()
