--- nginx for the simulator and the specs: a configuration made from a
-- template in a temporary prefix, certificates made by the `openssl` CLI,
-- started, reloaded and stopped by pid. (Part of nomba.oauth.simulator.)
local M = {}

local function sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Helper programs (openssl, nginx, curl) run without a sanitizer runtime a
-- test run may have preloaded into the Lua interpreter (make asan).
local CLEAN_ENV = "env -u LD_PRELOAD "

local function run(cmd)
  local ok, how, code = os.execute(CLEAN_ENV .. cmd)
  if type(ok) == "number" then return ok == 0 end           -- Lua 5.1
  return ok == true and how == "exit" and code == 0
end

local function read_cmd(cmd)
  local f = io.popen(CLEAN_ENV .. cmd, "r")
  if not f then return nil end
  local out = f:read("*a")
  f:close()
  return out
end

local function write_file(path, text)
  local f, err = io.open(path, "w")
  if not f then return nil, err end
  f:write(text)
  f:close()
  return true
end

local function read_file(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() return true end
  return false
end

local function searchpath(name, path)
  if package.searchpath then return package.searchpath(name, path) end
  local file = name:gsub("%.", "/")                        -- Lua 5.1
  for pattern in path:gmatch("[^;]+") do
    local candidate = pattern:gsub("%?", file)
    if exists(candidate) then return candidate end
  end
end

local function nginx_bin()
  local env = os.getenv("NOMBA_SIM_NGINX")
  if env and env ~= "" then return env end
  if exists("/usr/sbin/nginx") then return "/usr/sbin/nginx" end
  return "nginx"
end

local function find_module(name)
  for _, dir in ipairs { "/usr/lib/nginx/modules", "/usr/share/nginx/modules",
                         "/usr/local/nginx/modules" } do
    if exists(dir .. "/" .. name) then return dir .. "/" .. name end
  end
end

--- Makes a CA and a certificate for localhost in dir with the openssl CLI.
-- @return true or nil, message
function M.make_certs(dir)
  local ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
  local q = function(name) return sh_quote(dir .. "/" .. name) end
  local ext = dir .. "/server.ext"
  write_file(ext, "subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\n" ..
                  "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
  local cmds = {
    "openssl req -x509 " .. ec .. " -days 7 -subj '/CN=nomba-oauth simulator CA'" ..
      " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign" ..
      " -keyout " .. q("ca.key") .. " -out " .. q("ca.crt"),
    "openssl req " .. ec .. " -subj /CN=localhost -keyout " .. q("server.key") ..
      " -out " .. q("server.csr"),
    "openssl x509 -req -days 7 -in " .. q("server.csr") .. " -CA " .. q("ca.crt") ..
      " -CAkey " .. q("ca.key") .. " -CAcreateserial -extfile " .. q("server.ext") ..
      " -out " .. q("server.crt"),
  }
  for _, cmd in ipairs(cmds) do
    if not run(cmd .. " >/dev/null 2>&1") then
      return nil, "openssl failed: " .. cmd
    end
  end
  return true
end

local MAIN_CONF = [[
daemon on;
master_process on;
worker_processes ${workers};
${user}
pid ${dir}/nginx.pid;
error_log ${dir}/error.log ${log_level};
${env}
load_module ${ndk};
load_module ${lua};
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
  lua_package_cpath "${cpath};;";
${http}
}
]]


local function expand(template, vars)
  return (template:gsub("%${([%w_]+)}", function(k)
    local v = vars[k]
    if v == nil then return "" end
    return tostring(v)
  end))
end

local Nginx = {}
Nginx.__index = Nginx

--- A random port for a test server, below the kernel's ephemeral range:
-- a port in that range may be the local end of any outgoing connection of
-- this host (keep-alive clients, curl), and then listening on it fails.
-- @treturn number port
function M.free_port()
  local f = io.open("/proc/sys/net/ipv4/ip_local_port_range")
  local low = f and tonumber((f:read("*l") or ""):match("^(%d+)"))
  if f then f:close() end
  if not low or low < 12000 then return math.random(20000, 59999) end
  return math.random(10000, low - 1)
end

--- Runs an nginx with the Lua module from a generated configuration.
-- @tparam table opts `http` (the inside of the http block; `${port}`,
--   `${port2}` (a second free port, for a second listener) and `${dir}`
--   are filled in), `workers` (default 1), `port` (default: a free
--   one), `dir` (default: a new temporary directory), `vars` (more `${...}`),
--   `env` (names of environment variables for the workers), `log_level`,
--   `cpath_prefix` (put before the Lua C module path), `exec_prefix` (put
--   before the nginx command: "env LD_PRELOAD=... " for a test's clock)
-- @return an object with `dir`, `port`, `pid`, `url`, `stop()`, `reload()`,
--   `error_log()`; or nil and a message
function M.spawn_nginx(opts)
  local ndk, lua = find_module("ndk_http_module.so"), find_module("ngx_http_lua_module.so")
  if not lua then
    return nil, "nginx's Lua module is missing: apt-get install nginx libnginx-mod-http-lua"
  end
  local dir = opts.dir
  if not dir then
    dir = (read_cmd("mktemp -d /tmp/nomba-nginx.XXXXXX") or ""):gsub("%s+$", "")
    if dir == "" then return nil, "mktemp failed" end
  end
  run("mkdir -p " .. sh_quote(dir .. "/tmp") .. " && chmod 755 " .. sh_quote(dir))
  local is_root = (read_cmd("id -u") or ""):match("^0") ~= nil
  math.randomseed(os.time() + math.floor(os.clock() * 1e6) +
                  (tonumber(tostring({}):match("0x(%x+)") or "0", 16) or 0) % 100000)
  local env = {}
  for _, name in ipairs(opts.env or {}) do env[#env + 1] = "env " .. name .. ";" end
  local last
  for _ = 1, 20 do
    local port = opts.port or M.free_port()
    local port2 = M.free_port()
    local vars = {
      workers = opts.workers or 1, dir = dir, port = port, port2 = port2, ndk = ndk or "", lua = lua,
      user = is_root and "user root root;" or "", log_level = opts.log_level or "warn",
      env = table.concat(env, "\n"),
      cpath = (opts.cpath_prefix or "") ..
              "/usr/lib/x86_64-linux-gnu/lua/5.1/?.so;/usr/lib/aarch64-linux-gnu/lua/5.1/?.so;" ..
              "/usr/local/lib/lua/5.1/?.so",
    }
    for k, v in pairs(opts.vars or {}) do vars[k] = v end
    vars.http = expand(opts.http, vars)
    local conf = expand(MAIN_CONF, vars)
    if not ndk then conf = conf:gsub("load_module ;\n", "") end
    write_file(dir .. "/nginx.conf", conf)
    local out = read_cmd((opts.exec_prefix or "") .. nginx_bin() .. " -p " .. sh_quote(dir) .. " -c " ..
                         sh_quote(dir .. "/nginx.conf") .. " 2>&1; echo \"rc=$?\"") or ""
    if out:match("rc=0%s*$") then
      return setmetatable({ dir = dir, port = port, port2 = port2, pid = tonumber(read_file(dir .. "/nginx.pid") or ""),
                            owns_dir = not opts.dir }, Nginx)
    end
    last = out
    if not out:find("in use", 1, true) or opts.port then break end
    -- the port was taken: the next attempt starts with a clean error log,
    -- so callers that check the log never see this attempt's [emerg] lines
    os.remove(dir .. "/error.log")
  end
  if not opts.dir then run("rm -rf " .. sh_quote(dir)) end
  return nil, "nginx did not start: " .. tostring(last)
end

--- Whether pid is a running process. One that has exited but is not yet
-- reaped (a zombie: its parent gone, and an init that reaps late, as in a
-- container) is not, though `kill -0` still finds it.
local function alive(pid)
  local f = io.open("/proc/" .. tostring(pid) .. "/stat")
  if not f then return false end
  local stat = f:read("*a") or ""
  f:close()
  return stat:match("^.*%) (%a)") ~= "Z"
end

local function stop_pid(pid)
  run("kill -QUIT " .. pid .. " 2>/dev/null")
  for _ = 1, 100 do
    if not alive(pid) then return end
    run("sleep 0.05")
  end
  run("kill -KILL " .. pid .. " 2>/dev/null")
end

--- Stops this nginx (by pid) and removes its directory if it made it.
function Nginx:stop()
  if self.pid then stop_pid(self.pid) self.pid = nil end
  if self.dir and self.owns_dir then run("rm -rf " .. sh_quote(self.dir)) end
  self.dir = nil
end

--- Reloads the configuration (SIGHUP): new workers, old ones finish.
function Nginx:reload()
  return run("kill -HUP " .. self.pid)
end

--- The pids of the worker processes.
function Nginx:workers()
  local out = read_cmd("ps -o pid= --ppid " .. self.pid) or ""
  local pids = {}
  for pid in out:gmatch("%d+") do pids[#pids + 1] = tonumber(pid) end
  return pids
end

--- The error log so far.
function Nginx:error_log()
  return read_file(self.dir .. "/error.log") or ""
end

M.run, M.read_cmd, M.read_file, M.write_file, M.sh_quote = run, read_cmd, read_file, write_file, sh_quote
M.searchpath, M.stop_pid, M.alive = searchpath, stop_pid, alive

return M
