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

function M.constant()
  ngx.header["X-Authorization"] = M.const_auth or "Bearer constant"
  ngx.header["X-Account"] = M.const_account or "account"
  ngx.say("ok")
end

return M
