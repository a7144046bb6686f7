-- The application the OpenResty specs run inside nginx (LuaJIT): a client
-- made in init_by_lua (libcurl, inherited by every worker) and one per
-- worker on cosockets sharing its token through ngx.shared.nomba.
local oauth = require "nomba.oauth"
local resty = require "nomba.oauth.resty"
local cjson = require "cjson"

local M = {}
local cfg, master_client, client, shared_store

local function options(extra)
  local o = { account_id = cfg.account_id, client_id = cfg.client_id, client_secret = cfg.client_secret,
              base_url = cfg.url, retries = cfg.retries or 0, timeout = cfg.timeout or 3 }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

function M.init(c)
  cfg = c
  master_client = oauth.new(options { cafile = cfg.cafile })
  if cfg.master_issue then assert(master_client:issue()) end   -- libcurl in the master, before fork
end

local function redis_store(port)
  -- lua-resty-redis (Debian lua-nginx-redis names it nginx.redis): a
  -- connection per operation, handed back to the cosocket pool after use
  local redis = require "nginx.redis"
  return oauth.store.redis(function()
    local red = redis:new()
    red:set_timeouts(1000, 1000, 1000)
    local ok, err = red:connect("127.0.0.1", port)
    if not ok then return nil, err end
    return red
  end, { prefix = "resty:" })
end

function M.init_worker()
  local store = cfg.redis_port and redis_store(cfg.redis_port) or oauth.store.shdict(ngx.shared.nomba)
  if cfg.redis_tls_port then          -- the store's own connection, TLS verified by nginx's trusted CAs
    store = oauth.store.redis({ host = "127.0.0.1", port = cfg.redis_tls_port, ssl = true,
                                server_name = cfg.redis_server_name or "localhost", password = cfg.redis_password },
                              { prefix = "tls:" })
  end
  -- Sentinel's or Cluster's form: lua-resty-redis on cosockets, the store's own connections
  local nodes = cfg.redis_sentinels or cfg.redis_cluster
  if nodes then
    local list = {}
    for i, port in ipairs(nodes) do list[i] = { host = "127.0.0.1", port = port } end
    store = oauth.store.redis(cfg.redis_sentinels and { sentinels = list, master_name = cfg.redis_master_name } or
                              { cluster = list }, { prefix = "ha:" })
  end
  shared_store = store
  client = oauth.new(options { transport = resty, store = store })
  if cfg.keep_fresh then assert(resty.keep_fresh(client, { interval = cfg.keep_fresh })) end
end

local function json(v) ngx.header["Content-Type"] = "application/json"; ngx.say(cjson.encode(v)) end

local routes = {}

routes["/ping"] = function() ngx.say("pong") end
routes["/pid"] = function() ngx.say(ngx.worker.pid()) end
routes["/holder"] = function() ngx.say(ngx.shared.test:get("last_token_pid") or "none") end

routes["/token"] = function()
  ngx.shared.test:set("last_token_pid", ngx.worker.pid())
  local t, err = client:token()
  if not t then
    ngx.status = 500
    ngx.say(tostring(err))
    return
  end
  ngx.say(t)
end

-- client:request on cosockets; then the token is revoked elsewhere and the
-- next call renews (the 401 path) and still answers
routes["/request"] = function()
  local res, err = client:request { path = "/v1/accounts/balance" }
  if not res then return json { error = tostring(err) } end
  local other = oauth.new(options { transport = resty })
  assert(other:revoke(client:token()))
  local res2, err2 = client:request { path = "/v1/accounts/balance" }
  json { status = res.status, balance = res.data.balance, after_revoke = res2 and res2.status,
         error = err2 and tostring(err2) }
end

-- Holds a request until n have arrived under `counter` (in whichever
-- workers took them), 5 s at most.
local function together(counter)
  local n, d = tonumber(ngx.var.arg_n), ngx.shared.test
  d:incr(counter, 1, 0)
  local deadline = ngx.now() + 5
  while d:get(counter) < n and ngx.now() < deadline do
    ngx.sleep(0.002)
    ngx.update_time()
  end
end

-- n requests held until all n have arrived, then each makes one client:request at once
routes["/request_together"] = function()
  together("arrived")
  local res, err = client:request { path = "/v1/accounts/balance" }
  json { status = res and res.status, worker = ngx.worker.id(), error = err and tostring(err) }
end

-- n calls held until all n have arrived, then each makes one
-- client:request naming the accountId `account`: its status, or its
-- error's kind, status and message
routes["/request_as"] = function()
  together("arrived_as")
  local res, err = client:request { path = "/v1/accounts/balance", account_id = ngx.var.arg_account }
  json { status = res and res.status, kind = err and err.kind, err_status = err and err.status,
         message = err and err.message, worker = ngx.worker.id() }
