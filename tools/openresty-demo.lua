--- make openresty-demo: examples/openresty/ against the simulator.
--
--    lua5.4 tools/with-simulator.lua lua5.4 tools/openresty-demo.lua
--
-- Starts an application nginx from the http block of
-- examples/openresty/nginx.conf with four changes, each checked: the
-- simulator's CA as lua_ssl_trusted_certificate, a free loopback port, the
-- checkout's paths for the Lua files and the LuaJIT build of the module, and
-- no resolver (the simulator is on localhost, which the resty transport
-- never resolves). Then: two API calls through it (one issue for all the
-- workers), /health and /metrics, signed webhook deliveries (a duplicate, a tampered one), the
-- log lines the example writes, and both servers stopped.
local simulator = require "nomba.oauth.simulator"
local cjson = require "cjson"

local function fail(msg)
  io.stderr:write("openresty-demo: ", msg, "\n")
  os.exit(1)
end

local function read(path)
  local f = assert(io.open(path))
  local s = f:read("*a")
  f:close()
  return s
end

local root = assert(os.getenv("PWD"))
local url, cafile = os.getenv("NOMBA_SIM_URL"), os.getenv("NOMBA_SIM_CAFILE")
if not url then fail("run me through tools/with-simulator.lua (make openresty-demo)") end
local sim = simulator.attach { url = url, cafile = cafile }

local conf = read(root .. "/examples/openresty/nginx.conf")
local http = conf:match("\nhttp {\n(.*)\n}%s*$")
if not http then fail("examples/openresty/nginx.conf has no http block") end
local function change(pattern, repl, what)
  local n
  http, n = http:gsub(pattern, repl)
  if n ~= 1 then fail("examples/openresty/nginx.conf: cannot change " .. what) end
end
change("lua_ssl_trusted_certificate [^;]+;", "lua_ssl_trusted_certificate " .. cafile .. ";", "the trusted CA")
change("listen 127%.0%.0%.1:%d+;", "listen 127.0.0.1:${port};", "the port")
change('lua_package_path "[^"]+";', 'lua_package_path "' .. root .. "/lua/?.lua;" .. root ..
       '/examples/openresty/?.lua;;";', "lua_package_path")
-- the module's path goes first in the cpath that spawn_nginx writes
change('\n%s*lua_package_cpath "[^"]+";[^\n]*', "", "lua_package_cpath")
change("\n  resolver [^;]+;", "\n  # resolver: not needed for localhost", "the resolver")

-- the example's env directives, and the simulator's webhook key for NOMBA_WEBHOOK_KEY
local env = {}
for name in conf:gmatch("\nenv ([%w_]+);") do
  env[#env + 1] = name == "NOMBA_WEBHOOK_KEY" and name .. "=sim-webhook-key-0001" or name
end

local app, err = simulator.spawn_nginx { http = http, workers = 2, env = env, log_level = "notice",
                                         cpath_prefix = root .. "/build/jit/?.so;" }
if not app then fail(err) end
local base = "http://127.0.0.1:" .. app.port
print(("application nginx (examples/openresty, 2 workers) on %s, Nomba simulator on %s"):format(base, url))

local ok, why = pcall(function()
  local function get(path)
    local p = io.popen("curl -s --max-time 20 -w '\\n%{http_code}' " .. base .. path)
    local out = p:read("*a")
    p:close()
    local body, code = out:match("^(.-)\n*(%d+)$")
    return tonumber(code), body
  end
  -- keep_fresh's timers issue one token for both workers; the calls use it
  for i = 1, 2 do
    local status, body = get("/balance")
    print(("GET /balance #%d -> HTTP %s %s"):format(i, tostring(status), body or ""))
    if status ~= 200 then error("GET /balance failed") end
  end
  local counts = assert(sim:counts())
  print(("the simulator saw %d issue(s) and %d balance call(s) for the whole node"):format(
    counts.issue or 0, counts.protected or counts.balance or 0))
  if (counts.issue or 0) ~= 1 then error("expected one issue for the node") end
  local hs, hbody = get("/health")
  print(("GET /health -> HTTP %s %s"):format(tostring(hs), hbody or ""))
  if hs ~= 200 or not cjson.decode(hbody).token:match("^valid") then error("GET /health is not healthy") end
  local ms, mbody = get("/metrics")
  local expires = mbody and mbody:match("\nnomba_oauth_token_expires_in_seconds{[^}]*} (%d+)")
  print(("GET /metrics -> HTTP %s, nomba_oauth_token_expires_in_seconds %s"):format(tostring(ms), tostring(expires)))
  if ms ~= 200 or not tonumber(expires) or tonumber(expires) <= 0 then error("GET /metrics has no token gauge") end

  local hook = base .. "/nomba/webhook"
  local function statuses(r)
    local s = {}
    for i, v in ipairs(r.statuses) do s[i] = ("%d"):format(v) end
    return table.concat(s, ", ")
  end
  local r = assert(sim:webhook { url = hook, event_type = "payment_success", duplicate = true })
  print(("webhook delivered twice (a duplicate) -> HTTP %s, granted once"):format(statuses(r)))
  r = assert(sim:webhook { url = hook, event_type = "payment_success", tamper = true })
  print(("webhook with a tampered field -> HTTP %s"):format(statuses(r)))
  if r.statuses[1] ~= 401 then error("a tampered delivery was not refused") end

  print("the example's log lines:")
  local granted = 0
  for line in app:error_log():gmatch("[^\n]+") do
    if line:find("nomba", 1, true) and not line:find("signal process", 1, true) then
      print("  " .. line:gsub("^%S+ %S+ ", ""):gsub(", client: .*$", ""))
      if line:find("nomba payment_success", 1, true) then granted = granted + 1 end
    end
  end
  if granted ~= 1 then error("the event was granted " .. granted .. " times, not once") end
end)
app:stop()
if not ok then fail(tostring(why)) end
print("stopped the application nginx; the simulator stops next")
print(cjson.encode { ok = true })
