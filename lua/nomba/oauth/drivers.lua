--- The drivers: each carries one attempt of an operation and decides
-- nothing. Every driver goes through the C core's request builder and
-- answer interpreter (proto.c), so the wire contract and the reading of
-- every answer are written once.
--   easy       libcurl's easy interface, blocking (the default)
--   transport  a Lua function (the OpenResty cosocket transport, or yours)
--   multi      libcurl's multi interface, never blocking (nonblocking = true)
-- An attempt returns `result, nil, status` or `nil, err, status`; an API
-- call's error says whether the request may have left (`maybe_sent`).
-- (Private to nomba.oauth.)
local core = require "nomba.oauth.core"
local runtime = require "nomba.oauth.runtime"

local type, tostring, getmetatable = type, tostring, getmetatable
local Error, abandon = core.Error, core.abandon

local D = {}

--- libcurl easy: the C core builds, sends, waits and interprets.
function D.easy(self, st, op, args, timeout)
  return core.perform(self, op, args, timeout or st.timeout)
end

--- A Lua transport: gets `{op, method, url, headers, body, timeout,
-- connect_timeout, max_response_bytes}`, returns `{status, headers, body}`
-- (or the raw header block as `head`), or `nil, message[, sent]`, where
-- `sent = false` says the request provably never left (the connection
-- never came up). May yield (cosockets do).
function D.transport(self, st, op, args, timeout)
  local req, err = core.request(self, op, args)
  if not req then return nil, err end
  if timeout then req.timeout = timeout end
  local ok, resp, msg, sent = runtime.pcall_y(st.transport, req)
  req.body = nil
  if not ok then return abandon(self, op, "transport", "the transport raised an error", true) end
  if resp == nil then
    if getmetatable(msg) == Error then return abandon(self, op, msg, nil, nil, sent) end
    msg = tostring(msg or "the transport failed")
    local lower = msg:lower()
    local kind = (lower:find("timeout", 1, true) or lower:find("timed out", 1, true)) and "timeout" or "transport"
    return abandon(self, op, kind, msg, true, sent)
  end
  -- an HTTP status is a whole number of three digits, 100 to 999, as
  -- libcurl takes it; NaN, 200.5 or 1e300 is no status, never a raise further on
  local status = type(resp) == "table" and resp.status
  if type(status) ~= "number" or not (status >= 100 and status <= 999) or status % 1 ~= 0 then
    return abandon(self, op, "protocol", "the transport returned no HTTP status", false)
  end
  if resp.body ~= nil and type(resp.body) ~= "string" then
    return abandon(self, op, "protocol", "the transport returned a body that is not a string", false)
  end
  local head = resp.head
  if type(head) ~= "string" then head = type(resp.headers) == "table" and resp.headers or nil end
  return core.answer(self, op, status, head, resp.body)
end

--- libcurl multi: start an attempt, advance it, wait for it, list its sockets.
D.multi = {
  start = core.nb_start,        -- (client, op, args, timeout) -> true | nil, err
  progress = core.nb_progress,  -- (client) -> nil (none) | false (running) | true, res, err, status
  wait = core.nb_wait,          -- (client, seconds)
  sockets = core.nb_sockets,    -- (client) -> {{fd, read, write}, ...}, ms
}

return D
