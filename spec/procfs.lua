--- This process as Linux's /proc sees it: resident memory, descriptors and
-- TCP connections. For the specs, the benchmarks and tools/gc_stress.lua.
local P = {}

local function pid()
  local f = assert(io.open("/proc/self/stat"))
  local n = f:read("*n")
  f:close()
  return n
end

--- Resident set size, KiB.
function P.rss_kib()
  local f = assert(io.open("/proc/self/statm"))
  local pages = tonumber(f:read("*a"):match("^%d+%s+(%d+)"))
  f:close()
  return pages * 4
end

--- Open descriptors: all of them, and the sockets among them; then the
-- socket inodes (a set).
function P.fds()
  local p = io.popen("ls -l /proc/" .. pid() .. "/fd 2>/dev/null")
  local all, socks, inodes = 0, 0, {}
  for line in p:lines() do
    if line:find(" -> ", 1, true) then
      all = all + 1
      local ino = line:match("socket:%[(%d+)%]")
      if ino then
        socks = socks + 1
        inodes[ino] = true
      end
    end
  end
  p:close()
  return all, socks, inodes
end

--- TCP connections of this process to a remote port (from /proc/net/tcp*).
function P.connections(port)
  local _, _, inodes = P.fds()
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

return P
