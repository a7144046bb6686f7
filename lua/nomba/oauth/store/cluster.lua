--- Redis Cluster: which node serves a key's slot.
-- (Private to nomba.oauth.store.redis.)
--
-- The slot map is read with `CLUSTER SLOTS` from the seeds or any node
-- seen since, and read again after a `MOVED`, a connection failure or a
-- `CLUSTERDOWN`/`TRYAGAIN`, by one caller at a time and at most once every
-- `every` seconds (a failover makes every waiting call ask: in nginx, every
-- request of a worker); until then a `MOVED` alone updates the one slot it
-- names. The map is its ranges, searched by halves. Only masters are
-- asked: a replica's answer may be stale.
local N = require "nomba.oauth.store.redis_node"
local core = require "nomba.oauth.core"

local type, tostring, tonumber, ipairs, setmetatable = type, tostring, tonumber, ipairs, setmetatable
local floor, sort = math.floor, table.sort
local slot_of = core.redis_slot

local C = {}
C.__index = C

function C.new(seeds)
  local known = {}
  for i, s in ipairs(seeds) do known[i] = { host = s.host, port = s.port } end
  return setmetatable({ known = known, ranges = {}, moved_to = {}, masters = {}, loaded = false, read_at = -1e9 },
                      C)
end

C.slot = slot_of

--- The node serving a slot: {host =, port =} (nil before the map is read).
function C:owner(slot)
  local m = self.moved_to[slot]
  if m then return m end
  local r = self.ranges
  local lo, hi = 1, #r
  while lo <= hi do
    local mid = floor((lo + hi) / 2)
    local x = r[mid]
    if slot < x[1] then
      hi = mid - 1
    elseif slot > x[2] then
      lo = mid + 1
    else
      return x[3]
    end
  end
  return nil
end

--- The node serving a slot: host, port (nil before the map is read).
function C:node(slot)
  local n = self:owner(slot)
  if n then return n.host, n.port end
  return nil
end

--- Whether the map is to be read now: it is stale, nobody is reading it,
-- and it was not read in the last `every` seconds (or it is empty).
function C:due(t, every)
  if self.loaded or (self.loading and t - self.loading < 5) then return false end
  return #self.ranges == 0 or t - self.read_at >= every
end

-- A node as the map gives it: {host, port, id}; an empty host means "the
-- node that answered" (Redis's cluster-announce may leave it out).
local function node_of(t, via)
  if type(t) ~= "table" or type(t[1]) ~= "string" or not tonumber(t[2]) then return nil end
  return { host = t[1] ~= "" and t[1] or via.host, port = tonumber(t[2]) }
end

--- Reads the slot map through a connection: true, or nil and why.
function C:load(conn, via)
  local map, err = N.command(conn, "cluster", "slots")
  if type(map) ~= "table" then return nil, "CLUSTER SLOTS: " .. tostring(err or "no map") end
  local ranges, masters, known, seen = {}, {}, {}, {}
  local covered = 0
  for _, range in ipairs(map) do
    local a, b = tonumber(range[1]), tonumber(range[2])
    local m = node_of(range[3], via)
    if a and b and m and a >= 0 and b <= 16383 and a <= b then
      local addr = m.host .. ":" .. m.port
      m = masters[addr] or m
      masters[addr] = m
      ranges[#ranges + 1] = { a, b, m }
      covered = covered + (b - a + 1)
      for i = 3, #range do
        local n = node_of(range[i], via)
        if n and not seen[n.host .. ":" .. n.port] then
          seen[n.host .. ":" .. n.port] = true
          known[#known + 1] = n
        end
      end
    end
  end
  if covered == 0 then return nil, "CLUSTER SLOTS: no slot is served" end
  for _, s in ipairs(self.known) do               -- the seeds stay known after every node of the map
    if not seen[s.host .. ":" .. s.port] then
      seen[s.host .. ":" .. s.port] = true
      known[#known + 1] = s
    end
  end
  sort(ranges, function(x, y) return x[1] < y[1] end)
  self.ranges, self.masters, self.known, self.loaded, self.moved_to = ranges, masters, known, true, {}
  return true
end

--- A redirection in an error reply: "MOVED" or "ASK", the slot, host, port.
function C.redirect(err)
  local kind, slot, host, port = tostring(err):match("^(%u+) (%d+) (%S+):(%d+)")
  if kind ~= "MOVED" and kind ~= "ASK" then return nil end
  if host == "" then return nil end
  return kind, tonumber(slot), host, tonumber(port)
end

--- Whether an error reply means the cluster is between maps (a failover,
-- a slot in migration): wait a moment and read the map again.
function C.unsettled(err)
  local s = tostring(err)
  return s:find("^CLUSTERDOWN") or s:find("^TRYAGAIN") or s:find("^MASTERDOWN") or false
end

--- MOVED: that slot is served there now.
function C:moved(slot, host, port)
  self.moved_to[slot] = { host = host, port = port }
  self.loaded = false                     -- read the whole map again (when due)
end

--- A key of the node's own (a slot it serves), for the store's data-loss
-- marker: `base` with a hash tag, "{base-N}", N the first that lands there.
function C:own_key(host, port, base)
  local m = self.masters[host .. ":" .. port]
  if not m then return nil end
  m.marker = m.marker or {}
  if m.marker[base] ~= nil then return m.marker[base] or nil end
  -- (a master of k slots: 16384 / k tries on average; a master of a few slots is left unwatched)
  for n = 0, 20000 do
    local k = "{" .. base .. "-" .. n .. "}"
    if self:owner(slot_of(k)) == m then
      m.marker[base] = k
      return k
    end
  end
  m.marker[base] = false
  return nil
end

return C
