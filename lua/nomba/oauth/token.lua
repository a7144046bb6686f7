--- `client:token()` and `client:headers()`, called before every Nomba
-- request: they answer from the kept token without a request while it is
-- fresh (the window is decided in C), and otherwise run a renewal (the
-- machine's renewal job) or, in the non-blocking mode, step it. The fast
-- path has one definition each:
--   * Lua 5.3 and 5.4: C methods (core.install_fast_paths) that continue
--     into the Lua slow path below with lua_callk, so a yield still works;
--   * elsewhere, the Lua methods below. On LuaJIT they keep a copy of the
--     token's strings with the client's token generation (which C bumps
--     whenever the kept token changes: kept, adopted, dropped,
--     invalidated, closed), checked by one call through the FFI (which
--     LuaJIT compiles, and its interpreter makes cheaply): the client
--     open, at that generation, still fresh. A stale copy is never used.
-- (Private to nomba.oauth.)
local core = require "nomba.oauth.core"
local platform = require "nomba.oauth.platform"
local machine = require "nomba.oauth.machine"
local renewal = require "nomba.oauth.renewal"

local type, error, setmetatable = type, error, setmetatable
local co_yield = coroutine.yield
local fresh, state_of, new_error = core.fresh, core.state, core.error

local H = {}

local function check_self(self, method)
  if not core.is_client(self) then
    error("nomba.oauth: bad self to '" .. method .. "' (use client:" .. method .. "(...))", 3)
  end
end

local function pending_error(self, msg)
  return new_error(self, "pending", "token", msg or "no valid token yet; a renewal is in flight")
end

-- token() in the non-blocking mode: the kept token while it is valid, even
-- during a renewal; otherwise a renewal is started and, with wait = false,
-- a "pending" error returned; else the caller yields (inside a coroutine)
-- or waits (curl_multi_poll) until the renewal ends.
local function nb_token(self, st, opts)
  local nowait = type(opts) == "table" and opts.wait == false
  while true do
    machine.step(self, st)
    local kept = fresh(self, 0)
    if kept then return kept end
    if not st.nb then
      if nowait and not st.last_err then return nil, pending_error(self, "no valid token yet") end
      return nil, st.last_err or pending_error(self, "no valid token yet")
    end
    if nowait then return nil, pending_error(self) end
    if platform.can_yield() and not platform.ngx then
      co_yield()
    else
      machine.wait(self, st, 0.05)
    end
  end
end

-- token()'s slow path: the kept token is not fresh (or the caller asked
-- not to wait).
local function slow(self, st, opts)
  if core.closed(self) then return nil, new_error(self, "closed", "token", "the client is closed") end
  if st.nonblocking or st.nb or (type(opts) == "table" and opts.wait == false) then
    return nb_token(self, st, opts)
  end
  return machine.run(self, st, renewal.job(false))
end

--- token()'s slow path.
function H.token_slow(self, opts)
  check_self(self, "token")
  if opts ~= nil and type(opts) ~= "table" then
    error("nomba.oauth: bad argument #1 to 'token' (table expected, got " .. type(opts) .. ")", 2)
  end
  return slow(self, state_of(self), opts)
end

--- headers()' slow path.
function H.headers_slow(self)
  check_self(self, "headers")
  local tok, err = slow(self, state_of(self))
  if not tok then return nil, err end
  local bearer, account
  tok, bearer, account = fresh(self, 0)
  if not tok then return nil, new_error(self, "protocol", "token", "the token expired at once") end
  return { Authorization = bearer, accountId = account }
end

-- The fresh token, bearer and account of a client, or nil.
local lookup = fresh
local HOT, check                -- LuaJIT: the copies, and the FFI check
if platform.ffi then
  -- a copy of the strings, checked by one FFI call into C (the client
  -- open, the token the copy was made from, still fresh), which LuaJIT
  -- compiles to a plain call and its interpreter makes at the cost of
  -- about 1.5 calls through the Lua API; a stale copy is never used
  HOT = setmetatable({}, { __mode = "k" })        -- strings and numbers: never the client
  check = platform.ffi.cast("int (*)(const void *, unsigned int)", core.hot_check())
  lookup = function(self)
    local tok, bearer, account, gen = fresh(self)
    if not tok then
      HOT[self] = nil
      return nil
    end
    HOT[self] = { tok, bearer, account, gen }
    return tok, bearer, account
  end
end

--- Installs token and headers on the client methods.
function H.install(Client)
  if core.install_fast_paths(H.token_slow, H.headers_slow) then return end
  local token_slow, headers_slow = H.token_slow, H.headers_slow

  if HOT then
    -- the copy's check written into each method: a call less
    function Client:token(opts)
      local h = HOT[self]
      if h and check(self, h[4]) ~= 0 then return h[1] end
      local tok = lookup(self)
      if tok then return tok end
      return token_slow(self, opts)
    end

    function Client:headers()
      local h = HOT[self]
      if h and check(self, h[4]) ~= 0 then return { Authorization = h[2], accountId = h[3] } end
      local tok, bearer, account = lookup(self)
      if tok then return { Authorization = bearer, accountId = account } end
      return headers_slow(self)
    end
    return
  end

  function Client:token(opts)
    local tok = lookup(self)
    if tok then return tok end
    return token_slow(self, opts)
  end

  function Client:headers()
    local tok, bearer, account = lookup(self)
    if tok then return { Authorization = bearer, accountId = account } end
    return headers_slow(self)
  end
end

return H
