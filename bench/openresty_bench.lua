-- The handler of make bench's OpenResty row: one client per worker on
-- cosockets with the shared dict store; /headers sets the Authorization
-- header from client:headers(), /constant sets a constant one.
local oauth = require "nomba.oauth"
local M = {}

function M.init_worker(cfg)
  M.url, M.account = cfg.url, cfg.account_id
  M.client = oauth.new {
    account_id = cfg.account_id, client_id = cfg.client_id, client_secret = cfg.client_secret,
    base_url = cfg.url, transport = require "nomba.oauth.resty",
    store = oauth.store.shdict(ngx.shared.nomba),
  }
end

function M.headers()
  local h = assert(M.client:headers())
  ngx.header["X-Authorization"] = h.Authorization
  ngx.header["X-Account"] = h.accountId
  ngx.say("ok")
  -- the baseline sends headers of the same sizes, so only the work differs
  M.const_auth = M.const_auth or ("Bearer " .. ("x"):rep(#h.Authorization - 7))
  M.const_account = M.const_account or ("y"):rep(#h.accountId)
end

-- One call of client:request (cosockets).
local function ours_once()
  assert(M.client:request { path = "/v1/accounts/balance" })
end

-- The first baseline: the same GET written by hand on a pooled cosocket,
-- no parsing beyond finding the end of the answer. Returns its `once`.
local function cosocket_setup()
  local tok = assert(M.client:token())
  local host, port = M.url:match("^https://([^:/]+):(%d+)")
  local req = "GET /v1/accounts/balance HTTP/1.1\r\nHost: " .. host .. ":" .. port ..
              "\r\nAuthorization: Bearer " .. tok .. "\r\naccountId: " .. M.account ..
              "\r\nAccept: application/json\r\nUser-Agent: bench\r\n\r\n"
  local function once()
    local sock = ngx.socket.tcp()
    sock:settimeout(5000)
    assert(sock:connect(host == "localhost" and "127.0.0.1" or host, tonumber(port), { pool = "bench-loop" }))
    if sock:getreusedtimes() == 0 then assert(sock:sslhandshake(nil, host, true)) end
    assert(sock:send(req))
    local line = assert(sock:receive("*l"))
    assert(line:find(" 200 ", 1, true), line)
    local len, chunked
    while true do
      local h = assert(sock:receive("*l"))
      if h == "" then break end
      local k, v = h:match("^([^:]+):%s*(.-)%s*$")
      k = k and k:lower()
      if k == "content-length" then len = tonumber(v) end
      if k == "transfer-encoding" and v:lower():find("chunked", 1, true) then chunked = true end
    end
    if chunked then
      assert(sock:receiveuntil("\r\n0\r\n\r\n")())
    else
      assert(sock:receive(len))
    end
    sock:setkeepalive(60000, 16)
  end
  return once
end

-- The second baseline: the steps lua-resty-http's request_uri takes for one
-- GET, written out here since the library is not in Debian: a client object
-- with a metatable, the URI parsed by ngx.re, the connection pooled by
-- host:port (TLS verified when new), the request formatted from a
-- case-normalising headers table (its http_headers), the status line, each
-- header line matched by ngx.re into such a table, the body read through a
-- coroutine-wrapped reader (by Content-Length, or chunk by chunk), then
-- read_body's concat and set_keepalive.
local function headers_table()
  local names = {}                               -- lower-case name -> the name first given
  return setmetatable({}, {
    __index = function(t, k) local n = names[k:lower()] return n and rawget(t, n) end,
    __newindex = function(t, k, v)
      local low = k:lower()
      if names[low] == nil then names[low] = k end
      rawset(t, names[low], v)
    end,
  })
end

local Http = {}
Http.__index = Http

function Http.new() return setmetatable({ sock = ngx.socket.tcp() }, Http) end

function Http:request_uri(uri, params)
  local m = assert(ngx.re.match(uri, [[^(?:(http[s]?):)?//((?:[^\[\]:/\?]+)|(?:\[.+\]))(?::(\d+))?([^\?]*)\??(.*)]],
                                "jo"))
  local scheme, host, port, path = m[1], m[2], tonumber(m[3]) or (m[1] == "https" and 443 or 80), m[4]
  if path == "" then path = "/" end
  local sock = self.sock
  sock:settimeout(5000)
  assert(sock:connect(host == "localhost" and "127.0.0.1" or host, port, { pool = host .. ":" .. port }))
  if scheme == "https" and sock:getreusedtimes() == 0 then assert(sock:sslhandshake(nil, host, true)) end
  local headers = headers_table()
  for k, v in pairs(params.headers) do headers[k] = v end
  if headers["Host"] == nil then headers["Host"] = host .. ":" .. port end
  if headers["User-Agent"] == nil then headers["User-Agent"] = "lua-resty-http/0.17.1 (Lua) ngx_lua" end
  local req = { params.method or "GET", " ", path, " HTTP/1.1\r\n" }
  for k, v in pairs(headers) do req[#req + 1] = k .. ": " .. tostring(v) .. "\r\n" end
  req[#req + 1] = "\r\n"
  assert(sock:send(table.concat(req)))
  local line = assert(sock:receive("*l"))
  local status = tonumber(line:sub(10, 12))
  local res_headers = headers_table()
  repeat
    line = assert(sock:receive("*l"))
    local hm = ngx.re.match(line, "([^:\\s]+):\\s*(.*)", "jo")
    if hm then
      local had = res_headers[hm[1]]
      if had == nil then res_headers[hm[1]] = hm[2]
      elseif type(had) == "table" then had[#had + 1] = hm[2]
      else res_headers[hm[1]] = { had, hm[2] } end
    end
  until line:find("^%s*$")
  local reader
  if (res_headers["Transfer-Encoding"] or ""):lower():find("chunked", 1, true) then
    reader = coroutine.wrap(function()
      while true do
        local size = tonumber(assert(sock:receive("*l")), 16)
        if size == 0 then assert(sock:receive("*l")) return nil end
        local chunk = assert(sock:receive(size))
        assert(sock:receive(2))
        coroutine.yield(chunk)
      end
    end)
  else
    local len = tonumber(res_headers["Content-Length"])
    reader = coroutine.wrap(function() coroutine.yield(assert(sock:receive(len))) end)
  end
  local parts = {}
  while true do
    local chunk = reader()
    if not chunk then break end
    parts[#parts + 1] = chunk
  end
  local body = table.concat(parts)
  if (res_headers["Connection"] or ""):lower() ~= "close" then sock:setkeepalive(60000, 16) else sock:close() end
  return { status = status, headers = res_headers, body = body }
end

local function resty_http_setup()
  local tok = assert(M.client:token())
  local uri = M.url .. "/v1/accounts/balance"
  local params = { method = "GET", headers = { ["Authorization"] = "Bearer " .. tok, ["accountId"] = M.account,
                                               ["Accept"] = "application/json" } }
  return function() assert(Http.new():request_uri(uri, params).status == 200) end
end

local now = require("nomba.oauth.core").now      -- ngx.now() has millisecond steps

local function timed(n, once)
  local t0 = now()
  for _ = 1, n do once() end
  return now() - t0
end

local function median(t)
  table.sort(t)
  local n = #t
  return n % 2 == 1 and t[(n + 1) / 2] or (t[n / 2] + t[n / 2 + 1]) / 2
end

-- /paired?block=B&blocks=K: ours and the two baselines in turn, B calls each,
-- K times (who goes first rotates), in this one worker: drift on a shared
-- machine then hits all three alike. Answers the median rates and the
-- medians of the per-block ratios, as JSON.
function M.paired()
  local block, blocks = tonumber(ngx.var.arg_block) or 50, tonumber(ngx.var.arg_blocks) or 60
  local loops = { ours_once, resty_http_setup(), cosocket_setup() }
  for _, once in ipairs(loops) do once() end         -- connected, TLS done
  local rate, q_rh, q_plain = { {}, {}, {} }, {}, {}
  for k = 1, blocks do
    local secs = {}
    for j = 0, 2 do
      local i = (k + j) % 3 + 1
      secs[i] = timed(block, loops[i])
    end
    for i = 1, 3 do rate[i][k] = block / secs[i] end
    q_rh[k], q_plain[k] = secs[2] / secs[1], secs[3] / secs[1]
  end
  ngx.say(require("cjson").encode { ours = median(rate[1]), resty_http = median(rate[2]), plain = median(rate[3]),
                                    ratio = median(q_rh), ratio_plain = median(q_plain) })
end

function M.constant()
  ngx.header["X-Authorization"] = M.const_auth or "Bearer constant"
  ngx.header["X-Account"] = M.const_account or "account"
  ngx.say("ok")
end

return M
