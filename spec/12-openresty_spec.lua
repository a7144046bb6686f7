-- Inside real nginx (Debian nginx + libnginx-mod-http-lua, LuaJIT): the
-- module loads, every method works on cosockets, a worker never blocks on a
-- token request, workers share one token, a killed lock holder is survived,
-- and fork and reload are safe.
local cjson = require "cjson"
local core = require "nomba.oauth.core"
local H = require "helpers"

local sh, app = H.sh, H.openresty_app

local function get(a, path)
  local out = sh("curl -s -w '\\n%{http_code}' --max-time 20 " .. a.url .. path)
  local body, code = out:match("^(.*)\n(%d+)$")
  return tonumber(code), body
end

local function assert_clean_log(a)
  local log = a:error_log()
  for _, bad in ipairs { "exited on signal", "double free", "segfault", "%[alert%]", "%[emerg%]", "%[crit%]" } do
    assert.is_nil(log:find(bad), "error.log: " .. log:sub(1, 2000))
  end
end

describe("OpenResty", function()
  local sim, a
  before_each(function()
    sim = H.sim()
    H.reset()
  end)
  after_each(function()
    if a then a:stop() end
    a = nil
  end)

  it("goes through an HTTP CONNECT proxy (proxy option), TLS verified for Nomba's name", function()
    local sim_port = sim.url:match(":(%d+)$")
    local function proxy(mode)
      local port = require("nomba.oauth.simulator").free_port()
      local logfile = os.tmpname()
      local pid = H.sh(("%s spec/connect_proxy.lua %d %s %s >/dev/null 2>&1 & echo $!"):format(
        arg and arg[-1] or "lua5.4", port, logfile, mode)):match("%d+")
      for _ = 1, 100 do
        local f = io.open(logfile)
        local up = f and f:read("*a"):find("listening", 1, true)
        if f then f:close() end
        if up then break end
        H.sleep(0.02)
      end
      return "http://127.0.0.1:" .. port, logfile, pid
    end
    a = app { workers = 1 }
    local url, logfile, pid = proxy("ok")
    local code, body = get(a, "/proxied?proxy=" .. url)
    assert.are.equal(200, code, body)
    local r = cjson.decode(body)
    assert.is_true(r.ok, body)
    assert.are.equal(200, r.status)
    local seen = io.open(logfile):read("*a")
    assert.matches("CONNECT localhost:" .. sim_port, seen, 1, true)
    -- libcurl takes the same proxy the same way
    local c = H.client { proxy = url }
    assert(c:token())
    assert.are.equal(200, assert(c:request { path = "/v1/accounts/balance" }).status)
    c:close()
    local _, n = io.open(logfile):read("*a"):gsub("CONNECT localhost:" .. sim_port, "")
    assert.is_true(n >= 2, io.open(logfile):read("*a"))
    os.execute("kill " .. pid)
    os.remove(logfile)
    -- a proxy that wants credentials: config; one that refuses: transport, nothing sent
    url, logfile, pid = proxy("407")
    r = cjson.decode(select(2, get(a, "/proxied?proxy=" .. url)))
    assert.are.same({ false, "config" }, { r.ok, r.kind })
    assert.is_nil(r.maybe_sent)         -- a token operation's error: maybe_sent is an API call's (as on libcurl)
    assert.matches("asks for authentication", r.message)
    os.execute("kill " .. pid)
    os.remove(logfile)
    url, logfile, pid = proxy("403")
    r = cjson.decode(select(2, get(a, "/proxied?proxy=" .. url)))
    assert.are.same({ false, "transport" }, { r.ok, r.kind })
    assert.matches("proxy answered 403", r.message)
    os.execute("kill " .. pid)
    os.remove(logfile)
    -- an https:// or "env" proxy is a config error
    for _, bad in ipairs { "https://127.0.0.1:9", "env" } do
      r = cjson.decode(select(2, get(a, "/proxied?proxy=" .. bad)))
      assert.are.same({ false, "config" }, { r.ok, r.kind }, bad)
    end
  end)

  it("a TLS failure on cosockets is a tls error", function()
    a = app {}
    local code, body = get(a, "/tls_refused")
    assert.are.equal(200, code, body)
    local r = cjson.decode(body)
    assert.is_false(r.raised, r.message)
    assert.are.equal("tls", r.kind, r.message)
    assert.matches("TLS handshake", r.message)
    assert.is_nil(a:error_log():find("assertion failed", 1, true))
  end)

  it("status, metrics and the nginx-lua-prometheus adapter in a worker; log lines name their source", function()
    a = app { workers = 1 }
    local code, body = get(a, "/status")
    assert.are.equal(200, code, body)
    local r = cjson.decode(body)
    assert.are.equal("valid", r.status.token)
    assert.are.equal(1, r.status.counts.issues)
    assert.matches('\nnomba_oauth_issues_total{account_id="[^"]+",client_id="sim%-client%-0001",worker="0"} 1\n',
                   r.metrics)
    assert.matches('\nnomba_oauth_renewal_failures_total{[^}]*} 1\n', r.metrics)
    local made, incs, sets = {}, {}, 0
    for i, c in ipairs(r.calls) do
      if c[1]:match("^new ") then made[c[2]] = c[3]
      elseif c[3] == "inc" and i <= r.first then incs[c[2]] = (incs[c[2]] or 0) + c[4]
      elseif c[3] == "set" then sets = sets + 1 end
    end
    assert.are.same({ "account_id", "client_id" }, made.nomba_oauth_issues_total)
    assert.is_table(made.nomba_oauth_token_expires_in_seconds)
    assert.are.equal(1, incs.nomba_oauth_issues_total)
    assert.are.equal(1, incs.nomba_oauth_renewal_failures_total)
    assert.is_true(sets >= 2)
    for i = r.first + 1, r.second do assert.are.equal("set", r.calls[i][3]) end   -- no increment twice
    -- the failed renewal: one warning or error, naming the application's line, not the library's
    local lines = {}
    for line in a:error_log():gmatch("[^\n]+") do
      if line:find("renewal failed", 1, true) then lines[#lines + 1] = line end
    end
    assert.are.equal(1, #lines, a:error_log())
    assert.matches("app%.lua:%d+: nomba%.oauth: renewal failed", lines[1])
    assert.is_nil(a:error_log():find("events.lua", 1, true))
  end)

  it("loads the module and runs every public method from content_by_lua", function()
    a = app {}
    local code, body = get(a, "/all")
    assert.are.equal(200, code, body)
    local r = cjson.decode(body)
    assert.is_true(r.issue > 300)
    assert.is_true(r.token_same)
    assert.are.equal(sim.client.account_id, r.headers)
    assert.is_true(r.refresh)
    assert.is_true(r.after_invalidate)
    assert.is_true(r.revoke)
    assert.matches("token none", r.tostring)
    assert.are.same({ "api", 401 }, { r.bad_kind, r.bad_status })
    assert.is_true(r.exchange > 300)
    assert.are.equal("closed", r.closed_kind)
    assert_clean_log(a)
  end)

  it("never blocks the worker on a token request", function()
    a = app { workers = 1 }
    -- the simulator holds the token request until the pings are answered
    assert(sim:fault { endpoint = "issue", hold = true, pass = true })
    local out = os.tmpname()
    os.execute("env -u LD_PRELOAD curl -s --max-time 10 " .. a.url .. "/token > " .. out .. " 2>&1 &")
    for _ = 1, 100 do                          -- until the token request is in flight
      if H.count("issue") > 0 then break end
      H.sleep(0.05)
    end
    assert.are.equal(1, H.count("issue"))
    for _ = 1, 20 do
      local code, body = get(a, "/ping")
      assert.are.same({ 200, "pong\n" }, { code, body })
    end
    local f = io.open(out)
    assert.are.equal("", f:read("*a"))         -- still in flight when all 20 were answered
    f:close()
    assert(sim:release("issue"))
    for _ = 1, 60 do
      f = io.open(out)
      local s = f:read("*a")
      f:close()
      if s ~= "" then break end
      H.sleep(0.05)
    end
    f = io.open(out)
    assert.matches("^eyJ", f:read("*a"))
    f:close()
    os.remove(out)
  end)

  it("shares one token between 4 workers: 200 concurrent requests, one issue, then one refresh", function()
    assert(sim:config { lifetime = 6 })
    a = app { workers = 4 }
    local urls = {}
    for i = 1, 200 do urls[i] = "-o /dev/null -w '%{http_code}\\n' " .. a.url .. "/token" end
    local function storm()
      local out = sh("curl -s --parallel --parallel-max 50 " .. table.concat(urls, " ") .. " 2>/dev/null")
      local ok = 0
      for code in out:gmatch("%d+") do if code == "200" then ok = ok + 1 end end
      return ok
    end
    assert.are.equal(200, storm())
    assert.are.equal(1, H.count("issue"))
    H.sleep(3.3)                               -- inside the window: 6 s lifetime, 3 s window
    assert.are.equal(200, storm())
    assert.are.equal(1, H.count("issue"))
    assert.are.equal(1, H.count("refresh"))
    assert_clean_log(a)
  end)

  it("renews after the lock TTL when the holder was killed mid-renewal", function()
    a = app { workers = 2, config = { timeout = 1.5 } }
    assert(sim:fault { endpoint = "issue", delay = 5 })
    os.execute("env -u LD_PRELOAD curl -s --max-time 10 " .. a.url .. "/token >/dev/null 2>&1 &")
    H.sleep(0.4)
    local holder = tonumber(select(2, get(a, "/holder")))
    assert.is_number(holder)
    os.execute("kill -KILL " .. holder)
    assert(sim:control("/_sim/clear_faults", {}))
    local t0 = core.now()
    local code, body = get(a, "/token")
    assert.are.equal(200, code, body)
    assert.matches("^eyJ", body)
    -- the lock (its lease, timeout + 1 = 2.5 s, no longer kept alive) had to expire first
    assert.is_true(core.now() - t0 >= 1.5)
    assert.are.equal(2, H.count("issue"))
  end)

  it("shares one token through Redis over TLS (the store's own connection, verified), with AUTH", function()
    local dir = H.sim().cafile:gsub("/ca%.crt$", "")   -- the simulator's certificate, for localhost
    local tls_port = require("nomba.oauth.simulator").free_port()
    local redis = assert(H.redis(nil, ("--tls-port %d --tls-cert-file %s/server.crt --tls-key-file %s/server.key " ..
                                        "--tls-ca-cert-file %s/ca.crt --tls-auth-clients no --requirepass tls-pass-7")
                                       :format(tls_port, dir, dir, dir)))
    redis.auth = "-a tls-pass-7 --no-auth-warning "
    a = app { workers = 4, config = { redis_tls_port = tls_port, redis_password = "tls-pass-7" } }
    for _ = 1, 8 do
      local code, body = get(a, "/token")
      assert.are.equal(200, code, body)
    end
    assert.are.equal(1, H.count("issue"))
    local key = H.token_key(redis.cli("--scan --pattern 'tls:*'"), "tls:")
    assert.is_string(key)
    assert.matches("^n1%.", redis.cli("get " .. key))
    a:stop()
    -- a certificate for another name is refused: the workers go on alone, and say why
    H.reset()
    redis.cli("flushall")
    a = app { workers = 1, config = { redis_tls_port = tls_port, redis_password = "tls-pass-7",
                                      redis_server_name = "nomba.example" } }
    local code = get(a, "/token")
    assert.are.equal(200, code)
    assert.is_nil(H.token_key(redis.cli("--scan --pattern 'tls:*'"), "tls:"))
    assert.matches("TLS handshake", a:error_log())
    assert.is_nil(a:error_log():find("tls-pass-7", 1, true))
    redis.cleanup()
  end)

  it("shares one token through Redis with lua-resty-redis on cosockets", function()
    local redis = assert(H.redis())
    a = app { workers = 4, config = { redis_port = redis.port } }
    local urls = {}
    for i = 1, 100 do urls[i] = "-o /dev/null -w '%{http_code}\\n' " .. a.url .. "/token" end
    local out = sh("curl -s --parallel --parallel-max 25 " .. table.concat(urls, " ") .. " 2>/dev/null")
    local ok = 0
    for code in out:gmatch("%d+") do if code == "200" then ok = ok + 1 end end
    assert.are.equal(100, ok)
    assert.are.equal(1, H.count("issue"))
    local keys = redis.cli("--scan --pattern 'resty:*'")
    local key = H.token_key(keys, "resty:")
    assert.is_string(key, keys)
    local value = redis.cli("get " .. key)
    assert.matches("^n1%.", value)
    local code, tok = get(a, "/token")
    assert.are.equal(200, code)
    assert.is_nil(value:find(tok:match("%S+"), 1, true))
    redis.cleanup()
    assert_clean_log(a)
  end)

  it("gives a clear error in phases without cosockets", function()
    a = app {}
    local code, body = get(a, "/phase/set")
    assert.are.equal(200, code)
    assert.matches("cosockets are not available in the set phase", body)
    assert.matches("keep_fresh", body)
    get(a, "/phase/log")
    H.sleep(0.2)
    -- the log phase can read the shared token once a handler has fetched it
    assert.are.equal(200, (get(a, "/token")))
    get(a, "/phase/log")
    assert_clean_log(a)
  end)

  it("keeps the shared token fresh from a timer: handlers never wait", function()
    assert(sim:config { lifetime = 4 })
    a = app { workers = 2, config = { keep_fresh = 0.3 } }
    H.sleep(0.5)
    assert.are.equal(1, H.count("issue"))      -- the timer issued without any request
    H.sleep(2.2)                               -- past the 2 s window
    assert.are.equal(1, H.count("refresh"))
    local code, body = get(a, "/token")
    assert.are.equal(200, code)
    assert.matches("^eyJ", body)
    assert.are.equal(1, H.count("issue"))
    assert.are.equal(1, H.count("refresh"))
  end)

  it("writes failures to nginx's error log by default, never a secret", function()
    a = app { workers = 1, config = { keep_fresh = 0.3 } }
    H.sleep(0.5)
    assert.are.equal(200, (get(a, "/token")))
    assert(sim:fault { endpoint = "refresh", status = 503, times = 100 })
    assert(sim:fault { endpoint = "issue", status = 503, times = 100 })
    assert(sim:config { lifetime = 4 })
    get(a, "/invalidate")                      -- no valid token: the timer's renewals fail
    H.sleep(1.5)
    local log = a:error_log()
    -- one line per failed renewal; its attempts are info, below this log's level
    assert.is_nil(log:find("attempt 1 failed", 1, true))
    assert.matches("%[error%][^\n]*nomba%.oauth: renewal failed %(", log)
    assert.is_nil(log:find(sim.client.client_secret, 1, true))
    assert.is_nil(log:find("eyJ", 1, true))
  end)

  it("a client made in init_by_lua works in every worker, and survives reload", function()
    a = app { workers = 4, config = { master_issue = true } }
    assert.are.equal(1, H.count("issue"))      -- the master's own request
    local pids = {}
    for _ = 1, 40 do
      local code, body = get(a, "/master/issue")
      assert.are.equal(200, code, body)
      pids[body:match("ok (%d+)")] = true
    end
    local n = 0
    for _ in pairs(pids) do n = n + 1 end
    assert.is_true(n >= 2, "requests reached only one worker")
    local old = a:workers()
    assert.is_true(a:reload())
    for _ = 1, 100 do                          -- the old workers leave
      local still = false
      for _, pid in ipairs(old) do
        if os.execute("kill -0 " .. pid .. " 2>/dev/null") == true or
           os.execute("kill -0 " .. pid .. " 2>/dev/null") == 0 then still = true end
      end
      if not still then break end
      H.sleep(0.05)
    end
    for _ = 1, 10 do
      local code, body = get(a, "/master/issue")
      assert.are.equal(200, code, body)
    end
    assert_clean_log(a)
  end)
end)
