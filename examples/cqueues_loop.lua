--- The non-blocking mode under cqueues (Debian lua-cqueues): a coroutine
-- waits on the client's sockets and libcurl's timeout with cqueues.poll,
-- so client:step() runs only when a socket is ready or libcurl's timer is
-- due, never by polling. A 10 ms ticker shows that the loop never stalls
-- while a token is issued and then refreshed.
--
--    make examples      # runs this against the simulator
local cqueues = require "cqueues"
local oauth = require "nomba.oauth"

local client = oauth.new {
  account_id = assert(os.getenv("NOMBA_ACCOUNT_ID"), "set NOMBA_ACCOUNT_ID"),
  client_id = assert(os.getenv("NOMBA_CLIENT_ID"), "set NOMBA_CLIENT_ID"),
  client_secret = assert(os.getenv("NOMBA_CLIENT_SECRET"), "set NOMBA_CLIENT_SECRET"),
  base_url = os.getenv("NOMBA_BASE_URL"), cafile = os.getenv("NOMBA_CAFILE"),
  nonblocking = true,
}

-- A socket as cqueues.poll wants it: an object with pollfd() and events().
local Watched = {}
Watched.__index = Watched
function Watched:pollfd() return self.fd end
function Watched:events() return self.ev end

-- The adapter: a coroutine of the controller that sleeps in cqueues.poll
-- on what client:sockets() names, and steps the client when woken.
local function drive(cq, c, running)
  local steps = 0
  cq:wrap(function()
    while running() do
      local socks, ms = c:sockets()
      local args = {}
      for _, s in ipairs(socks) do
        local ev = (s.read and "r" or "") .. (s.write and "w" or "")
        if ev ~= "" then args[#args + 1] = setmetatable({ fd = s.fd, ev = ev }, Watched) end
      end
      -- nothing in flight: wake up now and then to see whether work was started
      args[#args + 1] = ms >= 0 and ms / 1000 or 0.05
      cqueues.poll((table.unpack or unpack)(args))  -- luacheck: ignore 143
      steps = steps + 1
      c:step()
    end
  end)
  return function() return steps end
end

local cq = cqueues.new()
local started = cqueues.monotime()
local ticks, longest = 0, 0
local done = {}
local function running()
  return not (done.refresh ~= nil and cqueues.monotime() - started > 0.5) and cqueues.monotime() - started < 20
end

cq:wrap(function()
  local last = cqueues.monotime()
  while running() do
    cqueues.sleep(0.01)
    local t = cqueues.monotime()
    if t - last > longest then longest = t - last end
    last, ticks = t, ticks + 1
  end
end)

local function finished(op, nxt)
  return function(result, err)
    done[op] = result ~= nil
    print(("%s: %s after %d ticks"):format(op, result and "ok" or tostring(err), ticks))
    if nxt and result then assert(client:start(nxt, finished(nxt))) end
  end
end
assert(client:start("issue", finished("issue", "refresh")))
local steps = drive(cq, client, running)
assert(cq:loop())

print(("cqueues: %d ticks of 10 ms, longest gap %.1f ms, %d step() calls, issued %s, refreshed %s"):format(
  ticks, longest * 1000, steps(), tostring(done.issue), tostring(done.refresh)))
client:close()
os.exit(done.issue and done.refresh and 0 or 1)
