--- make soak: the chaos soak. A fleet on loopback shares one Nomba session
-- for SOAK_S seconds (180 by default; SOAK_S=1800 for a long run) while
-- faults are injected on a schedule, then the run is judged:
--   * the fleet: two nginx instances of 4 workers (cosockets, keep_fresh,
--     webhooks) and four plain Lua processes (two blocking, two
--     non-blocking, one of them with a wall clock that steps an hour), all
--     sharing the session through Redis; the simulator with SOAK_LIFETIME
--     (20) second tokens, one session per client as Nomba keeps it;
--   * the faults: 5xx bursts, resets after Nomba processed the call, slow
--     answers, 429 with Retry-After, a server-side revocation, Redis
--     restarted twice, an nginx reloaded, the holder of the renewal lock
--     killed with SIGKILL while its renewal is in flight, a clock step;
--   * the figures: API calls made outside a fault's window (and its grace)
--     that succeeded (target 100%), logins and refreshes per token
--     lifetime (target 1.2 at most), sessions ended by a parallel login
--     (target 0), headers() p99 in nginx during the faults against before
--     them (reported), RSS and descriptors of every member (flat), and
--     every webhook event granted exactly once.
-- Prints them, and writes them as JSON to SOAK_JSON when set (spec/24-soak
-- asserts the targets). Runs under tools/with-simulator.lua (make soak).
local H = require "helpers"
local simulator = require "nomba.oauth.simulator"
local core = require "nomba.oauth.core"
local cjson = require "cjson"

local SOAK_S = tonumber(os.getenv("SOAK_S")) or 180
local LIFETIME = tonumber(os.getenv("SOAK_LIFETIME")) or 20
local LUA = arg[-1] or "lua5.4"
local ROOT = os.getenv("PWD") or "."
local FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
local GRACE = 6                  -- seconds after a fault's window that still belong to it
local now, sh = core.now, H.sh

local sim = simulator.attach { url = assert(os.getenv("NOMBA_SIM_URL")),
                               cafile = assert(os.getenv("NOMBA_SIM_CAFILE")) }
