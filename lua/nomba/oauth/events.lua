--- What a client tells the application: events (`on_event`), log lines
-- (`log`, by default `ngx.log` inside OpenResty, silent elsewhere) and
-- adopted tokens (`on_token`). None of them can break a request: an error
-- raised inside a hook is swallowed. (Private to nomba.oauth.)
local platform = require "nomba.oauth.platform"

local pcall, tostring, type = pcall, tostring, type

local E = {}

-- Where a log line comes from: the first caller outside this library (the
-- application's line that made the call, or a timer of its own), else the
-- library's line that logs. ngx.log would name this file, whoever logs.
local getinfo = debug and debug.getinfo
local function source()
  if not getinfo then return nil end
  local ours
  for level = 3, 30 do
    local info = getinfo(level, "Sl")
    if not info then break end
    if info.currentline and info.currentline > 0 then
      local src = info.short_src
      if not src:find("nomba/oauth", 1, true) and not src:find("nomba%.oauth") then
        return src .. ":" .. info.currentline
      end
      ours = ours or (src:match("[^/]*/[^/]*$") or src) .. ":" .. info.currentline
    end
  end
  return ours
end

-- The default log: the error log inside OpenResty (ngx.errlog.raw_log, so
-- the line names its real source), nothing elsewhere.
local LEVELS
if platform.ngx then
  local ngx = platform.ngx
  LEVELS = { error = ngx.ERR, warn = ngx.WARN, info = ngx.INFO }
  local ok, errlog = pcall(require, "ngx.errlog")
  local raw = ok and type(errlog) == "table" and errlog.raw_log
  E.default_log = function(level, message)
    local where = source()
    if where then message = where .. ": " .. message end
    if raw then return raw(LEVELS[level] or ngx.WARN, message) end
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
  if ev.kind == "store_data_lost" then return "nomba.oauth: " .. tostring(ev.message) end
  if ev.op == "store" then
    return ("nomba.oauth: store %s failed: %s"):format(tostring(ev.method), tostring(ev.message))
  end
  local s = ("nomba.oauth: %s attempt %d failed: %s"):format(ev.op, ev.attempt or 1, tostring(ev.kind))
  if ev.status then s = s .. ", HTTP " .. ev.status end
  if ev.code then s = s .. (", Nomba code %q"):format(ev.code) end
  return s
end

--- An event for on_event; a failure is also a log line: "warn" for the
-- store, "info" for a failed attempt (the operation's outcome is the
-- caller's, or the renewal's one line: one failure, one warning).
function E.emit(st, ev)
  local f = st.on_event
  if f then pcall(f, ev) end
  if not ev.ok and st.log then
    E.log(st, ev.kind == "store_data_lost" and "error" or ev.op == "store" and "warn" or "info", describe(ev))
  end
end

--- on_token: the application's hook, called with every token the client
-- adopts (issued, refreshed, exchanged, or newer from the store). It
-- receives secrets by design.
function E.adopted(st, tok)
  local f = st.on_token
  if f and type(tok) == "table" then pcall(f, tok) end
end

return E
