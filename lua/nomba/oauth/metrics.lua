--- What a client has done and where it stands, for the people who run it:
-- the counts every client keeps (issues, refreshes, renewal failures, 401s,
-- rate-limit waits, API calls), `client:status()`, and `oauth.metrics()`, a
-- Prometheus text exposition of every client of this Lua state (every
-- client of the process, in plain Lua; of the worker, in nginx). No secret
-- is ever part of either. (Private to nomba.oauth; the public functions
-- are documented where they are exported.)
local core = require "nomba.oauth.core"
local platform = require "nomba.oauth.platform"

local pairs, ipairs, tostring, setmetatable = pairs, ipairs, tostring, setmetatable
local math_floor, concat, sort = math.floor, table.concat, table.sort

local S = {}

-- every client of this Lua state, and its state table (weak: a dropped
-- client leaves with its collection)
local clients = setmetatable({}, { __mode = "k" })

-- The counters, in the order they are shown, with what they count.
local COUNTERS = {
  { "issues", "logins with the client credentials that succeeded" },
  { "refreshes", "refreshes that succeeded" },
  { "renewal_failures", "renewals that failed (every attempt)" },
  { "unauthorized", "API calls Nomba answered 401 (each renews the token once)" },
  { "rate_limit_waits", "API calls that waited out, or were refused for, Nomba's spent rate-limit window" },
  { "requests", "API calls made with client:request" },
  { "request_failures", "API calls that ended in an error" },
  { "store_data_lost", "times the store found its data lost (Redis restarted empty, FLUSHALL): " ..
                       "exactly-once was at risk" },
}

-- The counts, all zero.
local function zeros()
  local c = {}
  for _, k in ipairs(COUNTERS) do c[k[1]] = 0 end
  return c
end

--- A new client: its place among the state's clients (its counts are made
-- when it first counts something: a client costs no more until it works).
function S.register(self, st)
  clients[self] = st
end

--- One more of `name` (a COUNTERS name). A client keeps the counters it
-- has used only (the others read as 0).
function S.count(st, name)
  local c = st.counts
  if not c then
    c = {}
    st.counts = c
  end
  c[name] = (c[name] or 0) + 1
end

--- A renewal ended: when, by which operation, and how (a success keeps
-- three fields: a tenant's renewal costs no more than it says).
function S.renewed(st, op, err)
  if err then
    st.renewal = { at = core.time(), op = op, ok = false, kind = err.kind, status = err.status, code = err.code }
    S.count(st, "renewal_failures")
  else
    st.renewal = { at = core.time(), op = op, ok = true }
  end
end

-- "none", "valid", "expiring" (due for renewal), "expired" or "closed"
local function token_state(self)
  if core.closed(self) then return "closed" end
  if core.fresh(self) then return "valid" end
  if core.fresh(self, 0) then return "expiring" end
  if core.has(self, "access") then return "expired" end
  return "none"
end

--- client:status(): a table with no secret in it.
function S.status(self, st)
  local left = core.remaining(self)
  local counts = zeros()
  for k, v in pairs(st.counts or counts) do counts[k] = v end
  local r = st.renewal
  return {
    account_id = st.account_id, client_id = st.client_id,
    token = token_state(self), expires_in = left > 0 and math_floor(left) or 0,
    renewing = st.renewing == true,
    last_renewal = r and { at = r.at, op = r.op, ok = r.ok, kind = r.kind, status = r.status, code = r.code },
    counts = counts, store = st.store ~= nil, nonblocking = st.nonblocking == true,
  }
end

-- A label value as the exposition format wants it.
local function label(v)
  return (tostring(v):gsub("[\\\"\n]", { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

--- oauth.metrics(): the exposition of every live client of this Lua state.
-- Clients of the same account and client id are one series (a fleet in one
-- process shares one session): counts are added up, `expires_in` is the
-- freshest. In nginx, each series carries the worker's id as `worker`.
function S.metrics()
  local groups, order = {}, {}
  for self, st in pairs(clients) do
    if not core.closed(self) then
      local key = tostring(st.account_id) .. "\0" .. tostring(st.client_id)
      local g = groups[key]
      if not g then
        g = { account_id = st.account_id, client_id = st.client_id, counts = zeros(), expires_in = 0, clients = 0,
              last = nil }
        groups[key] = g
        order[#order + 1] = key
      end
      g.clients = g.clients + 1
      if st.counts then
        for k, v in pairs(st.counts) do g.counts[k] = g.counts[k] + v end
      end
      local left = core.remaining(self)
      if left > g.expires_in then g.expires_in = left end
      local r = st.renewal
      if r and (not g.last or r.at > g.last.at) then g.last = r end
    end
  end
  sort(order)
  local worker = platform.ngx and platform.ngx.worker and platform.ngx.worker.id and platform.ngx.worker.id()
  local function labels(g)
    local s = ('account_id="%s",client_id="%s"'):format(label(g.account_id), label(g.client_id))
    if worker then s = s .. (',worker="%s"'):format(label(worker)) end
    return "{" .. s .. "}"
  end
  local out = {}
  local function family(name, kind, help, value)
    out[#out + 1] = ("# HELP nomba_oauth_%s %s\n# TYPE nomba_oauth_%s %s"):format(name, help, name, kind)
    for _, key in ipairs(order) do
      local g = groups[key]
      local v = value(g)
      if v ~= nil then out[#out + 1] = ("nomba_oauth_%s%s %s"):format(name, labels(g), v) end
    end
  end
  family("clients", "gauge", "clients of this account and client id", function(g) return g.clients end)
  family("token_expires_in_seconds", "gauge", "seconds the freshest kept token has left (0: none)",
         function(g) return math_floor(g.expires_in) end)
  family("last_renewal_timestamp_seconds", "gauge", "when the last renewal ended (Unix seconds)",
         function(g) return g.last and ("%.3f"):format(g.last.at) end)
  family("last_renewal_success", "gauge", "1 when the last renewal succeeded, else 0",
         function(g) return g.last and (g.last.ok and 1 or 0) end)
  for _, c in ipairs(COUNTERS) do
    family(c[1] .. "_total", "counter", c[2], function(g) return g.counts[c[1]] end)
  end
  return concat(out, "\n") .. "\n"
end

--- The counters' names and help texts (for adapters).
S.COUNTERS = COUNTERS

--- The live clients of this Lua state: an iterator of client, state.
function S.each()
  return pairs(clients)
end

return S
