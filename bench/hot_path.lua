--- client:token() and client:headers() on a kept token, against a trivial
-- C call (string.len) in the same interpreter: LuaJIT with the JIT on,
-- LuaJIT with -joff (most OpenResty handler code runs interpreted: traces
-- abort on cosocket yields), Lua 5.4. No network (the token is given with
-- the `token` option). Prints one JSON object of nanoseconds per call
-- (best of 5 rounds). bench/bench.lua runs it with each interpreter.
local oauth = require "nomba.oauth"
local cjson = require "cjson"
local now = require("nomba.oauth.core").now

local ACCESS = "eyJhbGciOiJIUzI1NiJ9." .. ("eyJzdWIiOiJmaXhlZCJ9"):rep(16) .. "." .. ("c2lnbmF0dXJl"):rep(4)
local c = oauth.new { account_id = "acct-hot", client_id = "client-hot", client_secret = "secret-hot",
                      base_url = "https://127.0.0.1:9", log = false,
                      token = { access_token = ACCESS, refresh_token = "rt-hot", expires_at = os.time() + 3600 } }
assert(c:token() == ACCESS)

local N = tonumber(arg[1]) or 2000000
local function ns(f)
  f(1000)
  local best = math.huge
  for _ = 1, 5 do
    local t0 = now()
    f(N)
    best = math.min(best, (now() - t0) / N * 1e9)
  end
  return best
end

local slen, s, sink = string.len, "nomba", 0
local out = {
  strlen_ns = ns(function(n) local a = 0 for _ = 1, n do a = a + slen(s) end sink = sink + a end),
  token_ns = ns(function(n) local a = 0 for _ = 1, n do if c:token() then a = a + 1 end end sink = sink + a end),
  headers_ns = ns(function(n)
    local a = 0
    for _ = 1, n do if c:headers().Authorization then a = a + 1 end end
    sink = sink + a
  end),
}
out.runtime = rawget(_G, "jit") and (jit.status() and "LuaJIT, JIT on" or "LuaJIT, -joff") or _VERSION
out.checked = sink > 0
print(cjson.encode(out))
