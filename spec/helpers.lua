--- Test helpers: the simulator (started by tools/with-simulator.lua, or here
-- when a spec runs alone) and clients pointed at it.
local simulator = require "nomba.oauth.simulator"
local oauth = require "nomba.oauth"
local assert = require "luassert"

local H = {}

local sim
--- The running simulator.
function H.sim()
  if sim then return sim end
  local url, cafile = os.getenv("NOMBA_SIM_URL"), os.getenv("NOMBA_SIM_CAFILE")
  if url and cafile then
    sim = simulator.attach { url = url, cafile = cafile, url_h2 = os.getenv("NOMBA_SIM_URL_H2") }
  else
    sim = assert(simulator.start())
    H._owner = setmetatable({}, { __gc = function() sim:stop() end })
  end
  return sim
end

--- Resets the simulator: no tokens, faults or log; default settings.
function H.reset()
  assert(H.sim():reset())
end

--- A client for the simulator; `extra` overrides options.
function H.client(extra)
  local o = H.sim():client_options(extra)
  if o.retries == nil then o.retries = 0 end
  return oauth.new(o)
end

--- The requests the simulator logged, optionally only for one endpoint.
function H.log(endpoint)
  local out = {}
  for _, r in ipairs(assert(H.sim():log())) do
    if endpoint == nil or r.endpoint == endpoint then out[#out + 1] = r end
  end
  return out
end

--- How many requests the simulator saw at an endpoint.
function H.count(endpoint)
  return #H.log(endpoint)
end

--- Calls the simulator's protected endpoint; returns the HTTP status.
function H.protected(headers)
  return (H.sim():protected(headers))
end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

--- A transport in plain Lua that carries requests with the curl command line
-- tool: a real HTTPS round trip outside libcurl-in-C, for the sans-I/O path.
-- It answers as the transport contract asks: the raw header block as curl
-- received it (`head`: a block cut short stays cut, and the C core sees
-- it), and, on a failure, whether any byte of the request left (curl's
-- size_request), so a payment that never left may be sent again. With
-- `yield_first`, it yields (coroutine.yield) before each request, like a
-- cosocket would.
-- curl's exit codes as the raw outcomes a transport reports (outcome.c)
local CURL_OUTCOMES = { [6] = "resolve", [7] = "refused", [28] = "timeout", [35] = "tls", [60] = "tls",
                        [52] = "reset", [55] = "send", [56] = "reset" }
function H.curl_transport(cafile, yield_first, seen)
  return function(req)
    if seen then seen[#seen + 1] = req end
    if yield_first then coroutine.yield("io") end
    local req_file, body_file, head_file = os.tmpname(), os.tmpname(), os.tmpname()
    local f = assert(io.open(req_file, "w"))
    f:write(req.body)
    f:close()
    local cmd = { "env -u LD_PRELOAD curl -sS -o", q(body_file), "-D", q(head_file),
                  "--max-time", tostring(req.timeout),
                  "--connect-timeout", tostring(req.connect_timeout or req.timeout),
                  "--cacert", q(cafile), "-X", req.method, "-w '%{size_request} %{exitcode}'", "-H 'Expect:'", "--raw" }
    if req.method ~= "GET" and req.method ~= "HEAD" then cmd[#cmd + 1] = "--data-binary @" .. q(req_file) end
    if req.method == "HEAD" then cmd[#cmd + 1] = "-I" end
    local hdr_file = os.tmpname()               -- headers (the bearer) in a file, never in argv
    local hf = assert(io.open(hdr_file, "w"))
    for k, v in pairs(req.headers) do hf:write(k, ": ", v, "\n") end
    hf:close()
    cmd[#cmd + 1] = "-H @" .. q(hdr_file)
    cmd[#cmd + 1] = q(req.url)
    local p = io.popen(table.concat(cmd, " ") .. " 2>/dev/null")
    local out = p:read("*a")
    p:close()
    local function slurp(name)
      local h = io.open(name, "rb")
      local data = h and h:read("*a") or ""
      if h then h:close() end
      os.remove(name)
      return data
    end
    local head, body = slurp(head_file), slurp(body_file)
    os.remove(req_file)
    os.remove(hdr_file)
    local sent, code = out:match("(%d+) (%d+)%s*$")
    sent, code = tonumber(sent) or 0, tonumber(code) or -1
    -- the bytes as received (--raw: chunks and all, any 1xx first): the core frames them
    if head:match("^HTTP/") and (code == 0 or code == 18 or code == 56) then return { raw = head .. body } end
    local outcome = CURL_OUTCOMES[code] or "failed"
    return nil, { outcome = outcome, message = "curl failed (exit " .. code .. ")", sent = sent > 0 }
  end
end

--- Starts a redis-server on a free loopback port (no persistence), or nil
-- and a message. `binds` lists the addresses (default {"127.0.0.1"});
-- `extra` more command-line arguments (an ACL user, a password).
function H.redis(binds, extra)
  local dir = io.popen("mktemp -d /tmp/nomba-redis.XXXXXX"):read("*l")
  for _ = 1, 20 do
    local port = simulator.free_port()
    local cmd = ("env -u LD_PRELOAD redis-server --port %d --bind %s --save '' --appendonly no " ..
                 "--daemonize yes --pidfile %s/redis.pid --dir %s --logfile %s/redis.log %s"):format(
                 port, table.concat(binds or { "127.0.0.1" }, " "), dir, dir, dir, extra or "")
    if os.execute(cmd) then
      for _ = 1, 50 do
        local f = io.open(dir .. "/redis.pid")
        local pid = f and tonumber(f:read("*a"))
        if f then f:close() end
        local ping = io.popen("env -u LD_PRELOAD redis-cli -p " .. port .. " ping 2>/dev/null"):read("*l")
        if pid and (ping == "PONG" or (ping or ""):match("NOAUTH")) then
          local r = { port = port, pid = pid, dir = dir }
          function r.stop()
            os.execute("kill " .. r.pid .. " 2>/dev/null")
            for _ = 1, 100 do
              if not os.execute("kill -0 " .. r.pid .. " 2>/dev/null") then break end
              H.sleep(0.02)
            end
          end
          function r.cleanup() r.stop() os.execute("rm -rf " .. dir) end
          function r.cli(args)
            local p = io.popen("env -u LD_PRELOAD redis-cli -p " .. port .. " " .. (r.auth or "") .. args .. " 2>&1")
            local out = p:read("*a")
            p:close()
            return out
          end
          function r.restart()
            os.execute(cmd)
            for _ = 1, 100 do
              local g = io.open(dir .. "/redis.pid")
              local newpid = g and tonumber(g:read("*a"))
              if g then g:close() end
              if newpid and newpid ~= r.pid and r.cli("ping"):match("PONG") then
                r.pid = newpid
                return true
              end
              H.sleep(0.02)
            end
            return false
          end
          return r
        end
        H.sleep(0.02)
      end
    end
  end
  return nil, "redis-server did not start"
end

--- Starts `n` fleet workers (spec/fleet_worker.lua) for `seconds` on a
-- store mode and a driver (`gap` seconds apart); returns a function that
-- waits for them and returns their JSON summaries.
function H.fleet(s, n, seconds, store, driver, port, gap)
  local cjson = require "cjson"
  local lua = arg and arg[-1] or "lua5.4"
  local procs = {}
  for i = 1, n do
    procs[i] = io.popen(("%s spec/fleet_worker.lua '%s' '%s' 127.0.0.1 %d %d %s %s 1 2 2>&1"):format(
      lua, s.url, s.cafile, port or 0, seconds, store, driver or "easy"))
    if gap then H.sleep(gap) end
  end
  return function()
    local out = {}
    for i = 1, n do
      local text = procs[i]:read("*a")
      assert(procs[i]:close(), text)
      out[i] = assert(cjson.decode(text:match("{.*}$") or "null"), text)
    end
    return out
  end
end

--- The first shared-token key in redis-cli --scan's output: `prefix` and
-- a store id, not the Redis store's data-loss marker (`prefix`epoch).
function H.token_key(scan, prefix)
  for k in scan:gmatch("%S+") do
    local id = k:sub(#prefix + 1)
    if k:sub(1, #prefix) == prefix and id ~= "epoch" and id:match("^[%w%-_]+$") then return k end
  end
  return nil
end

--- A redis-lua connection (Debian lua-redis; on 5.4 from the 5.1 path).
function H.redis_client(port, host)
  if not package.path:find("/usr/share/lua/5.1/", 1, true) then
    package.path = package.path .. ";/usr/share/lua/5.1/?.lua"
  end
  local redis = require "redis"
  return redis.connect(host or "127.0.0.1", port)
end

--- A new temporary directory (mktemp -d), named for `what`.
function H.tmpdir(what)
  return io.popen("mktemp -d /tmp/nomba-" .. (what or "spec") .. ".XXXXXX"):read("*l")
end

function H.sleep(s)
  require("nomba.oauth.core").sleep(s)
end

--- Runs a shell command without a sanitizer runtime; returns its output.
function H.sh(cmd)
  local p = io.popen("env -u LD_PRELOAD " .. cmd)
  local out = p:read("*a")
  p:close()
  return out
end

-- The application nginx of the OpenResty specs (spec/openresty/app.lua).
local APP_HTTP = [[
  lua_package_path "${root}/lua/?.lua;${root}/spec/?.lua;/usr/share/lua/5.1/?.lua;;";
  lua_shared_dict nomba 1m;
  lua_shared_dict test 1m;
  lua_ssl_trusted_certificate ${cafile};
  lua_ssl_verify_depth 3;
  ${extra}
  init_by_lua_block { require("openresty.app").init(require("cjson").decode([==[${config}]==])) }
  init_worker_by_lua_block { require("openresty.app").init_worker() }
  server {
    listen 127.0.0.1:${port};
    location / { content_by_lua_block { require("openresty.app").handle() } }
    location = /phase/set {
      set_by_lua_block $r { return require("openresty.app").in_set() }
      return 200 $r;
    }
    location = /phase/log {
      content_by_lua_block { ngx.say("ok") }
      log_by_lua_block { require("openresty.app").in_log() }
    }
  }
]]

--- Starts the OpenResty specs' application nginx (LuaJIT build of the
-- module) pointed at the simulator. `opts`: `workers`, `config` (more
-- fields for app.lua), `extra` (more http-block directives), `exec_prefix`
-- and `env` (spawn_nginx's).
function H.openresty_app(opts)
  local simulator_mod = require "nomba.oauth.simulator"
  local cjson = require "cjson"
  local root = os.getenv("PWD") or "."
  local s = H.sim()
  local config = { url = s.url, cafile = s.cafile, account_id = s.client.account_id,
                   client_id = s.client.client_id, client_secret = s.client.client_secret }
  for k, v in pairs(opts.config or {}) do config[k] = v end
  local a = assert(simulator_mod.spawn_nginx {
    http = APP_HTTP, workers = opts.workers or 1, cpath_prefix = root .. "/build/jit/?.so;",
    exec_prefix = opts.exec_prefix, env = opts.env,
    vars = { root = root, cafile = s.cafile, config = cjson.encode(config), extra = opts.extra or "" },
  })
  a.url = "http://127.0.0.1:" .. a.port
  for _ = 1, 50 do
    if H.sh("curl -s " .. a.url .. "/ping") == "pong\n" then return a end
    H.sleep(0.05)
  end
  error("the app did not start: " .. a:error_log())
end

--- Asserts an error's exact shape.
function H.assert_error(err, want)
  assert.are.equal(oauth.Error, getmetatable(err))
  for k, v in pairs(want) do
    assert.are.same(v, err[k], "err." .. k)
  end
  assert.is_string(err.message)
  assert.is_boolean(err.retryable)
end

return H
