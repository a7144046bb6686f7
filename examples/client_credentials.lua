--- The client-credentials lifecycle, step by step: issue, reuse, refresh,
-- call a protected Nomba endpoint, revoke. Tokens are printed redacted.
--
--    make demo       # runs this against the simulator
--
-- Against Nomba itself set NOMBA_ACCOUNT_ID, NOMBA_CLIENT_ID,
-- NOMBA_CLIENT_SECRET (and NOMBA_BASE_URL for the sandbox).

local oauth = require "nomba.oauth"

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then
    if default == nil then error("set " .. name, 0) end
    return default
  end
  return v
end

local function redact(tok)
  if type(tok) ~= "string" then return tostring(tok) end
  return tok:sub(1, 6) .. "…(" .. #tok .. " chars)"
end

local function step(n, text) print(("%d. %s"):format(n, text)) end

local client = oauth.new {
  account_id = env("NOMBA_ACCOUNT_ID"),
  client_id = env("NOMBA_CLIENT_ID"),
  client_secret = env("NOMBA_CLIENT_SECRET"),
  base_url = env("NOMBA_BASE_URL", oauth.PRODUCTION_URL),
  cafile = os.getenv("NOMBA_CAFILE"),
  on_event = function(ev)
    print(("   [event] %s attempt %d: %s, HTTP %s, %.1f ms"):format(ev.op, ev.attempt,
          ev.ok and "ok" or ev.kind, tostring(ev.status), ev.elapsed * 1000))
  end,
}
print(oauth._VERSION .. " against " .. env("NOMBA_BASE_URL", oauth.PRODUCTION_URL))
print(tostring(client))

-- 1. issue
local t, err = client:issue()
if not t then print(err) os.exit(1) end
step(1, ("issued: access %s, refresh %s, expires in %ds, business %s"):format(
  redact(t.access_token), redact(t.refresh_token), t.expires_in, tostring(t.business_id)))

-- 2. token() reuses the kept token: no request
local a = assert(client:token())
local b = assert(client:token())
step(2, ("token() twice: %s, same token: %s, no new request"):format(redact(a), tostring(a == b)))

-- 3. refresh
local r = assert(client:refresh())
step(3, ("refreshed: access %s (new: %s)"):format(redact(r.access_token),
     tostring(r.access_token ~= t.access_token)))

-- 4. call a protected endpoint with client:headers()
local headers = assert(client:headers())
local function call_balance(h)
  local cmd = { "curl -sS -o /dev/null -w '%{http_code}'" }
  if os.getenv("NOMBA_CAFILE") then cmd[#cmd + 1] = "--cacert '" .. os.getenv("NOMBA_CAFILE") .. "'" end
  for k, v in pairs(h) do cmd[#cmd + 1] = "-H '" .. k .. ": " .. v .. "'" end
  cmd[#cmd + 1] = "'" .. env("NOMBA_BASE_URL", oauth.PRODUCTION_URL) .. "/v1/accounts/balance'"
  local p = io.popen(table.concat(cmd, " "))
  local code = p:read("*a")
  p:close()
  return tonumber(code)
end
step(4, ("GET /v1/accounts/balance with client:headers(): HTTP %s"):format(tostring(call_balance(headers))))

-- 5. revoke
assert(client:revoke())
step(5, ("revoked; the old token now gets HTTP %s; client: %s"):format(
  tostring(call_balance(headers)), tostring(client)))

client:close()
print("closed: " .. tostring(client))
