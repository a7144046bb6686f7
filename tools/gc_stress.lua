--- GC stress: 100,000 clients created and dropped (half closed explicitly,
-- half left to __gc), one in a thousand with a request done. Prints RSS and
-- open file descriptors along the way and fails if either keeps growing.
-- Run under tools/with-simulator.lua (make gc-stress).
local oauth = require "nomba.oauth"
local simulator = require "nomba.oauth.simulator"

local sim = simulator.attach { url = assert(os.getenv("NOMBA_SIM_URL")),
                               cafile = assert(os.getenv("NOMBA_SIM_CAFILE")) }
local N = tonumber(arg[1]) or 100000

local procfs = require "procfs"
local rss_kib = procfs.rss_kib
local function fds() return (procfs.fds()) end

local samples = {}
local opts = sim:client_options { retries = 0 }
for i = 1, N do
  local c = oauth.new(opts)
  if i % 1000 == 0 then assert(c:issue()) end
  if i % 2 == 0 then c:close() end
  if i % (N / 10) == 0 then
    collectgarbage()
    collectgarbage()
    samples[#samples + 1] = { i = i, rss = rss_kib(), fds = fds(), heap = collectgarbage("count") }
    local s = samples[#samples]
    print(("%7d clients: RSS %6d KiB, Lua heap %6.0f KiB, open fds %d"):format(s.i, s.rss, s.heap, s.fds))
  end
end
local first, last = samples[2], samples[#samples]   -- after warm-up
local grew_rss = last.rss - first.rss
print(("RSS growth from %d to %d clients: %d KiB; fds %d -> %d"):format(first.i, last.i, grew_rss,
      first.fds, last.fds))
assert(grew_rss < 4096, "RSS keeps growing")
assert(last.fds <= first.fds + 2, "file descriptors leak")
print("gc-stress: flat")
