--- The non-blocking mode on a libuv loop (Debian lua-luv): the client's
-- sockets are watched with uv polls and its timeout with a uv timer, so
-- client:step() runs only when a socket is ready or libcurl's timer is due,
-- never by polling. A 10 ms ticker shows that the loop never stalls while
-- a token is issued and then refreshed.
--
--    make examples      # runs this against the simulator
local uv = require "luv"
local oauth = require "nomba.oauth"

local client = oauth.new {
  account_id = assert(os.getenv("NOMBA_ACCOUNT_ID"), "set NOMBA_ACCOUNT_ID"),
  client_id = assert(os.getenv("NOMBA_CLIENT_ID"), "set NOMBA_CLIENT_ID"),
  client_secret = assert(os.getenv("NOMBA_CLIENT_SECRET"), "set NOMBA_CLIENT_SECRET"),
  base_url = os.getenv("NOMBA_BASE_URL"), cafile = os.getenv("NOMBA_CAFILE"),
  nonblocking = true,
}

-- The adapter: after every step(), the sockets libcurl wants watched and
-- the time until step() is due anyway. A poll handle lives for one round:
-- libcurl may close a socket (and reuse its number) inside step(), and
-- libuv must never watch a number that now names another socket.
local function drive(c)
  local polls, timer, steps = {}, uv.new_timer(), 0
  local sync
  local function ready()
    steps = steps + 1
    c:step()
    sync()
  end
  sync = function()
    for _, p in ipairs(polls) do p:stop() p:close() end
    polls = {}
    local socks, ms = c:sockets()
    for _, s in ipairs(socks) do
      local events = (s.read and "r" or "") .. (s.write and "w" or "")
      if events ~= "" then
        local p = uv.new_socket_poll(s.fd)
        p:start(events, ready)
        polls[#polls + 1] = p
      end
    end
    timer:stop()
    if ms >= 0 then timer:start(ms, 0, ready) end
  end
  return {
    sync = sync,
    steps = function() return steps end,
    close = function()
      for _, p in ipairs(polls) do p:stop() p:close() end
      timer:close()
    end,
  }
end

local driver = drive(client)
local started = uv.hrtime()
local ticks, longest, last = 0, 0, uv.hrtime()
local done = {}

local ticker = uv.new_timer()
ticker:start(10, 10, function()
  local t = uv.hrtime()
  local gap = (t - last) / 1e6
  if gap > longest then longest = gap end
  last, ticks = t, ticks + 1
  local elapsed = (t - started) / 1e9
  if (done.refresh ~= nil and elapsed > 0.5) or elapsed > 20 then
    ticker:stop()
    ticker:close()
    driver.close()
  end
end)

local function finished(op, nxt)
  return function(result, err)
    done[op] = result ~= nil
    print(("%s: %s after %d ticks"):format(op, result and "ok" or tostring(err), ticks))
    if nxt and result then
      assert(client:start(nxt, finished(nxt)))
      driver.sync()
    end
  end
end
assert(client:start("issue", finished("issue", "refresh")))
driver.sync()
uv.run()

print(("luv: %d ticks of 10 ms, longest gap %.1f ms, %d step() calls, issued %s, refreshed %s"):format(
  ticks, longest, driver.steps(), tostring(done.issue), tostring(done.refresh)))
client:close()
os.exit(done.issue and done.refresh and 0 or 1)
