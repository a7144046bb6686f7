--- Starts and stops the Nomba simulator: a real HTTPS server on loopback.
--
-- nginx with its Lua module (Debian `nginx` and `libnginx-mod-http-lua`),
-- run from a generated configuration in a temporary prefix, with a CA and a
-- server certificate for `localhost` made on the spot by the `openssl` CLI.
-- Runs under any Lua 5.1 to 5.4; it only needs `os.execute` and `io.popen`.
--
--    local simulator = require "nomba.oauth.simulator"
--    local sim = assert(simulator.start())
--    -- sim.url, sim.cafile, sim.client (account_id, client_id, client_secret)
--    sim:fault{endpoint = "issue", status = 500, body = "<html>oops</html>"}
--    sim:stop()
--
-- @module nomba.oauth.simulator

local cjson = require "cjson.safe"

local M = {}

--- The credentials the simulator knows from the start (obviously fake).
M.CLIENT = {
  account_id = "3f1c2d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
  client_id = "sim-client-0001",
  client_secret = "sim-secret-not-for-production-0001",
  business_id = "01a10aeb-d989-460a-bbde-9842f2b4320f",
  sub_accounts = { "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d" },   -- sub-accounts its token may act for
}

--- A second client of the same business, registered for PKCE alone (no
-- secret): a public app's sessions are its own, apart from the server's.
M.PKCE_CLIENT = {
  account_id = M.CLIENT.account_id, client_id = "sim-pkce-0001", business_id = M.CLIENT.business_id,
}

--- The answer of /fixed/v1/auth/token/issue, served by nginx alone: a token
-- valid for 30 minutes from whenever it is received.
M.FIXED_ANSWER = '{"code":"00","description":"Success","data":{' ..
  '"businessId":"01a10aeb-d989-460a-bbde-9842f2b4320f","access_token":"eyJhbGciOiJIUzI1NiJ9.' ..
  ("eyJzdWIiOiJmaXhlZCJ9"):rep(16) .. '.' .. ("c2lnbmF0dXJl"):rep(4) .. '",' ..
  '"refresh_token":"01h4gdx2tctxfjgacbdwrcvs5d1688473602892","expires_in":1800}}'

local Sim = {}
Sim.__index = Sim
local spawn = require "nomba.oauth.simulator.nginx"
local run, read_cmd, read_file = spawn.run, spawn.read_cmd, spawn.read_file
local write_file, sh_quote = spawn.write_file, spawn.sh_quote
local searchpath, stop_pid = spawn.searchpath, spawn.stop_pid

--- Makes a CA and a server certificate for localhost in dir (the `openssl` CLI).
-- @function make_certs
M.make_certs = spawn.make_certs

--- A free TCP port on 127.0.0.1, below the ephemeral range.
-- @function free_port
M.free_port = spawn.free_port

--- Starts an nginx from a template (see nomba/oauth/simulator/nginx.lua).
-- @function spawn_nginx
M.spawn_nginx = spawn.spawn_nginx

local function lua_dir()
  local path = searchpath("nomba.oauth.simulator.server", package.path)
  if not path then return nil end
  return (path:gsub("/nomba/oauth/simulator/server%.lua$", ""))
end

local SIM_HTTP = [[
  lua_package_path "${luadir}/?.lua;/usr/share/lua/5.1/?.lua;;";
  lua_shared_dict sim 32m;
  init_by_lua_block {
    require("nomba.oauth.simulator.server").init(require("cjson").decode([==[${config}]==]))
  }
  init_worker_by_lua_block { require("nomba.oauth.simulator.server").init_worker() }
  server {
    listen 127.0.0.1:${port} ssl;
    listen 127.0.0.1:${port2} ssl http2;   # the same simulator over HTTP/2 (url_h2)
    server_name localhost;
    ssl_certificate ${dir}/server.crt;
    ssl_certificate_key ${dir}/server.key;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_max_body_size 1m;
    client_body_buffer_size 1m;
    location / {
      content_by_lua_block { require("nomba.oauth.simulator.server").handle() }
    }
    # a fixed answer served by nginx alone, for benchmarks (bench/)
    location = /fixed/v1/auth/token/issue {
      default_type application/json;
      return 200 '${fixed}';
    }
  }
]]

