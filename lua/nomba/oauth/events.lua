--- What a client tells the application: events (`on_event`), log lines
-- (`log`, by default `ngx.log` inside OpenResty, silent elsewhere) and
-- adopted tokens (`on_token`). None of them can break a request: an error
-- raised inside a hook is swallowed. (Private to nomba.oauth.)
local runtime = require "nomba.oauth.runtime"

local pcall, tostring, type = pcall, tostring, type

local E = {}

-- The default log: ngx.log inside OpenResty, nothing elsewhere.
local LEVELS
if runtime.ngx then
  local ngx = runtime.ngx
  LEVELS = { error = ngx.ERR, warn = ngx.WARN, info = ngx.INFO }
  E.default_log = function(level, message)
    ngx.log(LEVELS[level] or ngx.WARN, message)
  end
end

--- One log line; `level` is "error", "warn" or "info". Messages are built
-- from non-secret fields only (errors are redacted where they are made).
function E.log(st, level, message)
  local f = st.log
  if f then pcall(f, level, message) end
end

local function describe(ev)
  if ev.op == "store" then
    return ("nomba.oauth: store %s failed: %s"):format(tostring(ev.method), tostring(ev.message))
  end
  local s = ("nomba.oauth: %s attempt %d failed: %s"):format(ev.op, ev.attempt or 1, tostring(ev.kind))
  if ev.status then s = s .. ", HTTP " .. ev.status end
  if ev.code then s = s .. (", Nomba code %q"):format(ev.code) end
  return s
end

--- An event for on_event; a failure is also a "warn" log line.
function E.emit(st, ev)
  local f = st.on_event
  if f then pcall(f, ev) end
  if not ev.ok and st.log then E.log(st, "warn", describe(ev)) end
end

--- on_token: the application's hook, called with every token the client
-- adopts (issued, refreshed, exchanged, or newer from the store). It
-- receives secrets by design.
function E.adopted(st, tok)
  local f = st.on_token
  if f and type(tok) == "table" then pcall(f, tok) end
end

return E
