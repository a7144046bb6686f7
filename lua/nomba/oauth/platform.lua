--- The runtime environment, detected once: OpenResty or not, what the
-- current nginx phase allows, how to sleep, a pcall a yield can cross,
-- and LuaJIT's FFI. Every other file asks here.
-- (Private to nomba.oauth.)
local core = require "nomba.oauth.core"

local type, pcall, rawget, select = type, pcall, rawget, select
local co_running, co_yield, co_isyieldable = coroutine.running, coroutine.yield, coroutine.isyieldable

local R = { now = core.now }

-- OpenResty's ngx, when this runs inside nginx (nil elsewhere).
local ngx = rawget(_G, "ngx")
if type(ngx) ~= "table" or type(ngx.get_phase) ~= "function" then ngx = nil end
R.ngx = ngx

-- What each nginx phase allows: cosockets (and with them ngx.sleep and
-- light threads). The phases not listed allow neither: init, init_worker,
-- set, rewrite_by_lua's header/body filters, log, balancer.
local COSOCKET_PHASES = {
  rewrite = true, access = true, content = true, timer = true,
  ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true, preread = true,
}

--- Whether cosockets (and ngx.sleep) work here; outside OpenResty, true.
-- The second result names the phase.
function R.cosockets()
  if not ngx then return true end
  local phase = ngx.get_phase()
  return COSOCKET_PHASES[phase] == true, phase
end

--- Sleeps without blocking nginx where the phase allows, else blocks.
function R.sleep(seconds)
  if ngx and COSOCKET_PHASES[ngx.get_phase()] and pcall(ngx.sleep, seconds) then return end
  core.sleep(seconds)
end

--- Whether the running code may yield (coroutine.isyieldable is 5.3+).
function R.can_yield()
  if co_isyieldable then return co_isyieldable() end
  local co, main = co_running()
  if main ~= nil then return not main end                 -- 5.2, LuaJIT
  return co ~= nil                                        -- 5.1: nil in the main thread
end

--- A pcall that a yield can cross. Lua 5.2+ and LuaJIT have one; on plain
-- Lua 5.1 the protected call runs in a coroutine whose yields are passed on.
R.pcall_y = pcall
if _VERSION == "Lua 5.1" and not rawget(_G, "jit") then
  local unpack, co_create, co_resume, co_status = unpack, coroutine.create, coroutine.resume, coroutine.status
  local function pack(...) return { n = select("#", ...), ... } end
  R.pcall_y = function(f, ...)
    if co_running() == nil then return pcall(f, ...) end   -- the main thread cannot yield anyway
    local co = co_create(f)
    local res = pack(co_resume(co, ...))
    while res[1] and co_status(co) == "suspended" do
      res = pack(co_resume(co, co_yield(unpack(res, 2, res.n))))
    end
    return unpack(res, 1, res.n)
  end
end

--- LuaJIT's FFI (the token hot path's check goes through it), or nil.
R.ffi = nil
if rawget(_G, "jit") then
  local ok, ffi = pcall(require, "ffi")
  if ok then R.ffi = ffi end
end

return R
