--- Reading an HTTP answer off a cosocket within one deadline, in pieces of
-- at most 16 KiB, never holding more than the caps allow: headers at most
-- 32 KiB, a body at most the caller's max (Content-Length, chunked, or up
-- to the close). (Private to nomba.oauth.resty.)
local core = require "nomba.oauth.core"

local ngx = ngx
local tonumber, setmetatable = tonumber, setmetatable
local concat, find = table.concat, string.find

local PIECE = 16384
local MAX_HEADERS = core.LIMITS.headers

local R = {}

--- Seconds of the nginx clock, fresh.
function R.now()
  ngx.update_time()
  return ngx.now()
end
local now = R.now

-- Reads an answer off a cosocket within one deadline, in pieces of at most
-- PIECE bytes, never holding more than the caps allow.
local Reader = {}
Reader.__index = Reader

--- A reader of sock, bounded by deadline.
function R.reader(sock, deadline)
  return setmetatable({ sock = sock, deadline = deadline, buf = "" }, Reader)
end

--- Sets the socket's timeout to what is left of the deadline; false when
-- nothing is left.
function R.bound(sock, deadline)
  local left = deadline - now()
  if left <= 0 then return false end
  sock:settimeout(math.max(1, math.floor(left * 1000)))
  return true
end
local bound = R.bound

-- One more piece into the buffer (at most max bytes).
function Reader:fill(max)
  if not bound(self.sock, self.deadline) then return nil, "timeout" end
  local data, err = self.sock:receiveany(math.min(max or PIECE, PIECE))
  if not data then return nil, err end
  self.buf = self.buf .. data
  return true
end

-- The header block (up to and including the empty line), at most
-- MAX_HEADERS bytes.
function Reader:head()
  while true do
    local e = find(self.buf, "\r\n\r\n", 1, true)
    if e then
      local head = self.buf:sub(1, e + 3)
      self.buf = self.buf:sub(e + 4)
      return head
    end
    if #self.buf > MAX_HEADERS then return nil, "headers too large" end
    local ok, err = self:fill(MAX_HEADERS + 4 - #self.buf)
    if not ok then return nil, err end
  end
end

-- One line (without CRLF) of at most max bytes.
function Reader:line(max)
  while true do
    local e = find(self.buf, "\r\n", 1, true)
    if e then
      local line = self.buf:sub(1, e - 1)
      self.buf = self.buf:sub(e + 2)
      return line
    end
    if #self.buf > max then return nil, "line too long" end
    local ok, err = self:fill()
    if not ok then return nil, err end
  end
end

-- Exactly n bytes.
function Reader:take(n)
  local parts, got = {}, 0
  if #self.buf > 0 then
    local k = math.min(n, #self.buf)
    parts[1], got = self.buf:sub(1, k), k
    self.buf = self.buf:sub(k + 1)
  end
  while got < n do
    if not bound(self.sock, self.deadline) then return nil, "timeout" end
    local data, err = self.sock:receiveany(math.min(n - got, PIECE))
    if not data then return nil, err end
    parts[#parts + 1] = data
    got = got + #data
  end
  return concat(parts)
end

-- A chunked body, refused as soon as it passes max bytes.
function Reader:chunked(max)
  local parts, total = {}, 0
  while true do
    local line, err = self:line(1024)
    if not line then return nil, err end
    local hex = line:match("^%s*(%x+)%s*;?.*$")  -- at most 15 digits: a double holds it exactly
    if not hex or #hex > 15 then return nil, "bad chunk size" end
    local size = tonumber(hex, 16)
    if size == 0 then
      repeat                                   -- trailers up to the empty line
        line, err = self:line(MAX_HEADERS)
        if not line then return nil, err end
      until line == ""
      return concat(parts)
    end
    total = total + size
    if total > max then return nil, "too big" end
    local data
    data, err = self:take(size)
    if not data then return nil, err end
    parts[#parts + 1] = data
    local crlf
    crlf, err = self:take(2)
    if crlf ~= "\r\n" then return nil, err or "bad chunk end" end
  end
end

-- A body that ends when the server closes, refused as soon as it passes max.
function Reader:until_closed(max)
  local parts, total = { self.buf }, #self.buf
  self.buf = ""
  while true do
    if total > max then return nil, "too big" end
    if not bound(self.sock, self.deadline) then return nil, "timeout" end
    local data, err = self.sock:receiveany(PIECE)
    if not data then
      if err == "closed" then return concat(parts) end
      return nil, err
    end
    parts[#parts + 1] = data
    total = total + #data
  end
end


return R
