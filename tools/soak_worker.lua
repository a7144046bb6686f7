-- A plain Lua member of the chaos soak (tools/soak.lua): a client sharing
-- the fleet's session through Redis makes an API call every 100 ms, blocking
-- (client:request) or non-blocking (start + step() from a 10 ms game loop),
-- until the deadline, and logs each outcome as nginx members do:
--   c <time> <ok 1|0> <kind>
-- The "foreign" member calls (blocking) with an accountId Nomba does not
-- cover, throughout: its calls are refused, and must cost the fleet's
-- session nothing (the 401 rule); it logs them apart, with the error's
-- kind and status:
--   f <time> <ok 1|0> <kind> <status>
--   lua5.4 tools/soak_worker.lua NAME blocking|nonblocking|foreign URL CAFILE REDIS SECONDS LOGFILE
-- REDIS: a port, "sentinel:NAME:PORT,..." or "cluster:PORT,..." (spec/redis_ha.lua's store spec).
local name, mode, url, cafile, redis_spec, seconds, logfile = arg[1], arg[2], arg[3], arg[4], arg[5],
  tonumber(arg[6]), arg[7]
local oauth = require "nomba.oauth"
local core = require "nomba.oauth.core"
local simulator = require "nomba.oauth.simulator"

local log = assert(io.open(logfile, "a"))
log:setvbuf("line")
local pid = io.open("/proc/self/stat"):read("*l"):match("^(%d+)")
local client = oauth.new {
  account_id = simulator.CLIENT.account_id, client_id = simulator.CLIENT.client_id,
  client_secret = simulator.CLIENT.client_secret, base_url = url, cafile = cafile, timeout = 2, retries = 1,
  store = require("redis_ha").store(redis_spec, { prefix = "soak:" }),
  nonblocking = mode == "nonblocking", user_agent = "soak-" .. name .. "-" .. pid,
}

local function record(ok, kind)
  log:write(("c %.3f %d %s\n"):format(core.now(), ok and 1 or 0, kind))   -- monotonic: one clock for all
end

local deadline = core.now() + seconds
local next_call = core.now()
if mode == "nonblocking" then
  -- a game loop starts its calls once it holds a token (before, start() answers
  -- "pending" by design, which is no call made): step() until then, 10 s at most
  local ready_by = core.now() + 10
  while not client:token { wait = false } and core.now() < ready_by do
    client:step()
    client:wait(0.01)
  end
  local in_flight = false
  while core.now() < deadline do
    client:step()
    if not in_flight and core.now() >= next_call then
      next_call = core.now() + 0.1
      local started, err = client:start("request", { path = "/v1/accounts/balance" }, function(res, e)
        in_flight = false
        record(res ~= nil, res and "ok" or tostring(e.kind))
      end)
      -- start() answers "pending" when the kept token is not valid (a
      -- renewal runs): outside a fault's window, a member holds a valid
      -- token at all times, so that is a failure like any other
      if started then in_flight = true else record(false, tostring(err.kind)) end
    end
    core.sleep(0.01)
  end
elseif mode == "foreign" then
  while core.now() < deadline do
    local res, err = client:request { path = "/v1/accounts/balance", account_id = "soak-foreign-account" }
    log:write(("f %.3f %d %s %s\n"):format(core.now(), res and 1 or 0, res and "ok" or tostring(err.kind),
                                           tostring(res and res.status or err.status)))
    core.sleep(0.1)
  end
else
  while core.now() < deadline do
    local res, err = client:request { path = "/v1/accounts/balance" }
    record(res ~= nil, res and "ok" or tostring(err.kind))
    local wait = next_call + 0.1 - core.now()
    next_call = core.now() + math.max(wait, 0)
    if wait > 0 then core.sleep(wait) end
  end
end
log:close()
client:close()
