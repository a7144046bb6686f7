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

-- /request_loop?n=N: N calls of client:request (cosockets), requests per second
function M.request_loop()
  local n = tonumber(ngx.var.arg_n) or 500
  assert(M.client:request { path = "/v1/accounts/balance" })
  ngx.update_time()
  local t0 = ngx.now()
  for _ = 1, n do assert(M.client:request { path = "/v1/accounts/balance" }) end
  ngx.update_time()
  ngx.say(n / (ngx.now() - t0))
end

-- /cosocket_loop?n=N: the baseline, the same GET written by hand on a pooled
-- cosocket (what lua-resty-http would do; it is not in Debian), no parsing
-- beyond finding the end of the answer
function M.cosocket_loop()
  local n = tonumber(ngx.var.arg_n) or 500
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
  once()
  ngx.update_time()
  local t0 = ngx.now()
  for _ = 1, n do once() end
  ngx.update_time()
  ngx.say(n / (ngx.now() - t0))
end

-- /resty_http_loop?n=N: the steps lua-resty-http's request_uri takes for one
-- GET (it is not in Debian, so they are written here, without its coroutine
-- body reader, which makes this stand-in no slower than the library): the
-- URI parsed, a pooled connection (TLS verified when new), the request
-- formatted from a headers table, the status line and the headers read into
-- a table (lower-case names, repeats kept), the body read by Content-Length
-- or decoded chunk by chunk, the connection back to the pool.
function M.resty_http_loop()
  local n = tonumber(ngx.var.arg_n) or 500
  local tok = assert(M.client:token())
  local uri = M.url .. "/v1/accounts/balance"
  local function request_uri()
    local m = assert(ngx.re.match(uri, [[^(?:(http[s]?):)?//((?:[^\[\]:/\?]+)|(?:\[.+\]))(?::(\d+))?([^\?]*)\??(.*)]],
                                  "jo"))
    local scheme, host, port, path = m[1], m[2], tonumber(m[3]) or 443, m[4]
    local sock = ngx.socket.tcp()
    sock:settimeout(5000)
    assert(sock:connect(host == "localhost" and "127.0.0.1" or host, port, { pool = host .. ":" .. port }))
    if scheme == "https" and sock:getreusedtimes() == 0 then assert(sock:sslhandshake(nil, host, true)) end
    local headers = { ["Authorization"] = "Bearer " .. tok, ["accountId"] = M.account,
                      ["Accept"] = "application/json", ["User-Agent"] = "lua-resty-http/0.17.1 (Lua) ngx_lua",
                      ["Host"] = host .. ":" .. port }
    local req = { "GET ", path, " HTTP/1.1\r\n" }
    for k, v in pairs(headers) do req[#req + 1] = k .. ": " .. v .. "\r\n" end
    req[#req + 1] = "\r\n"
    assert(sock:send(table.concat(req)))
    local line = assert(sock:receive("*l"))
    local status = tonumber(line:match("^HTTP/%d%.%d (%d%d%d)"))
    local res_headers = {}
    while true do
      local h = assert(sock:receive("*l"))
      if h == "" then break end
      local k, v = h:match("([^:%s]+):%s*(.*)")
      if k then
        k = k:lower()
        local had = res_headers[k]
        if had == nil then res_headers[k] = v
        elseif type(had) == "table" then had[#had + 1] = v
        else res_headers[k] = { had, v } end
      end
    end
    local body
    if (res_headers["transfer-encoding"] or ""):lower():find("chunked", 1, true) then
      local parts = {}
      while true do
        local size = tonumber(assert(sock:receive("*l")), 16)
        if size == 0 then assert(sock:receive("*l")) break end
        parts[#parts + 1] = assert(sock:receive(size))
        assert(sock:receive(2))
      end
      body = table.concat(parts)
    else
      body = assert(sock:receive(tonumber(res_headers["content-length"])))
    end
    sock:setkeepalive(60000, 16)
    return { status = status, headers = res_headers, body = body }
  end
  assert(request_uri().status == 200)
  ngx.update_time()
  local t0 = ngx.now()
  for _ = 1, n do assert(request_uri().status == 200) end
  ngx.update_time()
  ngx.say(n / (ngx.now() - t0))
end

function M.constant()
  ngx.header["X-Authorization"] = M.const_auth or "Bearer constant"
  ngx.header["X-Account"] = M.const_account or "account"
  ngx.say("ok")
end

return M
