--- The simulator's faults (inside nginx): queued per endpoint by /_sim/fault
-- and played instead of (or before) the normal answer.
local cjson = require "cjson.safe"
local ngx = ngx
local S = require "nomba.oauth.simulator.state"
local setting, now, store, load = S.setting, S.now, S.store, S.load

local F = {}


-- A fault with `during = seconds` is played to every request for that long
-- from when it was queued (a burst), instead of `times` requests.
function F.take(endpoint)
  local key = "faults:" .. endpoint
  local q = load(key)
  if not q or #q == 0 then return nil end
  local f = q[1]
  if f.during then
    f.until_t = f.until_t or (ngx.now() + f.during)
    if ngx.now() >= f.until_t then
      table.remove(q, 1)
      store(key, q)
      return F.take(endpoint)
    end
  else
    f.times = (f.times or 1) - 1
    if f.times <= 0 then table.remove(q, 1) end
  end
  store(key, q)
  return f
end

-- How long a held request waits for /_sim/release at most.
local HOLD_CAP = 20

--- Holds a request until the endpoint is released (POST /_sim/release): a
-- test knows the request arrived and is unanswered for as long as it likes.
function F.hold(endpoint)
  local t0 = ngx.now()
  while not S.dict:get("release:" .. endpoint) and ngx.now() - t0 < HOLD_CAP do
    ngx.sleep(0.005)
  end
end

-- A hostile answer written straight to the connection (the raw request
-- socket), each bounded to RAW_CAP seconds on the server's side:
--   header_drip  a status line, then a header line every `every` s, never the end
--   body_drip    Content-Length 1000, then one byte every `every` s
--   stream       no Content-Length: `bytes` (default 300 MB) in 64 KiB pieces, then close
--   text         the answer `text`, byte for byte (a status line, headers, a body), then close
local RAW_CAP = 20

local function play_raw(f)
  local sock, err = ngx.req.socket(true)
  if not sock then
    ngx.log(ngx.ERR, "raw socket: ", err)
    return ngx.exit(500)
  end
  local every, t0 = f.every or 0.2, ngx.now()
  local head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
  if f.raw == "header_drip" then
    local ok = sock:send(head)
    while ok and ngx.now() - t0 < RAW_CAP do
      ngx.sleep(every)
      ok = sock:send("X-Drip: dddddddddddddddd\r\n")
    end
  elseif f.raw == "body_drip" then
    local ok = sock:send(head .. "Content-Length: 1000\r\n\r\n{")
    while ok and ngx.now() - t0 < RAW_CAP do
      ngx.sleep(every)
      ok = sock:send(" ")
    end
  elseif f.raw == "text" then
    sock:send(f.text or "")
  elseif f.raw == "stream" then
    local piece, sent, total = string.rep("x", 65536), 0, f.bytes or 300 * 1024 * 1024
    local ok = sock:send(head .. "Connection: close\r\n\r\n")
    while ok and sent < total and ngx.now() - t0 < RAW_CAP do
      ok = sock:send(piece)
      sent = sent + #piece
    end
  end
  return ngx.exit(444)
end

--   echo          the answer carries the Authorization header it was sent,
--                 in its body (a Nomba description) and in an X-Echo header
--   retry_after_in  a Retry-After HTTP-date this many seconds after the
--                 simulator's clock (its Date header says the same clock)
function F.play(f)
  if f.delay and f.delay > 0 then ngx.sleep(f.delay) end
  if f.drop then return ngx.exit(444) end              -- close without answering
  if f.raw then return play_raw(f) end
  local body = f.body
  if type(body) == "table" then body = cjson.encode(body) end
  body = body or ""
  if f.echo then
    local auth = ngx.var.http_authorization or ""
    body = cjson.encode { code = "02", description = "bad token " .. auth }
    ngx.header["X-Echo"] = auth
  end
  if f.retry_after_in then
    ngx.header["Retry-After"] = ngx.http_time(math.floor(now()) + f.retry_after_in)
  end
  if f.size then body = '{"code":"00","pad":"' .. string.rep("x", f.size) .. '"}' end
  ngx.status = f.status or 500
  ngx.header["Content-Type"] = f.content_type or "application/json"
  if not setting("omit_date") then
    ngx.header["Date"] = ngx.http_time(math.floor(now()))
  end
  for k, v in pairs(f.headers or {}) do ngx.header[k] = v end
  if f.truncate then
    ngx.header["Content-Length"] = #body + 100
    ngx.print(body)
    ngx.flush(true)
    return ngx.exit(ngx.ERROR)                          -- hang up mid-body
  end
  if f.body_delay and f.body_delay > 0 then
    local half = math.floor(#body / 2)
    ngx.header["Content-Length"] = #body
    ngx.print(body:sub(1, half))
    ngx.flush(true)
    ngx.sleep(f.body_delay)
    ngx.print(body:sub(half + 1))
    return ngx.exit(ngx.status)
  end
  ngx.print(body)
  return ngx.exit(ngx.status)
end

return F
