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

local function rss_kib()
  local f = assert(io.open("/proc/self/statm"))
  local pages = tonumber(f:read("*a"):match("^%d+%s+(%d+)"))
  f:close()
  return pages * 4
end

-- descriptors of this process: all, and the sockets among them
local function fds()
  local pid = assert(io.open("/proc/self/stat")):read("*n")
  local p = io.popen("ls -l /proc/" .. pid .. "/fd 2>/dev/null")
  local all, socks = 0, 0
  for line in p:lines() do
    if line:find(" -> ", 1, true) then
      all = all + 1
      if line:find("socket:", 1, true) then socks = socks + 1 end
    end
  end
  p:close()
  return all, socks
end

-- TCP connections of this process to the simulator's port (from /proc/net/tcp*)
local function connections(port)
  local pid = assert(io.open("/proc/self/stat")):read("*n")
  local inodes = {}
  local p = io.popen("ls -l /proc/" .. pid .. "/fd 2>/dev/null")
  for line in p:lines() do
    local ino = line:match("socket:%[(%d+)%]")
    if ino then inodes[ino] = true end
  end
  p:close()
  local n = 0
  for _, file in ipairs { "/proc/net/tcp", "/proc/net/tcp6" } do
    local f = io.open(file)
    if f then
      for line in f:lines() do
        local rport, ino = line:match("^%s*%d+: %x+:%x+ %x+:(%x+) %x+ %S+ %S+ %S+ +%d+ +%d+ (%d+)")
        if rport and tonumber(rport, 16) == port and inodes[ino] then n = n + 1 end
      end
      f:close()
    end
  end
  return n
end

local port = tonumber(url:match(":(%d+)$"))
collectgarbage()
collectgarbage()
local rss0, fd0 = rss_kib(), fds()
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
  cpu_seconds = cpu,
}
out.clients_alive = #clients          -- every client is still held, idle, with its token
print(cjson.encode(out))