end

-- the worker's store: add (or lock) `key` for `ttl` seconds, get it
routes["/store_add"] = function()
  local key, ttl = ngx.var.arg_key, tonumber(ngx.var.arg_ttl)
  local got, err
  if ngx.var.arg_lock then
    got, err = shared_store:lock(key, ttl)
  else
    got, err = shared_store:add(key, "v", ttl)
  end
  json { got = got, err = err and tostring(err), wall = ngx.time() }
end
-- a webhook claim on the worker's store: first, held or done (done=1: then mark it done)
routes["/claim"] = function()
  local got, err = oauth.webhook.claim(shared_store, ngx.var.arg_id, 60)
  if got == "first" and ngx.var.arg_done then oauth.webhook.done(shared_store, ngx.var.arg_id) end
  json { got = got, err = err and tostring(err), data_lost = shared_store.data_lost }
end
routes["/store_get"] = function()
  json { value = shared_store:get(ngx.var.arg_key) or cjson.null }
end

-- one client:request, its answer's status and headers (or its error's)
routes["/request_headers"] = function()
  local res, err = client:request { path = "/v1/accounts/balance" }
  local r = res or err.response or {}
  json { status = r.status, headers = r.headers, error = err and tostring(err) }
end

routes["/invalidate"] = function()
  client:invalidate()
  ngx.say("ok")
end

routes["/headers"] = function()
  local h, err = client:headers()
  if not h then ngx.status = 500; ngx.say(tostring(err)) return end
  json(h)
end

-- every public method, on cosockets
routes["/all"] = function()
  local out = {}
  local c = oauth.new(options { transport = resty })
  local t = assert(c:issue())
  out.issue = #t.access_token
  out.token_same = c:token() == t.access_token
  out.headers = c:headers().accountId
  local r = assert(c:refresh())
  out.refresh = r.access_token ~= t.access_token
  c:invalidate()
  out.after_invalidate = c:token() ~= r.access_token
  out.revoke = assert(c:revoke())
  out.tostring = tostring(c)
  local _, bad = oauth.new(options { transport = resty, client_secret = "wrong" }):issue()
  out.bad_kind, out.bad_status = bad.kind, bad.status
  local o = options { transport = resty }
  o.client_secret = nil
  local p = oauth.new(o)
  local v, ch = oauth.pkce.pair()
  local code = assert(p:authorize { code_challenge = ch })
  out.exchange = #assert(p:exchange(code, v)).access_token
  c:close()
  out.closed_kind = select(2, c:token()).kind
  json(out)
end

-- through an HTTP CONNECT proxy (spec/connect_proxy.lua): a renewal and a call
routes["/proxied"] = function()
  local c = oauth.new(options { transport = resty, proxy = ngx.var.arg_proxy })
  local t, err = c:token()
  local res, rerr
  if t then res, rerr = c:request { path = "/v1/accounts/balance" } end
  local e = err or rerr
  json { ok = res ~= nil, status = res and res.status, kind = e and e.kind, message = e and e.message,
         maybe_sent = e and e.maybe_sent }
end

-- a certificate that does not cover the name asked for: a typed error
routes["/tls_refused"] = function()
  local c = oauth.new(options { transport = resty, base_url = cfg.url:gsub("//localhost:", "//127.0.0.1:") })
  local ok, t, err = pcall(c.issue, c)
  json { raised = not ok, kind = ok and not t and err.kind, message = ok and not t and err.message or tostring(t) }
end

