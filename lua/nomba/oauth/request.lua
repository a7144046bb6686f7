--- Authorized calls to any Nomba API (`client:request`): the arguments and
-- the policy of the call, a kind of job of the machine (the answer is read
-- in C, proto.c, as every answer is).
--   * 401: the token that was sent is invalidated (only while the client
--     still holds it), renewed through the normal path (single-flight, the
--     store's lock), and the call is made once more. Never a loop; a 401
--     renewing cannot cure (a refused accountId) renews no more
--     (unauthorized.lua).
--   * No double charge: a transient failure is retried for GET, HEAD, PUT,
--     DELETE, OPTIONS or `idempotent = true`; any other call only when it
--     provably never left (the connection never came up, or 429/503 with
--     Retry-After, which Nomba answers before processing). It never rides
--     a reused connection (libcurl would re-send it once on a fresh one).
--   * Rate limits: X-Rate-Limit-{Limit,Remaining,Window} become
--     `res.rate_limit`; after `remaining = 0` the next call waits out the
--     window, or fails with `rate_limited` where it cannot wait.
-- (Private to nomba.oauth.)
local core = require "nomba.oauth.core"
local platform = require "nomba.oauth.platform"
local machine = require "nomba.oauth.machine"
local renewal = require "nomba.oauth.renewal"
local metrics = require "nomba.oauth.metrics"
local unauthorized = require "nomba.oauth.unauthorized"
local options = require "nomba.oauth.options"

local type, pairs, ipairs, tostring, tonumber, error = type, pairs, ipairs, tostring, tonumber, error
local next, getmetatable = next, getmetatable
local sort, concat, math_min, math_abs, find = table.sort, table.concat, math.min, math.abs, string.find
local now, new_error, fresh, LIMITS = platform.now, core.error, core.fresh, core.LIMITS
local spaceless = core.spaceless

local cjson = require("cjson.safe").new()

local R = {}

local METHODS = { GET = true, HEAD = true, POST = true, PUT = true, PATCH = true, DELETE = true, OPTIONS = true }
local IDEMPOTENT = { GET = true, HEAD = true, PUT = true, DELETE = true, OPTIONS = true }
-- headers that belong to the client or to HTTP itself
local RESERVED = { authorization = true, accountid = true, host = true, ["content-length"] = true,
                   ["transfer-encoding"] = true, connection = true, expect = true, ["content-type"] = true }

local function bad(what)
  error("nomba.oauth: bad argument #1 to 'request' (" .. what .. ")", 4)
end

local function urlencode(v)
  return (tostring(v):gsub("[^%w%-%._~]", function(ch) return ("%%%02X"):format(ch:byte()) end))
end

-- The one URL rule for a path (and a query written in it), before any
-- driver sees it: a fragment and "." or ".." segments are refused (libcurl
-- would drop the one and collapse the others, a cosocket send them as they
-- are); every byte RFC 3986 does not allow there is percent-encoded (a
-- '%' that starts no escape included), so every driver sends the same bytes.
-- refused(path): why it is refused, or nil; url_rule(path): the path as sent.
local KEEP_PATH = "[^%w%-%._~!%$&'%(%)%*%+,;=:@/%%]"
local KEEP_QUERY = "[^%w%-%._~!%$&'%(%)%*%+,;=:@/%?%%]"
local function escape(ch) return ("%%%02X"):format(ch:byte()) end
local function escapes(h) if #h < 2 then return "%25" .. h end end   -- a '%' that starts no escape
local function refused(p)
  if find(p, "#", 1, true) then return "path must not hold a fragment ('#'): it is never sent" end
  local dec = (p:match("^[^?]*")):gsub("%%2[Ee]", ".")
  if (dec .. "/"):find("/%.%.?/") then return "path must not hold '.' or '..' segments" end
end
local function url_rule(p)
  local q = find(p, "?", 1, true)
  local part, query = q and p:sub(1, q - 1) or p, q and p:sub(q + 1) or nil
  part = part:gsub("%%(%x?%x?)", escapes):gsub(KEEP_PATH, escape)
  if query then
    query = query:gsub("%%(%x?%x?)", escapes):gsub(KEEP_QUERY, escape)
    return part .. "?" .. query
  end
  return part
end

-- "?k=v&..." with the keys sorted, or "".
local function query_of(q)
  if q == nil then return "" end
  if type(q) ~= "table" then bad("query must be a table") end
  local keys = {}
  local function check(k, v, where)
    local tv = type(v)
    if tv ~= "string" and tv ~= "number" and tv ~= "boolean" then
      bad(where .. " must be a string or number" .. (where == "query." .. k and " (or a list of them)" or ""))
    end
    if tv == "number" and v - v ~= 0 then bad(where .. " must be a finite number") end
  end
  for k, v in pairs(q) do
    if type(k) ~= "string" then bad("query keys must be strings") end
    if type(v) == "table" then                       -- a list: the key once per value, in order
      if #v == 0 then bad("query." .. k .. " is an empty list") end
      for i = 1, #v do check(k, v[i], "query." .. k .. "." .. i) end
    else
      check(k, v, "query." .. k)
    end
    keys[#keys + 1] = k
  end
  sort(keys)
  local parts = {}
  local function add(k, v)
    -- a whole number reads the same on every Lua: 4 / 2 is "2", not 5.3+'s "2.0"
    if type(v) == "number" and v % 1 == 0 and v > -2 ^ 53 and v < 2 ^ 53 then v = ("%d"):format(v) end
    parts[#parts + 1] = urlencode(k) .. "=" .. urlencode(v)
  end
  for _, k in ipairs(keys) do
    local v = q[k]
    if type(v) == "table" then
      for i = 1, #v do add(k, v[i]) end
    else
      add(k, v)
    end
  end
  return #parts > 0 and "?" .. concat(parts, "&") or ""
end

-- lua-cjson writes a number with 14 significant digits: one it would change
-- (1234567890123456 goes out as 1.2345678901235e+15) is refused, naming
-- where it stands, instead of being sent changed. Floating-point noise past
-- the 15th digit (0.1 + 0.2 goes out as 0.3) is not a change. NaN and
-- infinities are left to cjson, which refuses them.
local JSON_DEPTH = LIMITS.json_depth        -- one depth for every JSON, read or written
local function exact_numbers(t, where, depth)
  if depth > JSON_DEPTH then bad(where .. " is nested deeper than " .. JSON_DEPTH .. " levels (or holds a cycle)") end
  for k, v in next, t do
    local tv = type(v)
    if tv == "number" then
      local w = v - v == 0 and tonumber(("%.14g"):format(v))
      if w and w ~= v and math_abs(w - v) > math_abs(v) * 1e-15 then
        bad(where .. "." .. tostring(k) .. " has more than 14 significant digits, which lua-cjson would " ..
            "change: send it as a string")
      end
    elseif tv == "table" then
      exact_numbers(v, where .. "." .. tostring(k), depth + 1)
    end
  end
end

-- The checked arguments of the usual call, `{path = p}` alone (a plain
-- table: no __index may add options), by path and client: made once per
-- path (at most PATH_CACHE of them, then it starts over), since the C core
-- and the policy only read them.
local PATH_CACHE = 64

--- Checks the arguments of client:request (raising on a misuse, naming it)
-- and returns one table: the arguments of the C core and what the policy
-- needs (idempotent, timeout, the fields of its events).
function R.check(self, st, opts)
  local base_url, account = st.base_url, st.account_id
  if type(opts) ~= "table" then bad("table expected") end
  local only_path = next(opts) == "path" and next(opts, "path") == nil and getmetatable(opts) == nil
  if only_path then
    local known = st.path_args and st.path_args[opts.path]
    if known then return known end
  end
  local method = opts.method or "GET"
  if not METHODS[method] then
    if type(method) ~= "string" or not METHODS[method:upper()] then
      bad("method must be GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS")
    end
    method = method:upper()
  end
  local path = opts.path
  if type(path) ~= "string" or not spaceless(path) then
    bad("path must be a string without spaces or control characters")
  end
  local url
  local why = refused(path)
  if why then bad(why) end
  if path:sub(1, 1) == "/" then
    url = base_url .. url_rule(path)
  elseif path:match("^https?://") then
    -- judged once, on libcurl's parse; written on base_url, as the C core
    -- takes it without parsing it again
    if core.closed(self) then return {} end   -- it sends nothing: "closed" is the answer
    local on, rest = core.url_on(self, path)
    if on == nil then bad("path is not a usable URL") end
    if not on then bad("an absolute path must be on base_url's scheme, host and port") end
    url = base_url .. url_rule(rest)
  else
    bad("path must start with '/' or be a URL on base_url")
  end
  local q = query_of(opts.query)
  if q ~= "" then url = url .. (url:find("?", 1, true) and "&" .. q:sub(2) or q) end
  local body, ctype = opts.body, opts.content_type
  if opts.json ~= nil then
    if body ~= nil then bad("give json or body, not both") end
    if type(opts.json) ~= "table" then bad("json must be a table") end
    exact_numbers(opts.json, "json", 1)
    local err
    body, err = cjson.encode(opts.json)
    if not body then bad("json cannot be encoded: " .. tostring(err)) end
    ctype = ctype or "application/json"
  elseif body ~= nil and type(body) ~= "string" then
    bad("body must be a string")
  end
  if body ~= nil and ctype == nil then ctype = "application/json" end
  if ctype ~= nil and (type(ctype) ~= "string" or ctype:find("[%z\1-\31\127]")) then
    bad("content_type must be a string without control characters")
  end
  local lines
  if opts.account_id == nil and ctype == nil and opts.headers == nil then
    lines = st.account_lines                -- the usual call's lines, made once (C only reads them)
    if not lines then
      lines = { "accountId: " .. account }
      st.account_lines = lines
    end
  else
    if opts.account_id ~= nil then
      local a = opts.account_id
      if type(a) ~= "string" or a == "" or #a > LIMITS.account_id or a:find("[%z\1-\31\127]") then
        bad("account_id must be a printable string of at most " .. LIMITS.account_id .. " bytes")
      end
      account = a
    end
    lines = { "accountId: " .. account }
    if ctype then lines[#lines + 1] = "Content-Type: " .. ctype end
  end
  if opts.headers ~= nil then
    if type(opts.headers) ~= "table" then bad("headers must be a table") end
    for k, v in pairs(opts.headers) do
      if type(k) ~= "string" or not k:match("^[%w!#$%%&'*+%-.^_`|~]+$") then bad("a header name is not a token") end
      if RESERVED[k:lower()] then bad("headers." .. k .. " is set by the client") end
      if type(v) ~= "string" or v:find("[%z\1-\8\10-\31\127]") then
        bad("headers." .. k .. " must be a string without control characters")
      end
      lines[#lines + 1] = k .. ": " .. v
    end
  end
  if opts.idempotent ~= nil and type(opts.idempotent) ~= "boolean" then bad("idempotent must be a boolean") end
  local timeout = opts.timeout
  if timeout ~= nil and (type(timeout) ~= "number" or not (timeout >= 0.001 and timeout <= LIMITS.timeout)) then
    bad(("timeout must be a number of seconds from 0.001 to %g"):format(LIMITS.timeout))
  end
  local max = opts.max_response_bytes
  if max ~= nil and (type(max) ~= "number" or not (max >= 256 and max <= LIMITS.response) or max % 1 ~= 0) then
    bad(("max_response_bytes must be an integer from 256 to %d"):format(LIMITS.response))
  end
  local idempotent = IDEMPOTENT[method] or opts.idempotent == true
  local event                               -- fields of its events, when anyone listens
  if st.on_event or st.log then
    local event_path = path                 -- the usual call: nothing to take away
    if path:byte(1) ~= 47 or path:find("[?#]") then
      event_path = (path:match("^https?://[^/]*(/[^?#]*)") or path):match("^[^?#]*")
    end
    event = { method = method, path = event_path }
  end
  -- the C core reads method .. max_response; the policy the rest
  local args = { method = method, url = url, lines = lines, body = body, fresh = not idempotent, account = account,
                 max_response = max or st.max_response or options.DEFAULTS.request_max_response_bytes,
                 idempotent = idempotent, timeout = timeout, event = event }
  if only_path then
    if not st.path_args or st.path_args_n >= PATH_CACHE then st.path_args, st.path_args_n = {}, 0 end
    st.path_args[path], st.path_args_n = args, st.path_args_n + 1
  end
  return args
end

-- The longest rate-limit wait a client keeps to itself: after it, the
-- next call asks Nomba again (which answers 429 if the limit still holds),
-- so a hostile or mistaken header cannot silence a client for good.
local WINDOW_CAP = options.DEFAULTS.rate_wait_cap

-- After an answer (or its error): the rate-limit window noted when none of
-- it is left, or when Nomba said 429 (its Retry-After, else a second).
local function note_rate(st, res, err)
  local wait
  local rl = res and res.rate_limit
  if rl and rl.remaining == 0 then
    wait = rl.window or 1
  elseif res and res.status == 429 then
    wait = err and err.retry_after or 1
  end
  if wait then st.rate_until = now() + math_min(wait, WINDOW_CAP) end
end

-- A spent rate-limit window: the seconds left of it, or nil.
local function rate_wait(st)
  local wait = st.rate_until and st.rate_until - now()
  if wait and wait > 0 then return wait end
end

local function rate_limited(self, wait)
  return new_error(self, "rate_limited", "request", "Nomba's rate limit: wait before the next call",
                   { retryable = true, retry_after = wait })
end

local function pending_error(self)
  return new_error(self, "pending", "request", "no valid token yet; a renewal is in flight")
end

-- The call's end, counted.
local function ended(st, res, err)
  metrics.count(st, "requests")
  if not res then metrics.count(st, "request_failures") end
  return "done", res, err
end

-- The call itself, with the token the client holds now (its operation's
-- job table is the call's own, made again).
local function send(self, st, job, tok)
  local args = job.args
  job.state, job.tok = "send", tok
  job.op_job = machine.op("request", args, nil, args.idempotent, args.timeout, args.event, job.op_job)
  return machine.call(self, st, job, job.op_job)
end

-- The gate (a spent rate-limit window is waited out where the caller may
-- wait: never in the non-blocking mode, in an nginx phase that cannot
-- sleep, or longer than the Retry-After cap), then a token, then the call.
local function gate(self, st, job)
  local wait = rate_wait(st)
  if wait then
    if job.state ~= "gate" then metrics.count(st, "rate_limit_waits") end
    if not machine.can_sleep(job) or wait > machine.RETRY_AFTER_CAP or wait > machine.left(job) then
      return ended(st, nil, rate_limited(self, wait))
    end
    job.state = "gate"
    return "sleep", wait
  end
  -- the non-blocking mode needs a valid token to start (else "pending":
  -- step() renews); the blocking one renews first when it is not fresh
  local inline = machine.waits_inline(job)
  local tok
  if inline then tok = fresh(self) else tok = fresh(self, 0) end   -- (never `a and b or c`: b may be nil)
  if tok then return send(self, st, job, tok) end
  if not inline then return ended(st, nil, pending_error(self)) end
  job.state = "token"
  return machine.call(self, st, job, renewal.job(false))
end

--- The kind of an API call.
function R.Call(self, st, job, what, a, b)
  if what == "start" then return gate(self, st, job) end
  if what == "wake" then return gate(self, st, job) end   -- the window passed
  -- "child": the call's answer, or a renewal's token
  if job.state == "send" then
    local res, err = a, b
    note_rate(st, res or (err and err.response), err)
    if err and err.status == 401 then
      metrics.count(st, "unauthorized")
      local account = job.args.account
      if job.retried then                 -- refused again on the renewed token: the accountId's fault
        if job.tok ~= job.first_tok then unauthorized.mark(self, st, account, job.tok) end
        return ended(st, nil, unauthorized.error(err, account))
      end
      if unauthorized.refused(self, st, account, job.tok) then
        return ended(st, nil, unauthorized.error(err, account))
      end
      -- the token sent is refused: invalidated while the client still holds
      -- it (another coroutine, worker or host may have renewed already),
      -- renewed once without the pause, and the call made once more
      if fresh(self, 0) == job.tok then self:invalidate() end
      job.retried, job.refusal, job.first_tok, job.state = true, err, job.tok, "renew"
      return machine.call(self, st, job, renewal.job(true))
    end
    return ended(st, res, err)
  end
  -- a renewal ended (before the first call, or after a 401)
  if not a then return ended(st, nil, b or job.refusal) end
  if job.state == "renew" then
    if a ~= job.first_tok then unauthorized.renewed(st, job.args.account, a) end
    return gate(self, st, job)
  end
  return send(self, st, job, a)
end

--- client:request (blocking). The job table is the client's, made again
-- for each call, unless another coroutine's call holds it.
function R.call(self, st, args)
  local job = st.idle_call
  if job then
    st.idle_call = nil
    job.state, job.retried, job.child = nil, nil, nil
  else
    job = { kind = R.Call }
  end
  job.args = args
  local res, err = machine.run(self, st, job)
  job.args, job.tok, job.first_tok, job.refusal = nil, nil, nil, nil   -- nothing of the call stays
  if job.op_job then job.op_job.args = nil end
  st.idle_call = job
  return res, err
end

--- client:start("request", opts, callback): the call on the multi driver,
-- carried by step(). Returns true while it is in flight (or queued behind
-- the renewal step() began while the kept token is still valid), else nil
-- and the error (rate_limited; pending: no valid token, and a renewal
-- starts; or another transfer of the caller's in flight).
function R.start(self, st, args, callback)
  local job = { kind = R.Call, args = args }
  callback = callback or function() end
  if st.nb then
    if fresh(self, 0) and machine.queue(st, job, callback) then return true end
    return nil, new_error(self, "pending", "request", "a transfer is already in flight")
  end
  local busy, _, err = machine.begin(self, st, job, callback)
  if busy then return true end
  if err and err.kind == "pending" then renewal.due(self, st) end
  return nil, err
end

return R
