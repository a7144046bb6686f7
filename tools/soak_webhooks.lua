-- The chaos soak's webhook feeder (tools/soak.lua): until the deadline, the
-- simulator delivers signed events to the nginx members, with Nomba's retry
-- schedule (compressed) after a failed delivery: to one member or the other,
-- a handler that fails twice first, a duplicate, and the same event to both
-- members. Writes every event's requestId and statuses to OUTFILE (JSON).
--   lua5.4 tools/soak_webhooks.lua URL_A URL_B SECONDS OUTFILE
local url_a, url_b, seconds, outfile = arg[1], arg[2], tonumber(arg[3]), arg[4]
local simulator = require "nomba.oauth.simulator"
local core = require "nomba.oauth.core"
local cjson = require "cjson"

local sim = simulator.attach { url = os.getenv("NOMBA_SIM_URL"), cafile = os.getenv("NOMBA_SIM_CAFILE") }
local events, n = {}, 0
local deadline = core.now() + seconds
while core.now() < deadline do
  n = n + 1
  local id = ("soak-%d-%d"):format(os.time(), n)
  local kind = n % 4
  local target = n % 2 == 0 and url_a or url_b
  local o = { url = target .. "/webhook", request_id = id, retries = true, compress = 200,
              transaction_type = kind == 1 and "fail_2" or "vact_transfer", duplicate = kind == 2 }
  -- (Nomba's schedule compressed 200 times: 28 s when every delivery fails)
  local r = sim:webhook(o, 60)
  local statuses = r and r.statuses or {}
  if kind == 3 then                                 -- the same event to the other member too
    o.url = (target == url_a and url_b or url_a) .. "/webhook"
    local r2 = sim:webhook(o, 60)
    for _, s in ipairs(r2 and r2.statuses or {}) do statuses[#statuses + 1] = s end
  end
  events[#events + 1] = { id = id, statuses = statuses }
  core.sleep(0.5)
end
local f = assert(io.open(outfile, "w"))
f:write(cjson.encode(events))
f:close()