assert(sim:reset())
assert(sim:config { lifetime = LIFETIME, rate_limit = 0, log = "auth" })
local dir = sh("mktemp -d /tmp/nomba-soak.XXXXXX"):gsub("%s+$", "")
-- Redis as production runs it: persistence on (a restart keeps the shared token and the
-- webhook claims; without it the next member to start logs in afresh, see the README).
-- SOAK_REDIS=sentinel (a master, two replicas, three sentinels) or cluster (three masters with a
-- replica each) runs the fleet on those: their "restart" is the master killed with SIGKILL (the
-- fleet's master, on the Cluster), a failover, and the old master started again 2 s later.
local REDIS_KIND = os.getenv("SOAK_REDIS") or "single"
local T = require "redis_ha"
local redis, topo, redis_spec
if REDIS_KIND == "sentinel" then
  topo = assert(T.sentinel { appendonly = true })
  local ports = {}
  for i, n in ipairs(topo.sentinels) do ports[i] = n.port end
  redis_spec = "sentinel:" .. topo.master_name .. ":" .. table.concat(ports, ",")
elseif REDIS_KIND == "cluster" then
  topo = assert(T.cluster { appendonly = true })
  local ports = {}
  for i, n in ipairs(topo.seeds) do ports[i] = n.port end
  redis_spec = "cluster:" .. table.concat(ports, ",")
else
  assert(REDIS_KIND == "single", "SOAK_REDIS is single, sentinel or cluster")
  redis = assert(H.redis(nil, "--appendonly yes --appendfsync always"))
  redis_spec = tostring(redis.port)
end
-- redis-cli on every data node
local function redis_cli(args)
  if redis then return redis.cli(args) end
  local out
  for _, n in ipairs(topo.nodes) do if n.pid then out = topo.cli(n.port, args) end end
  return out
end
local start = now()
local windows = {}              -- {name, t0, t1}
local events = {}               -- what happened when, for the report

local function say(fmt, ...)
  local line = ("[%6.1f s] " .. fmt):format(now() - start, ...) .. (" (wall %d)"):format(os.time())
  events[#events + 1] = line
  io.stdout:write(line, "\n")
  io.stdout:flush()
end

-- the nginx members --------------------------------------------------------------------------
local HTTP = [[
  lua_package_path "${root}/lua/?.lua;${root}/tools/?.lua;${root}/spec/?.lua;/usr/share/lua/5.1/?.lua;;";
  lua_shared_dict nomba 1m;
  lua_shared_dict soak 1m;
  lua_ssl_trusted_certificate ${cafile};
  init_by_lua_block { require("soak_app").init(require("cjson").decode([==[${config}]==])) }
  init_worker_by_lua_block { require("soak_app").init_worker() }
  server {
    listen 127.0.0.1:${port};
    location / { content_by_lua_block { require("soak_app").handle() } }
  }
]]

local function nginx(name)
  local c = sim.client
  local a = assert(simulator.spawn_nginx {
    http = HTTP, workers = 4, cpath_prefix = ROOT .. "/build/jit/?.so;",
    vars = { root = ROOT, cafile = sim.cafile, config = cjson.encode {
      name = name, dir = dir, url = sim.url, account_id = c.account_id, client_id = c.client_id,
      client_secret = c.client_secret, redis = redis_spec } },
  })
  a.url = "http://127.0.0.1:" .. a.port
  a.name = name
  return a
end

local nginxes = { nginx("nginxA"), nginx("nginxB") }

local function phase(name)
  for _, a in ipairs(nginxes) do sh("curl -s --max-time 5 '" .. a.url .. "/phase?name=" .. name .. "'") end
end
phase("warmup")                 -- headers() timings from the start to 10% (first tokens, JIT) are not kept

-- the plain Lua members -----------------------------------------------------------------------
local members = {}
local step_file = dir .. "/clock-step"
do
  local f = assert(io.open(step_file, "w"))
  f:write("+0\n")
  f:close()
end

local function member(name, mode, stepped)
  local env = ""
  if stepped then
    env = ("env LD_PRELOAD=%s FAKETIME_TIMESTAMP_FILE=%s FAKETIME_NO_CACHE=1 DONT_FAKE_MONOTONIC=1 ")
          :format(FAKETIME, step_file)
  end
  local left = math.max(1, math.floor(SOAK_S - (now() - start)))
  local cmd = ("%s%s tools/soak_worker.lua %s %s '%s' '%s' %s %d %s/%s.log >/dev/null 2>%s/%s.err & echo $!")
              :format(env, LUA, name, mode, sim.url, sim.cafile, redis_spec, left, dir, name, dir, name)
  local pid = sh(cmd):match("%d+")
  members[name] = { pid = pid, mode = mode }
  return pid
end

member("lua1", "blocking")
member("lua2", "blocking")
member("lua3", "nonblocking", true)
member("lua4", "nonblocking")
member("foreign", "foreign")                -- an accountId Nomba does not cover, throughout

local feeder = io.popen(("%s tools/soak_webhooks.lua '%s' '%s' %d %s/webhooks.json 2>&1"):format(
  LUA, nginxes[1].url, nginxes[2].url, math.floor(SOAK_S * 0.85), dir))

-- RSS and descriptors of every member ---------------------------------------------------------
local function proc(pid)
  local st = io.open("/proc/" .. pid .. "/status")
  if not st then return nil end
  local rss = tonumber(st:read("*a"):match("VmRSS:%s*(%d+)"))
  st:close()
  local fds = tonumber(sh("ls /proc/" .. pid .. "/fd 2>/dev/null | wc -l"))
  return rss, fds
end

local function sample()
  local out = {}
  for name, m in pairs(members) do
    local rss, fds = proc(m.pid)
    if rss then out[name] = { rss_kib = rss, fds = fds } end
  end
  for _, a in ipairs(nginxes) do
    local rss, fds, n = 0, 0, 0
    for pid in sh("pgrep -P " .. a.pid):gmatch("%d+") do
      if os.getenv("SOAK_KEEP") then os.execute(("ls -l /proc/%s/fd >> %s/fds-%s.txt 2>&1"):format(pid, dir, pid)) end
      local r, f = proc(pid)
      if r then rss, fds, n = rss + r, fds + f, n + 1 end
    end
    out[a.name] = { rss_kib = rss, fds = fds, workers = n }
  end
  return out
end

-- the schedule ---------------------------------------------------------------------------------
-- One cycle of faults (the whole run up to 300 s; cycles of 180 s in a longer run, each the same),
-- the simulator's session counters sampled while waiting, so that a session ended can be filed
-- under the fault it came in (or not).
local CYCLE = SOAK_S <= 300 and SOAK_S or 180
local CYCLES = math.floor(SOAK_S / CYCLE)
local sessions = {}             -- {t, ended, refused_ended}
local last_count = 0
local function count_sessions()
  local c = sim:counts()
  if c then sessions[#sessions + 1] = { now(), c.sessions_ended or 0, c.api_refused_ended or 0 } end
end

local function at(t)
  while now() < t do
    core.sleep(0.05)
    if now() - last_count >= 0.5 then
      last_count = now()
      count_sessions()
    end
  end
end

-- SOAK_ONLY=revoke,redis runs only the faults whose tags it names (to look at one)
local ONLY = os.getenv("SOAK_ONLY")
local function window(name, seconds, f, tag)
  if ONLY and not ("," .. ONLY .. ","):find("," .. tostring(tag) .. ",", 1, true) then return end
  local t0 = now()
  say("%s", name)
  if f then f() end
  if seconds > 0 then core.sleep(seconds) end
  windows[#windows + 1] = { name = name, t0 = t0, t1 = now() }
end

local function burst(fault, seconds)
  fault.during = seconds
  assert(sim:fault(fault))
end

local function kill_lock_holder()
  -- the next renewal is held by the simulator: its sender holds the lock
  local seen = #assert(sim:log())
  assert(sim:fault { endpoint = "refresh", hold = true, pass = true })
  assert(sim:fault { endpoint = "issue", hold = true, pass = true })
  local deadline, holder = now() + LIFETIME, nil
  while now() < deadline and not holder do
    local log = assert(sim:log())
    for i = seen + 1, #log do
      local r = log[i]
      local ua = r.headers and (r.headers["User-Agent"] or r.headers["user-agent"])
      if (r.endpoint == "refresh" or r.endpoint == "issue") and ua then
        holder = ua
        break
      end
    end
    if not holder then core.sleep(0.1) end
  end
  local name, pid = tostring(holder):match("^soak%-(%w+)%-(%d+)$")
  if pid then
    os.execute("kill -9 " .. pid)
    say("  killed %s (pid %s) while it held the renewal lock", name, pid)
    local m = members[name]
    if m then                                       -- a Lua member: another takes its place
      members[name] = nil
      member(name .. "b", m.mode)
    end
  else
    say("  no renewal came to hold (%s)", tostring(holder))
  end
  assert(sim:release("refresh"))
  assert(sim:release("issue"))
  -- the holder's request reached Nomba, which rotated the session: the fleet
  -- learns it only when the lock's lease ends and it logs in again
  core.sleep(LIFETIME / 2)
end

-- The next renewal answered 429 with a Retry-After longer than the lock's lease (timeout 2 + 1 s)
-- and than the old lock's life (5 s): its holder keeps the lease and waits; the others keep their
-- valid tokens. The window covers the next renewal (within half a lifetime) and the wait.
local RENEWAL_RETRY_AFTER = 8
local function renewal_retry_after()
  local fault = { status = 429, headers = { ["Retry-After"] = tostring(RENEWAL_RETRY_AFTER) },
                  body = { code = "429", description = "Too many requests", data = cjson.null } }
  fault.endpoint = "refresh"
  assert(sim:fault(fault))
  fault.endpoint = "issue"
  assert(sim:fault(fault))
  core.sleep(LIFETIME / 2 + RENEWAL_RETRY_AFTER + 1)
  assert(sim:control("/_sim/clear_faults", {}))
end

-- Redis refuses every write (maxmemory reached, noeviction) and still answers reads.
local function redis_refuses_writes(seconds)
  assert(redis_cli("config set maxmemory-policy noeviction"):match("OK"))
  assert(redis_cli("config set maxmemory 1"):match("OK"))
  core.sleep(seconds)
  assert(redis_cli("config set maxmemory 0"):match("OK"))
end

local function redis_restart()
  if redis then
    redis.stop()
    core.sleep(2)
    assert(redis.restart(), "redis did not restart")
    return
  end
  -- the (fleet's) master killed with SIGKILL: a failover; the old master back 2 s later
  local old
  if REDIS_KIND == "sentinel" then
    old = select(2, topo.master())
  else
    local probe = require("nomba.oauth").new { account_id = sim.client.account_id, client_id = sim.client.client_id,
                                               client_secret = sim.client.client_secret, base_url = sim.url,
                                               cafile = sim.cafile }
    old = topo.master_of(core.redis_slot("{" .. core.store_id(probe) .. "}"))
    probe:close()
  end
  topo.kill(old)
  say("  killed the master on port %d", old)
  core.sleep(2)
  assert(topo.restart(old), "redis did not restart")
end

local samples = {}              -- {label, sample}
local function cycle(k)
  local c0 = start + (k - 1) * CYCLE
  local function when(f) at(c0 + CYCLE * f) end
  when(0.10)
  if k == 1 then
    samples[#samples + 1] = { "start", sample() }
    phase("quiet")
  end
  when(0.12)
  phase("faults")
  window("5xx burst: the balance answers 503 for 3 s", 3, function()
    burst({ endpoint = "protected", status = 503, body = "busy", content_type = "text/plain" }, 3)
  end, "burst")
  when(0.17)
  window("resets after Nomba processed the call, for 3 s", 3,
    function() burst({ endpoint = "protected", after = true }, 3) end, "reset")
  when(0.22)
  window("slow answers (1.5 s) for 3 s", 3,
    function() burst({ endpoint = "protected", delay = 1.5, pass = true }, 3) end, "slow")
  when(0.27)
  window("429 with Retry-After 1 for 2 s", 2, function()
    burst({ endpoint = "protected", status = 429, headers = { ["Retry-After"] = "1" },
            body = { code = "429", description = "Too many requests" } }, 2)
  end, "429")
  -- (30 s from either Redis restart: a webhook event's compressed retries, 28 s, meet one Redis
  -- fault at most, as Nomba's 95 minutes would)
  when(0.29)
  window("Redis refuses every write for 5 s (maxmemory, noeviction)", 0,
    function() redis_refuses_writes(5) end, "readonly")
  when(0.33)
  window(("the next renewal answered 429 with Retry-After %d s (longer than the lock's lease)")
         :format(RENEWAL_RETRY_AFTER), 0, renewal_retry_after, "renewal429")
  when(0.45)
  window("server-side revocation of every token", 0,
    function() assert(sim:control("/_sim/revoke_all", { client_id = sim.client.client_id })) end, "revoke")
  when(0.50)
  window(redis and "Redis restarted (down 2 s)" or
         ("the %s master killed with SIGKILL (a failover; back 2 s later)"):format(REDIS_KIND), 0, redis_restart,
         "redis")
  when(0.57)
  window("nginxA reloaded", 1, function() os.execute("kill -HUP " .. nginxes[1].pid) end, "reload")
  when(0.62)
  window("the holder of the renewal lock killed with SIGKILL", 0, kill_lock_holder, "kill")
  when(0.78)
  window(redis and "Redis restarted again (down 2 s)" or
         ("the %s master killed again"):format(REDIS_KIND), 0, redis_restart, "redis")
  if k == 1 then
    when(0.82)
    window("lua3's wall clock steps an hour ahead", 0, function()
      local f = assert(io.open(step_file, "w"))
      f:write("+3600\n")
      f:close()
    end, "clock")
  end
  when(0.88)
  phase("after")
  if k == 1 then samples[#samples + 1] = { "after the first faults", sample() } end
  when(0.97)
  samples[#samples + 1] = { "end of cycle " .. k, sample() }
  when(1.0)
  phase("quiet")
end

for k = 1, CYCLES do cycle(k) end
at(start + SOAK_S)
core.sleep(1.5)                                     -- the members stop at their deadline

-- the figures ---------------------------------------------------------------------------------
local function faulty(t)
  for _, w in ipairs(windows) do
    if t >= w.t0 - 0.2 and t <= w.t1 + GRACE then return w.name end
  end
end

local calls = { outside = 0, outside_ok = 0, during = 0, during_ok = 0, failures = {} }
-- the foreign member's calls outside faults: each must be the caller's error (api, 401)
local foreign = { calls = 0, refused = 0, other = {} }
local headers = { quiet = {}, faults = {}, after = {} }
local by_fault = {}             -- the headers() timings of each fault's window
for file in sh("ls " .. dir .. "/*.log"):gmatch("%S+") do
  for line in io.lines(file) do
    local t, ok, kind = line:match("^c (%S+) (%d) (%S+)")
    local ft, fok, fkind, fstatus = line:match("^f (%S+) (%d) (%S+) (%S+)")
    if ft then
      if not faulty(tonumber(ft)) then
        foreign.calls = foreign.calls + 1
        if fok == "0" and fkind == "api" and fstatus == "401" then
          foreign.refused = foreign.refused + 1
        else
          local k = fkind .. ":" .. fstatus
          foreign.other[k] = (foreign.other[k] or 0) + 1
        end
      end
    elseif t then
      t = tonumber(t)
      if faulty(t) then
        calls.during, calls.during_ok = calls.during + 1, calls.during_ok + tonumber(ok)
      else
        calls.outside, calls.outside_ok = calls.outside + 1, calls.outside_ok + tonumber(ok)
        if ok == "0" then
          local k = file:match("([^/]+)%.log$") .. ":" .. kind
          calls.failures[k] = (calls.failures[k] or 0) + 1
        end
      end
    else
      local ph, us, ht = line:match("^h (%S+) (%d+) (%S+)")
      if ph and headers[ph] then
        headers[ph][#headers[ph] + 1] = tonumber(us)
        local w = ph == "faults" and faulty(tonumber(ht))
        if w then
          by_fault[w] = by_fault[w] or {}
          table.insert(by_fault[w], tonumber(us))
        end
      end
    end
  end
end

local function pct(t, q)
  if #t == 0 then return nil end
  table.sort(t)
  return t[math.max(1, math.ceil(#t * q))]
end
local function p99(t) return pct(t, 0.99) end
local function p50(t) return pct(t, 0.5) end

local counts = assert(sim:counts())
local renewals = (counts.issue or 0) + (counts.refresh or 0)
-- a token is used for its lifetime less the refresh window (half of it), then renewed; the
-- revocation and the killed holder each force one renewal more, every cycle
local expected = SOAK_S / (LIFETIME / 2) + 2 * CYCLES

local hooks = cjson.decode(assert(io.open(dir .. "/webhooks.json")):read("*a"))
local granted = { once = 0, twice = 0, never = 0, answered = #hooks }
local per = {}                                     -- grants per event, the two instances added up
for i = 1, #hooks, 40 do
  local ids = {}
  for k = i, math.min(i + 39, #hooks) do ids[#ids + 1] = hooks[k].id end
  for _, a in ipairs(nginxes) do
    local k = i
    for n in sh("curl -s --max-time 5 '" .. a.url .. "/granted?ids=" .. table.concat(ids, ",") .. "'"):gmatch("%d+") do
      per[k] = (per[k] or 0) + tonumber(n)
      k = k + 1
    end
  end
end
for i in ipairs(hooks) do
  local n = per[i] or 0
  if n == 1 then granted.once = granted.once + 1
  elseif n > 1 then granted.twice = granted.twice + 1
  else granted.never = granted.never + 1 end
  if n ~= 1 then
    granted.wrong = granted.wrong or {}
    granted.wrong[#granted.wrong + 1] = { id = hooks[i].id, grants = n, statuses = hooks[i].statuses }
  end
end

-- No growth: the last sample against the one after the first cycle's faults (connection pools
-- and caches have filled by then); from the start, descriptors may grow only by what the pools
-- hold (nginx: its workers' pools to the simulator and to Redis; a Lua member: two connections).
local POOLS = 16 + 16
local function growth_between(a, b)
  local out = {}
  for name, s2 in pairs(b) do
    local s1 = a[name]
    if s1 then out[name] = { rss_kib = s2.rss_kib - s1.rss_kib, fds = s2.fds - s1.fds, rss_from_kib = s1.rss_kib,
                             workers = s2.workers } end
  end
  return out
end
local last = samples[#samples][2]
local warm = CYCLES > 1 and samples[3][2] or samples[2][2]        -- end of cycle 1, or after its faults
local growth = growth_between(warm, last)
local from_start = growth_between(samples[1][2], last)
local flat = true
for name, g in pairs(growth) do
  local st = from_start[name]
  local bound = (g.workers or 0) > 0 and g.workers * POOLS or 4
  if g.rss_kib > math.max(1024, g.rss_from_kib * 0.05) or g.fds > 2 or (st and st.fds > bound) then
    flat = false
  end
end

-- Sessions ended, filed under the fault they came in or outside every fault.
local ended = { total = 0, outside = 0, refused_outside = 0 }
for i = 2, #sessions do
  local a, b = sessions[i - 1], sessions[i]
  local d, r = b[2] - a[2], b[3] - a[3]
  ended.total = ended.total + d
  if not (faulty(a[1]) or faulty(b[1])) then
    ended.outside = ended.outside + d
    ended.refused_outside = ended.refused_outside + r
  end
end

local report = {
  seconds = SOAK_S, lifetime = LIFETIME, members = 5 + 8, foreign = foreign,
  calls_outside_faults = calls.outside, ok_outside_faults = calls.outside_ok,
  ok_fraction = calls.outside > 0 and calls.outside_ok / calls.outside or 0,
  calls_during_faults = calls.during, ok_during_faults = calls.during_ok, failures_outside = calls.failures,
  logins = counts.issue or 0, refreshes = counts.refresh or 0, renewals_per_lifetime = renewals / expected,
  sessions_ended = counts.sessions_ended or 0, sessions_ended_outside_faults = ended.outside,
  refused_ended_outside_faults = ended.refused_outside, cycles = CYCLES,
  refused = { ended = counts.api_refused_ended or 0, expired = counts.api_refused_expired or 0,
              unknown = counts.api_refused_unknown or 0, missing = counts.api_refused_missing or 0 },
  headers_p99_us = { quiet = p99(headers.quiet), faults = p99(headers.faults), after = p99(headers.after) },
  headers_p50_us = { quiet = p50(headers.quiet), faults = p50(headers.faults), after = p50(headers.after) },
  headers_calls = #headers.quiet + #headers.faults + #headers.after,
  headers_n = { quiet = #headers.quiet, faults = #headers.faults, after = #headers.after },
  webhooks = granted, growth = growth, growth_from_start = from_start, flat = flat, events = events,
}
report.headers_p99_us_by_fault, report.fault_names = {}, {}
for name, t in pairs(by_fault) do report.headers_p99_us_by_fault[name] = p99(t) end
for _, w in ipairs(windows) do report.fault_names[#report.fault_names + 1] = w.name end
report.headers_p99_ratio = report.headers_p99_us.quiet and report.headers_p99_us.faults and
                           report.headers_p99_us.faults / report.headers_p99_us.quiet

-- stop everything (SOAK_KEEP=1 keeps the logs: the members', nginx's, the token requests)
feeder:close()
if os.getenv("SOAK_KEEP") then
  for _, a in ipairs(nginxes) do
    local f = assert(io.open(dir .. "/" .. a.name .. ".error.log", "w"))
    f:write(a:error_log())
    f:close()
  end
  local f = assert(io.open(dir .. "/auth.json", "w"))
  f:write(cjson.encode(assert(sim:log())))
  f:close()
end
for _, a in ipairs(nginxes) do a:stop() end
for _, m in pairs(members) do os.execute("kill " .. m.pid .. " 2>/dev/null") end
if redis then redis.cleanup() else topo.cleanup() end
assert(sim:reset())
if os.getenv("SOAK_KEEP") then print("logs kept in " .. dir) else os.execute("rm -rf " .. dir) end

print(("\nchaos soak, %d s (%d cycle%s of faults), %d s tokens, 13 members, Redis %s:"):format(SOAK_S, CYCLES,
  CYCLES > 1 and "s" or "", LIFETIME, REDIS_KIND))
print(("  API calls outside faults that succeeded: %d of %d (%.2f%%; target 100%%)"):format(
  report.ok_outside_faults, report.calls_outside_faults, 100 * report.ok_fraction))
print(("  during faults: %d of %d"):format(report.ok_during_faults, report.calls_during_faults))
print(("  a member naming a foreign accountId: %d calls outside faults, %d the caller's error (401, no renewal)")
      :format(foreign.calls, foreign.refused))
print(("  logins %d, refreshes %d: %.2f renewals per token lifetime (target <= 1.2)"):format(
  report.logins, report.refreshes, report.renewals_per_lifetime))
print(("  sessions ended by a parallel login: %d outside faults (target 0), %d in all; calls refused for an " ..
       "ended session %d outside faults, %d in all, an expired token %d, a revoked one %d"):format(
       report.sessions_ended_outside_faults, report.sessions_ended, report.refused_ended_outside_faults,
       report.refused.ended, report.refused.expired, report.refused.unknown))
print(("  headers() in nginx, p99 (p50): %s (%s) us quiet, %s (%s) us during faults (p99 %.2fx), " ..
       "%s (%s) us after"):format(
  tostring(report.headers_p99_us.quiet), tostring(report.headers_p50_us.quiet), tostring(report.headers_p99_us.faults),
  tostring(report.headers_p50_us.faults), report.headers_p99_ratio or 0, tostring(report.headers_p99_us.after),
  tostring(report.headers_p50_us.after)))
for _, w in ipairs(windows) do
  local v = report.headers_p99_us_by_fault[w.name]
  if v then print(("    p99 %6d us  %s"):format(v, w.name)) end
end
print(("  webhook events: %d, granted once %d, twice %d, never %d"):format(
  granted.answered, granted.once, granted.twice, granted.never))
for _, w in ipairs(granted.wrong or {}) do
  print(("    %s granted %d times, answered %s"):format(w.id, w.grants, table.concat(w.statuses, " ")))
end
print(("  growth (%s): %s"):format(CYCLES > 1 and "end of cycle 1 to the end" or "after the faults to the end",
  flat and "flat" or "NOT FLAT"))
local names = {}
for name in pairs(growth) do names[#names + 1] = name end
table.sort(names)
for _, name in ipairs(names) do
  local g, st = growth[name], from_start[name] or {}
  print(("  %-8s RSS %+d KiB (from %d), descriptors %+d; from the start RSS %+d KiB, descriptors %+d"):format(
    name, g.rss_kib, g.rss_from_kib, g.fds, st.rss_kib or 0, st.fds or 0))
end
local out = os.getenv("SOAK_JSON")
if out then
  local f = assert(io.open(out, "w"))
  f:write(cjson.encode(report))
  f:close()
end
