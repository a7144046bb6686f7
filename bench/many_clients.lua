--- N clients of N accounts in one Lua state, each renewed once against the
-- simulator (its fixed issue answer), then held idle: how many connections
-- and descriptors they hold, and RSS per client. bench/bench.lua runs it;
-- alone:
--    lua5.4 tools/with-simulator.lua lua5.4 bench/many_clients.lua [N]
-- Prints one JSON object.
local oauth = require "nomba.oauth"
local cjson = require "cjson"

local N = tonumber(arg[1]) or 10000
local url, cafile = assert(os.getenv("NOMBA_SIM_URL")), assert(os.getenv("NOMBA_SIM_CAFILE"))

local procfs = require "procfs"
local rss_kib, fds, connections = procfs.rss_kib, procfs.fds, procfs.connections

local port = tonumber(url:match(":(%d+)$"))
collectgarbage()
collectgarbage()
local rss0, fd0, heap0 = rss_kib(), fds(), collectgarbage("count")
local t0 = os.clock()
local clients = {}
for i = 1, N do
  local c = oauth.new { account_id = ("acct-%06d"):format(i), client_id = ("client-%06d"):format(i),
                        client_secret = "secret-" .. i, base_url = url .. "/fixed", cafile = cafile,
                        retries = 0 }
  assert(c:token())
  clients[i] = c
end
local cpu = os.clock() - t0
collectgarbage()
collectgarbage()
local fd1, socks = fds()
local out = {
  clients = N,
  connections = connections(port),
  sockets = socks,
  fds_per_idle_client = (fd1 - fd0) / N,
  rss_bytes_per_client = (rss_kib() - rss0) * 1024 / N,
  heap_bytes_per_client = (collectgarbage("count") - heap0) * 1024 / N,
  cpu_seconds = cpu,
}
out.clients_alive = #clients          -- every client is still held, idle, with its token
print(cjson.encode(out))
