--- Redis Sentinel: where the master is now.
-- (Private to nomba.oauth.store.redis.)
--
-- Asks the sentinels in turn (`SENTINEL get-master-addr-by-name`), starting
-- with the one that answered last, and believes an address only when the
-- node there says `ROLE` master: a sentinel that has not seen a failover
-- yet, or an old master that came back before Sentinel demoted it, is
-- never written to. The store asks again after a connection failure or a
-- `-READONLY` (a master demoted under an open connection).
local N = require "nomba.oauth.store.redis_node"

local type, tostring, tonumber, ipairs, setmetatable = type, tostring, tonumber, ipairs, setmetatable

local S = {}
S.__index = S

--- `sentinels`: a list of `{host =, port =}`; `name`: the master's name;
-- `p`: the sentinels' own `sentinel_username`/`sentinel_password`.
function S.new(sentinels, name, p)
  local auth = { username = p.sentinel_username, password = p.sentinel_password,
                 pool = "nomba-oauth-sentinel:", ssl = p.ssl, server_name = p.server_name }
  return setmetatable({ list = sentinels, name = name, first = 1,
                        connect = N.connector(auth) }, S)
end

local function role_of(conn)
  local r = N.command(conn, "role")
  return type(r) == "table" and r[1] or nil
end

--- Whether a connection is to a master (ROLE), or nil and why.
function S.is_master(conn)
  local role = role_of(conn)
  if role == "master" then return true end
  return nil, "the node is a " .. tostring(role or "node that does not answer ROLE") .. ", not the master"
end

--- The master's host and port as the sentinels report it, or nil and why;
-- `seconds` bounds each sentinel's connect and answer.
function S:master(seconds)
  local n, why = #self.list, "no sentinel answered"
  for i = 0, n - 1 do
    local k = (self.first - 1 + i) % n + 1
    local s = self.list[k]
    local conn, err = self.connect(s.host, s.port, seconds)
    if conn then
      N.bound(conn, seconds)
      local a, aerr = N.command(conn, "sentinel", "get-master-addr-by-name", self.name)
      N.release(conn, a ~= nil, 10000, true)
      if type(a) == "table" and type(a[1]) == "string" and tonumber(a[2]) then
        self.first = k
        return a[1], tonumber(a[2])
      end
      why = ("sentinel %s:%s: %s"):format(s.host, s.port,
            aerr and tostring(aerr) or ("does not know a master named " .. self.name))
    else
      why = tostring(err)
    end
  end
  return nil, why
end

--- The sentinels' addresses, for messages.
function S:names()
  local out = {}
  for i, s in ipairs(self.list) do out[i] = s.host .. ":" .. s.port end
  return table.concat(out, ",")
end

return S
