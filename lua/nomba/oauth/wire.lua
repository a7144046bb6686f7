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
local platform = require "nomba.oauth.platform"

local type, tostring, getmetatable = type, tostring, getmetatable
local abandon, answer, frame, Error = core.abandon, core.answer, core.frame, core.Error

-- The outcome an oauth.Error a transport returns stands for.
local OF_KIND = { timeout = "timeout", tls = "tls", config = "config", protocol = "framing" }

local D = {}

--- libcurl easy: the C core builds, sends, waits and interprets.
function D.easy(self, st, op, args, timeout)
  return core.perform(self, op, args, timeout or st.timeout)
end

--- A Lua transport: gets `{op, method, url, headers, body, timeout,
-- connect_timeout, max_response_bytes}`, returns the answer, or why there
-- is none. May yield (cosockets do). The answer:
--   `{status, headers, body}` (or the raw header block as `head`): body decoded;
--   `{raw = bytes}`: the bytes received, read by the one framing rule (frame.c);
--   a frame (core.frame) the transport fed as it read (the cosocket transport).
-- None: `nil, message[, sent]` (`sent = false`: the request provably never
-- left), or `nil, {outcome =, message =, sent =, status =}` naming one of
-- outcome.c's outcomes (or an oauth.Error). The C core makes every error
-- (outcome.c's table).
function D.transport(self, st, op, args, timeout)
  local req, err = core.request(self, op, args)
  if not req then return nil, err end
  if timeout then req.timeout = timeout end
  local ok, resp, why, sent = platform.pcall_y(st.transport, req)
  local method, max = req.method, req.max_response_bytes
  req.body = nil
  if not ok then return abandon(self, op, "raised") end
  if resp == nil then
    if type(why) == "table" then
      local outcome = why.outcome
      if getmetatable(why) == Error then                  -- an oauth.Error (0.2's form): its kind says it
        outcome, sent = OF_KIND[why.kind], why.maybe_sent ~= false and sent
      end
      if why.sent ~= nil then sent = why.sent end
      return abandon(self, op, type(outcome) == "string" and outcome or "failed",
                     why.message ~= nil and tostring(why.message) or nil, sent,
                     type(why.status) == "number" and why.status or nil)
    end
    return abandon(self, op, "failed", why ~= nil and tostring(why) or nil, sent)
  end
  if type(resp) == "table" and type(resp.raw) == "string" then
    local fr, outcome, message, status = frame(method, max, resp.raw)
    if not fr then return abandon(self, op, outcome, message, true, status) end
    return answer(self, op, fr)
  end
  if type(resp) == "userdata" then return answer(self, op, resp) end   -- a frame
  if type(resp) ~= "table" then resp = {} end
  -- an HTTP status is a whole number of three digits, 100 to 999, as
  -- libcurl takes it; NaN, 200.5 or 1e300 is no status, never a raise further on
  local status = resp.status
  if type(status) ~= "number" or not (status >= 100 and status <= 999) or status % 1 ~= 0 then
    return abandon(self, op, "framing", "the transport returned no HTTP status")
  end
  if resp.body ~= nil and type(resp.body) ~= "string" then
    return abandon(self, op, "framing", "the transport returned a body that is not a string")
  end
  local head = resp.head
  if type(head) ~= "string" then head = type(resp.headers) == "table" and resp.headers or nil end
  return answer(self, op, status, head, resp.body)
end

--- libcurl multi: start an attempt, advance it, wait for it, list its sockets.
D.multi = {
  start = core.nb_start,        -- (client, op, args, timeout) -> true | nil, err
  progress = core.nb_progress,  -- (client) -> nil (none) | false (running) | true, res, err, status
  wait = core.nb_wait,          -- (client, seconds)
  sockets = core.nb_sockets,    -- (client) -> {{fd, read, write}, ...}, ms
}

return D
