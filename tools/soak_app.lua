-- The nginx members of the chaos soak (tools/soak.lua): every worker holds a
-- client on cosockets sharing the fleet's session through Redis, keeps it
-- fresh from a timer (keep_fresh), and drives its own traffic from another:
-- client:headers() every 50 ms, timed, and client:request every 200 ms.
-- Each outcome is a line of the worker's log for the driver to judge:
--   c <time> <ok 1|0> <kind>        an API call (time: the monotonic clock, one for all members)
--   h <phase> <microseconds> <time> a headers() call
-- /webhook is a Nomba receiver (resty.webhook, claims in Redis) whose
-- handler counts each grant in the instance's shared dict (/granted); /phase
-- sets the phase headers() are filed under.
local oauth = require "nomba.oauth"
local resty = require "nomba.oauth.resty"
local core = require "nomba.oauth.core"

local M = {}
local cfg, client, store, log

local function redis_store()
  return require("redis_ha").store(cfg.redis, { prefix = "soak:" })   -- one node, Sentinel or Cluster
end

function M.init(c) cfg = c end

function M.init_worker()
  store = redis_store()
  client = oauth.new { account_id = cfg.account_id, client_id = cfg.client_id, client_secret = cfg.client_secret,
                       base_url = cfg.url, transport = resty, store = store, timeout = 2, retries = 1,
                       user_agent = "soak-" .. cfg.name .. "-" .. ngx.worker.pid(), log = false }
  log = assert(io.open(("%s/%s-%d.log"):format(cfg.dir, cfg.name, ngx.worker.pid()), "a"))
  log:setvbuf("line")
  assert(resty.keep_fresh(client, { interval = 1 }))
  local n = 0
  local function tick(premature)
    if premature then return end
    n = n + 1
    local t0 = core.now()
    client:headers()
    log:write(("h %s %d %.3f\n"):format(ngx.shared.soak:get("phase") or "quiet", math.floor((core.now() - t0) * 1e6),
                                      t0))
    if n % 4 == 0 then
      local res, err = client:request { path = "/v1/accounts/balance" }
      log:write(("c %.3f %d %s\n"):format(core.now(), res and 1 or 0, res and "ok" or tostring(err.kind)))
    end
  end
  assert(ngx.timer.every(0.05, tick))
end

local routes = {}

routes["/phase"] = function()
  ngx.shared.soak:set("phase", ngx.var.arg_name)
  ngx.say("ok")
end

routes["/ping"] = function() ngx.say("pong") end

-- a grant, counted in this instance's shared dict (the application's own
-- record, apart from the claims in Redis); the driver adds the instances up
local function grant(id)
  return ngx.shared.soak:incr("granted:" .. id, 1, 0)
end

routes["/granted"] = function()
  local out = {}
  for id in (ngx.var.arg_ids or ""):gmatch("[^,]+") do out[#out + 1] = ngx.shared.soak:get("granted:" .. id) or 0 end
  ngx.say(table.concat(out, ","))
end

routes["/webhook"] = function()
  return resty.webhook {
    key = "sim-webhook-key-0001", store = redis_store(), lease = 5,
    handler = function(event)
      if event.data.transaction.type == "fail_2" then       -- fails the first two deliveries
        local f = ngx.shared.soak:incr("failed:" .. event.requestId, 1, 0)
        if f <= 2 then return false end
      end
      grant(event.requestId)
      return true
    end,
  }
end

function M.handle()
  local f = routes[ngx.var.uri]
  if not f then return ngx.exit(404) end
  return f()
end

return M
