--- Authorized calls to any Nomba API (`client:request`): the arguments, the
-- answer's interpretation and the policy of the operation "request".
--   * 401: the token that was sent is invalidated (only while the client
--     still holds it), renewed through the normal path (single-flight, the
--     store's lock), and the call is made once more. Never a loop.
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
local runtime = require "nomba.oauth.runtime"
local engine = require "nomba.oauth.engine"
local options = require "nomba.oauth.options"

local type, pairs, ipairs, tostring, tonumber, error = type, pairs, ipairs, tostring, tonumber, error
local next, rawget, setmetatable, getmetatable = next, rawget, setmetatable, getmetatable
local sort, concat, math_min, math_abs = table.sort, table.concat, math.min, math.abs
local now, new_error, LIMITS = runtime.now, core.error, core.LIMITS
local json_decode, json_field, spaceless = core.json_decode, core.json_field, core.spaceless
local code_text, retry_after_of = core.code_text, core.retry_after

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

-- "?k=v&..." with the keys sorted, or "".
local function query_of(q)
  if q == nil then return "" end
  if type(q) ~= "table" then bad("query must be a table") end
  local keys = {}
  for k, v in pairs(q) do
    if type(k) ~= "string" then bad("query keys must be strings") end
    local tv = type(v)
    if tv ~= "string" and tv ~= "number" and tv ~= "boolean" then
      bad("query." .. k .. " must be a string or number")
    end
    if tv == "number" and v - v ~= 0 then bad("query." .. k .. " must be a finite number") end
    keys[#keys + 1] = k
  end
  sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do
    local v = q[k]
    -- a whole number reads the same on every Lua: 4 / 2 is "2", not 5.3+'s "2.0"
    if type(v) == "number" and v % 1 == 0 and v > -2 ^ 53 and v < 2 ^ 53 then v = ("%d"):format(v) end
    parts[i] = urlencode(k) .. "=" .. urlencode(v)
  end
  return #parts > 0 and "?" .. concat(parts, "&") or ""
end

-- lua-cjson writes a number with 14 significant digits: one it would change
-- (1234567890123456 goes out as 1.2345678901235e+15) is refused, naming
-- where it stands, instead of being sent changed. Floating-point noise past
-- the 15th digit (0.1 + 0.2 goes out as 0.3) is not a change. NaN and
-- infinities are left to cjson, which refuses them.
local JSON_DEPTH = 128
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
function R.check(st, opts, base_url, account)
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
  if path:sub(1, 1) == "/" then
    url = base_url .. path
  elseif path:match("^https?://") then
    url = path                              -- the C core judges it again when it sends
    local on = core.url_on(base_url, path)
    if on == nil then bad("path is not a usable URL") end
    if not on then bad("an absolute path must be on base_url's scheme, host and port") end
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
  local args = { method = method, url = url, lines = lines, body = body, fresh = not idempotent,
                 max_response = max or st.max_response or options.DEFAULTS.request_max_response_bytes,
                 idempotent = idempotent, timeout = timeout, event = event }
  if only_path then
    if not st.path_args or st.path_args_n >= PATH_CACHE then st.path_args, st.path_args_n = {}, 0 end
    st.path_args[path], st.path_args_n = args, st.path_args_n + 1
  end
  return args
end

-- Whether a failed call that is not idempotent may be sent again: only
-- when it never left, or when Nomba answered 429/503 with Retry-After
-- (which it does before processing).
local function resend_not_idempotent(err)
  if err.maybe_sent == false then return true end
  return (err.status == 429 or err.status == 503) and err.retry_after ~= nil
end

local function lower_keys(t)
  local out = {}
  for k, v in pairs(t or {}) do
    if type(k) == "string" then
      out[k:lower()] = type(v) == "table" and concat(v, ", ") or tostring(v)
    end
  end
  return out
end

-- The longest rate-limit wait a client keeps to itself: after it, the
-- next call asks Nomba again (which answers 429 if the limit still holds),
-- so a hostile or mistaken header cannot silence a client for good.
local WINDOW_CAP = 3600

-- A count from a rate-limit header: digits only (at most 9), else nil; a
-- hostile "1e999" or "0x10" is no count.
local function count(v)
  local d = v and v:match("^%s*(%d+)%s*$")
  return d and #d <= 9 and tonumber(d) or nil
end

-- Seconds from a window such as "1s", "60", "1m" or "0.5s", else nil.
local function seconds(w)
  local n, unit = (w or ""):match("^%s*(%d+%.?%d*)%s*([smh]?)%s*$")
  if not n or #n > 12 then return nil end
  return tonumber(n) * (unit == "m" and 60 or unit == "h" and 3600 or 1)
end

-- Retry-After by the rule of the token operations (core.retry_after).
local function retry_after(h)
  local v = h["retry-after"]
  return v and retry_after_of(v) or nil
end

-- The bearer that was sent, wherever an answer echoes it, as "[redacted]".
local function redact(s, secret)
  if type(s) ~= "string" or not secret or #secret < 8 then return s end
  local i = s:find(secret, 1, true)
  while i do
    s = s:sub(1, i - 1) .. "[redacted]" .. s:sub(i + #secret)
    i = s:find(secret, i + 10, true)
  end
  return s
end

-- An answer's json and data are decoded on its first read of either (or
-- its first pairs, on Lua 5.2+): most calls read neither, and the code that
-- decides between a result and an "api" error is read from the text
-- without decoding it. The result is then a plain table.
local function decode(res)
  setmetatable(res, nil)
  local json = json_decode(res.body, 32)
  res.json = json
  if type(json) == "table" then res.data = json.data end
end

local LAZY = {
  __index = function(res, k)
    if k == "json" or k == "data" then
      decode(res)
      return rawget(res, k)
    end
  end,
  __pairs = function(res)
    decode(res)
    return next, res, nil
  end,
}

--- An API call's answer, as a driver brought it: `{status, headers, body,
-- lower}` from a transport (names in any case unless `lower`), or from
-- libcurl `{status, headers, body, lower = true, echoed}` (names
-- lower-cased in C, `echoed` whether the bearer is anywhere in it). That
-- table becomes the result, or the `response` of an error of kind "http"
-- or "api". A server that echoes the bearer it was sent gets it redacted,
-- in the answer as in the error.
function R.interpret(raw, bearer)
  -- libcurl's answers come with lower-case names and `echoed` found in C;
  -- a transport's headers are taken as they are, and looked through
  local h = raw.lower and raw.headers or lower_keys(raw.headers)
  local body = raw.body or ""
  local echoed = raw.echoed
  if echoed == nil and bearer then                -- a transport's answer: look through it here
    echoed = body:find(bearer, 1, true) ~= nil
    for _, v in pairs(h) do
      if echoed then break end
      echoed = type(v) == "string" and v:find(bearer, 1, true) ~= nil
    end
  end
  if bearer and echoed then
    for k, v in pairs(h) do h[k] = redact(v, bearer) end
    body = redact(body, bearer)
  end
  local ctype = h["content-type"] or ""
  local json_like = body ~= "" and (ctype:find("json", 1, true) or body:match("^%s*[%[{]")) and true
  local code, rate_limit
  if json_like then
    local _
    _, code = json_field(body, "code")            -- the same grammar and depth as decode()
    if type(code) == "number" then code = code_text(code) end   -- as the token operations read it
  end
  local limit, remaining = h["x-rate-limit-limit"], h["x-rate-limit-remaining"]
  if limit or remaining then
    limit, remaining = count(limit), count(remaining)
    if limit or remaining then
      rate_limit = { limit = limit, remaining = remaining, window = seconds(h["x-rate-limit-window"]) }
    end
  end
  local res = raw                                 -- the answer becomes the result
  res.headers, res.body, res.echoed, res.lower = h, body, nil, nil
  res.code, res.rate_limit = code, rate_limit
  if json_like then setmetatable(res, LAZY) end
  local st = res.status
  if st >= 200 and st < 300 and (code == nil or code == "00") then return res end
  local j = type(res.json) == "table" and res.json or {}
  local msg = type(j.description) == "string" and j.description or type(j.message) == "string" and j.message or
              ("HTTP %d"):format(st)
  local err = new_error(code and "api" or "http", "request", msg,
                        { status = st, code = code, retryable = st == 408 or st == 429 or st >= 500,
                          retry_after = retry_after(h) })
  err.response = res
  err.maybe_sent = true
  return nil, err
end

-- After an answer: note the rate-limit window when none is left.
local function note_rate(st, res)
  local rl = res and res.rate_limit
  local wait
  if rl and rl.remaining == 0 then
    wait = rl.window or 1
  elseif res and res.status == 429 then
    wait = retry_after(res.headers) or 1
  end
  if wait then st.rate_until = now() + math_min(wait, WINDOW_CAP) end
end

-- Waits out a rate-limit window, or says why it cannot: in the
-- non-blocking mode, in an nginx phase that cannot sleep, or when the
-- server asked for more than the Retry-After cap (never a wait it sets).
local function rate_gate(st, nonblocking)
  local wait = st.rate_until and st.rate_until - now()
  if not wait or wait <= 0 then return true end
  if nonblocking or not runtime.cosockets() or wait > engine.RETRY_AFTER_CAP then
    return nil, new_error("rate_limited", "request", "Nomba's rate limit: wait before the next call",
                          { retryable = true, retry_after = wait })
  end
  runtime.sleep(wait)
  return true
end

-- What every driver's end goes through: the rate limit noted, and a 401
-- invalidating tok (the token sent) while the client still holds it. True
-- for that 401.
local function done(self, st, tok, res, e)
  note_rate(st, res or (e and e.response))
  local refused = e ~= nil and e.status == 401
  if refused and core.fresh(self, 0) == tok then self:invalidate() end
  return refused
end

-- The job of one call made with the token tok (its bearer, for redaction).
-- With a callback (the non-blocking mode): `renew_then(e)`, when given, is
-- called instead of the callback for a 401 to the token sent.
local function job_of(self, st, args, tok, callback, renew_then)
  -- engine.job copies `how` into the job: one table per client, not one
  -- per call, emptied of the token and the callback once copied
  local how = st.request_how or {}
  st.request_how = how
  how.interpret, how.ctx = R.interpret, tok
  how.resend = not args.idempotent and resend_not_idempotent or nil
  how.timeout, how.event = args.timeout, args.event
  how.callback = callback and function(res, e)
    if done(self, st, tok, res, e) and renew_then then return renew_then(e) end
    callback(res, e)
  end or nil
  local job = engine.job(self, st, "request", args, how)
  how.ctx, how.callback = nil, nil
  return job
end

--- client:request (blocking): a fresh token, the call, and once more after a 401.
function R.call(self, st, args)
  local ok, err = rate_gate(st, st.nonblocking)
  if not ok then return nil, err end
  for pass = 1, 2 do
    local tok, terr = self:token()
    if not tok then return nil, terr end
    local res, e = engine.run(self, st, job_of(self, st, args, tok))
    if not done(self, st, tok, res, e) or pass == 2 then return res, e end
  end
end

--- client:start("request", opts, callback): the call on the multi driver;
-- the client must hold a valid token (else "pending", and a renewal starts).
-- A 401 to the token sent renews it (the non-blocking renewal: the store's
-- lock tried without waiting) and makes the call once more, as the blocking
-- path does; step() carries both, and the callback gets the second answer,
-- or the renewal's error.
function R.start(self, st, args, callback)
  local ok, err = rate_gate(st, true)
  if not ok then return nil, err end
  local tok = core.fresh(self, 0)
  if not tok then
    self:step()
    return nil, new_error("pending", "request", "no valid token yet; a renewal is in flight")
  end
  callback = callback or function() end
  local function call(with, renew_then)
    return engine.begin(self, st, (job_of(self, st, args, with, callback, renew_then)))
  end
  local function retry(e401)
    -- token.step runs this once no job is in flight: with a fresh token it
    -- makes the second call; when the renewal ended without one, its error
    -- (or the 401) is the answer
    st.last_try = nil                         -- renew now, not after the retry interval
    st.after_renewal = function(fresh_tok, failed)
      st.after_renewal = nil
      local started, why = nil, failed or e401
      if fresh_tok then
        started, why = rate_gate(st, true)
        if started then started, why = call(fresh_tok) end
      end
      if not started then runtime.pcall_y(callback, nil, why) end
    end
  end
  return call(tok, retry)
end

return R