-- status, metrics, the nginx-lua-prometheus adapter (fed into a recorder of
-- the calls it makes: counter/gauge, inc/set), and a log line's source
routes["/status"] = function()
  local calls = {}
  local function metric(kind, name)
    return {
      inc = function(_, v, labels) calls[#calls + 1] = { kind, name, "inc", v, labels } end,
      set = function(_, v, labels) calls[#calls + 1] = { kind, name, "set", v, labels } end,
    }
  end
  local prom = {
    counter = function(_, name, _, labels)
      calls[#calls + 1] = { "new counter", name, labels }
      return metric("c", name)
    end,
    gauge = function(_, name, _, labels)
      calls[#calls + 1] = { "new gauge", name, labels }
      return metric("g", name)
    end,
  }
  local sync = resty.prometheus(prom, { interval = 3600 })
  assert(client:token())
  local logged = oauth.new(options { transport = resty, client_secret = "wrong", retries = 1 })
  logged:token()                                          -- one failed renewal: logged with its source
  sync()
  local first = #calls
  sync()                                                  -- nothing new: no increment
  json { status = client:status(), metrics = oauth.metrics(), calls = calls, first = first, second = #calls }
end

-- one issue on cosockets against whatever the simulator was told to answer
routes["/hostile"] = function()
  local args = ngx.req.get_uri_args()
  local c = oauth.new(options { transport = resty, timeout = tonumber(args.timeout) or 1,
                                connect_timeout = tonumber(args.connect_timeout),
                                base_url = args.base_url or cfg.url })
  local t0 = ngx.now()
  local t, err = c:issue()
  ngx.update_time()
  json { ok = t ~= nil, kind = err and err.kind, message = err and err.message, pid = ngx.worker.pid(),
         elapsed = ngx.now() - t0 }
end

-- a Nomba webhook receiver: each requestId granted once across the workers.
-- The transaction type steers the handler: "fail_me" raises; "fail_N"
-- fails the first N deliveries of the event; "hang" records its worker's
-- pid and waits (for a test to kill the worker inside the handler)
routes["/webhook"] = function()
  local store = cfg.redis_port and redis_store(cfg.redis_port) or oauth.store.shdict(ngx.shared.nomba)
  local fail_marks = tonumber(ngx.var.arg_fail_marks)
  if fail_marks then                        -- the store takes no "done" mark for its first fail_marks tries
    local inner, t = store, ngx.shared.test
    store = setmetatable({ set = function(_, key, value, ttl)
      if key:find(":done$") and t:incr("mark_failures", 1, 0) <= fail_marks then return nil, "READONLY" end
      return inner.set(inner, key, value, ttl)
    end }, { __index = function(_, k)
      local f = inner[k]
      if type(f) == "function" then return function(_, ...) return f(inner, ...) end end
      return f
    end })
  end
  return resty.webhook {
    key = cfg.webhook_key or "sim-webhook-key-0001", store = store, lease = cfg.webhook_lease,
    handler = function(event)
      local kind, id, t = event.data.transaction.type, event.requestId, ngx.shared.test
      t:incr("delivered:" .. id, 1, 0)
      if kind == "fail_me" then error("the handler failed") end
      local n = tonumber(kind:match("^fail_(%d+)$"))
      if n and t:incr("failed:" .. id, 1, 0) <= n then return false end
      if kind == "hang" and not t:get("hung:" .. id) then
        t:set("hung:" .. id, ngx.worker.pid())
        ngx.sleep(30)
      end
      t:incr("granted:" .. id, 1, 0)
      t:incr("granted", 1, 0)
      return true
    end,
  }
end

-- resty.webhook's refusals of a configuration that would grant twice
routes["/webhook_config"] = function()
  local cases = {
    nostore = { key = "k", handler = function() end },
    shortttl = { key = "k", handler = function() end, store = oauth.store.shdict(ngx.shared.nomba),
                 ttl = 3600, max_age = 7200 },
  }
  local ok, err = pcall(resty.webhook, cases[ngx.var.arg_case])
  ngx.say(ok and "accepted" or tostring(err))
end

routes["/hung"] = function() ngx.say(ngx.shared.test:get("hung:" .. ngx.var.arg_id) or "none") end

routes["/granted"] = function()
  local id = ngx.var.arg_id
  ngx.say(id and (ngx.shared.test:get("granted:" .. id) or 0) or (ngx.shared.test:get("granted") or 0))
end

-- one driver-parity scenario (spec/parity.lua) on cosockets
local parity_stores = 0
routes["/parity"] = function()
  ngx.req.read_body()
  local c = cjson.decode(ngx.req.get_body_data())
  local out = require("parity").run(c, {
    make = function(opts)
      opts.transport = resty
      return oauth.new(options(opts))
    end,
    store = function()
      parity_stores = parity_stores + 1
      return oauth.store.shdict(ngx.shared.nomba, { prefix = "parity" .. parity_stores .. ":" })
    end,
    revoke = function(tok) return oauth.new(options { transport = resty }):revoke(tok) end,
  })
  json(out)
end

routes["/master/issue"] = function()
  local t, err = master_client:issue()
  if not t then ngx.status = 500; ngx.say(tostring(err)) return end
  ngx.say("ok ", ngx.worker.pid())
end

function M.handle()
  local f = routes[ngx.var.uri]
  if not f then return ngx.exit(404) end
  return f()
end

function M.in_set()
  local t, err = client:token()
  return t and "token" or tostring(err)
end

function M.in_log()
  local t, err = client:token()
  ngx.shared.test:set("log_phase", t and "token" or tostring(err))
end

return M
