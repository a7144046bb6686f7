-- The handler module of examples/openresty/nginx.conf: one client per
-- worker, on cosockets, sharing its token with every other worker.
local oauth = require "nomba.oauth"
local resty = require "nomba.oauth.resty"

local M = {}

M.client = oauth.new {
  account_id = os.getenv("NOMBA_ACCOUNT_ID"),
  client_id = os.getenv("NOMBA_CLIENT_ID"),
  client_secret = os.getenv("NOMBA_CLIENT_SECRET"),
  base_url = os.getenv("NOMBA_BASE_URL"),           -- nil: production
  transport = resty,                                -- never block the worker
  store = oauth.store.shdict(ngx.shared.nomba),     -- one token, one session, for all workers
  -- the client logs to the error log itself: each renewal (info), a failed
  -- renewal once (warn or error), a failed attempt (info)
}

-- For a load balancer or an orchestrator: 200 while this worker holds a
-- usable token, else 503; the body is client:status() (no secret in it).
function M.health()
  local s = M.client:status()
  ngx.status = (s.token == "valid" or s.token == "expiring") and 200 or 503
  ngx.header["Content-Type"] = "application/json"
  ngx.say(require("cjson").encode(s))
end

-- For Prometheus: the counters of this worker's clients (each scrape sees
-- the worker that answers it; nomba.oauth.resty.prometheus feeds
-- nginx-lua-prometheus, which adds the workers up, when you use it).
function M.metrics()
  ngx.header["Content-Type"] = "text/plain; version=0.0.4"
  ngx.print(oauth.metrics())
end

-- One Nomba API call proxied: client:request rides the same cosocket
-- transport, renews the shared token once on a 401, and retries a GET
-- through transient failures.
function M.balance()
  local res, err = M.client:request { path = "/v1/accounts/balance" }
  if not res then
    ngx.status = err.response and err.response.status or 502
    return ngx.say(tostring(err))
  end
  ngx.status = res.status
  ngx.header["Content-Type"] = "application/json"
  ngx.say(res.body)
end

-- Nomba's webhook: a delivery is granted once, fleet-wide, and only when
-- its signature holds. Read only the signed fields (see the README).
function M.webhook()
  return resty.webhook {
    key = os.getenv("NOMBA_WEBHOOK_KEY"),
    store = oauth.store.shdict(ngx.shared.nomba),
    handler = function(event)
      local tx = event.data and event.data.transaction or {}
      ngx.log(ngx.NOTICE, "nomba ", event.event_type, " ", tostring(tx.transactionId))
      return true                                   -- false or a raise: 500, Nomba delivers again
    end,
  }
end

return M
