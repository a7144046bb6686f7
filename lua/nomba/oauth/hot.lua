--- The hot path: `client:token()` and `client:headers()`, called before
-- every Nomba request, answer from the kept token without a request while
-- it is fresh (the window is decided in C), and go to the token policy
-- otherwise. One definition each:
--   * Lua 5.3 and 5.4: C methods (core.install_fast_paths) that continue
--     into the Lua slow path below with lua_callk, so a yield still works;
--   * elsewhere, the Lua methods below. On LuaJIT they keep a copy of the
--     fresh token that a compiled trace can check without calling C: the
--     strings, the deadline C computed on the clock the FFI reads, and the
--     client's token generation, which C bumps whenever the kept token
--     changes (kept, adopted, dropped, invalidated, closed). A copy whose
--     generation is stale is never used: correct by construction.
-- (Private to nomba.oauth.)
local core = require "nomba.oauth.core"
local runtime = require "nomba.oauth.runtime"
local token = require "nomba.oauth.token"

local type, error, setmetatable = type, error, setmetatable
local fresh, state_of, new_error = core.fresh, core.state, core.error

local H = {}

local function check_self(self, method)
  if not core.is_client(self) then
    error("nomba.oauth: bad self to '" .. method .. "' (use client:" .. method .. "(...))", 3)
  end
end

--- token()'s slow path.
function H.token_slow(self, opts)
  check_self(self, "token")
  if opts ~= nil and type(opts) ~= "table" then
    error("nomba.oauth: bad argument #1 to 'token' (table expected, got " .. type(opts) .. ")", 2)
  end
  return token.slow(self, state_of(self), opts)
end

--- headers()' slow path.
function H.headers_slow(self)
  check_self(self, "headers")
  local tok, err = token.slow(self, state_of(self))
  if not tok then return nil, err end
  local bearer, account
  tok, bearer, account = fresh(self, 0)
  if not tok then return nil, new_error("protocol", "token", "the token expired at once") end
  return { Authorization = bearer, accountId = account }
end

-- The fresh token, bearer and account of a client, or nil.
local lookup = fresh
local clock, ffi = runtime.ffi_clock, runtime.ffi
if clock then
  local HOT = setmetatable({}, { __mode = "k" })  -- strings, numbers and a pointer: never the client
  local genp = core.genp
  lookup = function(self)
    local h = HOT[self]
    if h and h[5][0] == h[6] and clock() < h[4] then return h[1], h[2], h[3] end
    local tok, bearer, account, fresh_until, gen = fresh(self)
    if not tok then
      HOT[self] = nil
      return nil
    end
    HOT[self] = { tok, bearer, account, fresh_until,
                  h and h[5] or ffi.cast("const volatile uint32_t *", genp(self)), gen }
    return tok, bearer, account
  end
end

--- Installs token and headers on the client methods.
function H.install(Client)
  if core.install_fast_paths(H.token_slow, H.headers_slow) then return end
  local token_slow, headers_slow = H.token_slow, H.headers_slow

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