--- Starts a simulator.
-- @tparam[opt] table opts `port` (default: a free one), `workers` (1),
--   `lifetime` (token lifetime in seconds, 1800), `clients` (extra clients).
-- @return a simulator object, or nil and a message
function M.start(opts)
  opts = opts or {}
  local luadir = lua_dir()
  if not luadir then return nil, "cannot find nomba/oauth/simulator/server.lua on package.path" end
  local dir = (read_cmd("mktemp -d /tmp/nomba-sim.XXXXXX") or ""):gsub("%s+$", "")
  if dir == "" then return nil, "mktemp failed" end
  run("chmod 755 " .. sh_quote(dir))
  local ok, err = M.make_certs(dir)
  if not ok then
    run("rm -rf " .. sh_quote(dir))
    return nil, err
  end
  local clients = { M.CLIENT, M.PKCE_CLIENT }
  for _, c in ipairs(opts.clients or {}) do clients[#clients + 1] = c end
  local config = cjson.encode({ clients = clients, settings = { lifetime = opts.lifetime } })
  local nginx
  nginx, err = M.spawn_nginx { dir = dir, http = SIM_HTTP, workers = opts.workers, port = opts.port,
                               vars = { luadir = luadir, config = config, fixed = M.FIXED_ANSWER } }
  if not nginx then
    run("rm -rf " .. sh_quote(dir))
    return nil, err
  end
  local sim = setmetatable({
    dir = dir, port = nginx.port, pid = nginx.pid,
    url = "https://localhost:" .. nginx.port,
    url_h2 = "https://localhost:" .. nginx.port2,
    cafile = dir .. "/ca.crt",
    client = M.CLIENT,
  }, Sim)
  for _ = 1, 50 do                       -- wait until it answers
    if sim:state() then return sim end
    run("sleep 0.05")
  end
  local log = read_file(dir .. "/error.log") or ""
  sim:stop()
  return nil, "the simulator did not answer: " .. log
end

--- A handle on a simulator started elsewhere (e.g. by tools/with-simulator.lua).
-- @tparam table t `url`, `cafile` and `url_h2` (its HTTP/2 listener)
function M.attach(t)
  return setmetatable({ url = t.url, url_h2 = t.url_h2, cafile = t.cafile, client = M.CLIENT,
                        port = tonumber(t.url:match(":(%d+)$")) }, Sim)
end

--- Stops the simulator (by the pid it wrote) and removes its directory.
-- A simulator obtained with attach() is left running.
function Sim:stop()
  if self.pid then
    stop_pid(self.pid)
    self.pid = nil
  end
  if self.dir then
    run("rm -rf " .. sh_quote(self.dir))
    self.dir = nil
    self.url = nil
  end
end

--- Calls the control API: POST (with a JSON body) or GET, waiting at most
-- `timeout` seconds (default 10).
-- @return the decoded answer, or nil and a message
function Sim:control(path, body, timeout)
  if not self.url then return nil, "the simulator is stopped" end
  local cmd = "curl -sS --max-time " .. tostring(tonumber(timeout) or 10) .. " --cacert " .. sh_quote(self.cafile)
  local file
  if body ~= nil then
    file = os.tmpname()
    write_file(file, cjson.encode(body))
    cmd = cmd .. " -X POST -H 'Content-Type: application/json' --data-binary @" .. sh_quote(file)
  end
  local out = read_cmd(cmd .. " " .. sh_quote(self.url .. path) .. " 2>&1")
  if file then os.remove(file) end
  local v = out and cjson.decode(out)
  if v == nil then return nil, "control " .. path .. " failed: " .. tostring(out) end
  return v
end

--- Makes the simulator send a signed webhook delivery to `opts.url`
-- (`http://127.x.x.x:PORT/path`): `event_type`, `key` (default the
-- simulator's `webhook_key`), `duplicate` (deliver twice), `stale`/`future`
-- (a timestamp an hour off), `tamper` (change a signed field after signing).
-- With `retries`, the call lasts as long as the (compressed) schedule:
-- give `timeout` (seconds, default 10) to match.
-- @tparam table opts
-- @tparam[opt] number timeout
-- @treturn table `{event = ..., statuses = {...}}`, or nil and a message
function Sim:webhook(opts, timeout) return self:control("/_sim/webhook", opts, timeout) end

--- Queues a fault for the next request(s) to an endpoint.
-- @tparam table spec endpoint ("issue", "refresh", "revoke", "authorize",
--   "protected"), status, body (string or table), headers, delay, body_delay,
--   drop, truncate, size, content_type, times, pass (only the delay, then
--   the normal answer), hold (the request waits for `release` first)
function Sim:fault(spec) return self:control("/_sim/fault", spec) end

--- Lets the held requests to an endpoint (faults with `hold`) go on, and
-- every later one pass at once, until the next reset.
function Sim:release(endpoint) return self:control("/_sim/release", { endpoint = endpoint }) end

--- Changes settings: lifetime, clock_offset, code_lifetime, omit_date,
-- expires_in, clients.
function Sim:config(t) return self:control("/_sim/config", t) end

--- Forgets tokens, faults and the log; settings back to their defaults.
function Sim:reset() return self:control("/_sim/reset", {}) end

--- Every request seen since the last reset, oldest first.
function Sim:log() return self:control("/_sim/log") end

--- Requests per endpoint since the last reset.
function Sim:counts() return self:control("/_sim/counts") end

--- The settings in force and the simulator's clock.
function Sim:state() return self:control("/_sim/state") end

--- Calls the protected endpoint (GET /v1/accounts/balance) with headers.
-- @treturn number the HTTP status
-- @treturn table the decoded body
function Sim:protected(headers)
  local cmd = { "curl -sS --max-time 10 -o - -w '\n%{http_code}' --cacert", sh_quote(self.cafile) }
  for k, v in pairs(headers or {}) do cmd[#cmd + 1] = "-H " .. sh_quote(k .. ": " .. v) end
  cmd[#cmd + 1] = sh_quote(self.url .. "/v1/accounts/balance")
  local out = read_cmd(table.concat(cmd, " ") .. " 2>/dev/null") or ""
  local body, code = out:match("^(.*)\n(%d+)%s*$")
  return tonumber(code), body and cjson.decode(body)
end

--- Options for oauth.new that point a client at this simulator.
function Sim:client_options(extra)
  local o = { account_id = self.client.account_id, client_id = self.client.client_id,
              client_secret = self.client.client_secret, base_url = self.url,
              cafile = self.cafile }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

return M
