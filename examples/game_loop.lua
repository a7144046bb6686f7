--- A 60 Hz game loop that renews the Nomba token in the background: a
-- billing hook calls client:token{wait = false} every tick and never stalls,
-- even while a renewal is in flight.
--
--    make examples      # runs this against the simulator (a few seconds)
local oauth = require "nomba.oauth"
local core = require "nomba.oauth.core"      -- for a clock and a sleep; any will do

local client = oauth.new {
  account_id = assert(os.getenv("NOMBA_ACCOUNT_ID"), "set NOMBA_ACCOUNT_ID"),
  client_id = assert(os.getenv("NOMBA_CLIENT_ID"), "set NOMBA_CLIENT_ID"),
  client_secret = assert(os.getenv("NOMBA_CLIENT_SECRET"), "set NOMBA_CLIENT_SECRET"),
  base_url = os.getenv("NOMBA_BASE_URL"), cafile = os.getenv("NOMBA_CAFILE"),
  nonblocking = true,
  on_event = function(ev)
    print(("  [event] %s attempt %d: %s in %.1f ms"):format(ev.op, ev.attempt,
          ev.ok and "ok" or ev.kind, ev.elapsed * 1000))
  end,
}

local TICK = 1 / 60
local ticks, waited, longest, paid = 0, 0, 0, 0
local t_end = core.now() + (tonumber(os.getenv("GAME_SECONDS")) or 2)
while core.now() < t_end do
  local t0 = core.now()
  client:step()                               -- advances any renewal; never blocks
  local tok, err = client:token { wait = false }
  if tok then
    paid = paid + 1                           -- a billing call would use client:headers() here
  elseif err.kind == "pending" then
    waited = waited + 1                       -- no token yet: skip billing this tick
  else
    print("token: " .. tostring(err))
  end
  local dt = core.now() - t0
  if dt > longest then longest = dt end
  ticks = ticks + 1
  core.sleep(math.max(0, TICK - (core.now() - t0)))
end
print(("%d ticks at 60 Hz: %d with a token, %d waiting for the first one; longest tick work %.2f ms")
      :format(ticks, paid, waited, longest * 1000))
client:close()
