--- Calling another Nomba API with the token, and the 401 recipe: when the
-- API answers 401 (the token was revoked or expired early), invalidate it,
-- get a new one and retry once.
--
--    make examples     # runs this against the simulator's protected endpoint
local oauth = require "nomba.oauth"

local base = assert(os.getenv("NOMBA_BASE_URL"), "set NOMBA_BASE_URL")
local cafile = os.getenv("NOMBA_CAFILE")
local client = oauth.new {
  account_id = assert(os.getenv("NOMBA_ACCOUNT_ID")),
  client_id = assert(os.getenv("NOMBA_CLIENT_ID")),
  client_secret = assert(os.getenv("NOMBA_CLIENT_SECRET")),
  base_url = base, cafile = cafile,
}

-- Any HTTP client will do for the API call itself; this one uses curl(1).
local function get(path, headers)
  local cmd = { "curl -sS -o /dev/null -w '%{http_code}'" }
  if cafile then cmd[#cmd + 1] = "--cacert '" .. cafile .. "'" end
  for k, v in pairs(headers) do cmd[#cmd + 1] = "-H '" .. k .. ": " .. v .. "'" end
  cmd[#cmd + 1] = "'" .. base .. path .. "'"
  local p = io.popen(table.concat(cmd, " "))
  local status = tonumber(p:read("*a"))
  p:close()
  return status
end

local function call_balance()
  local headers = assert(client:headers())
  local status = get("/v1/accounts/balance", headers)
  if status == 401 then
    client:invalidate()                          -- never hand out that token again
    headers = assert(client:headers())           -- refresh (or issue) happens here
    status = get("/v1/accounts/balance", headers)
  end
  return status
end

print("first call: HTTP " .. call_balance())

-- Somebody revokes our token behind our back (another process, the dashboard...).
local other = oauth.new { account_id = os.getenv("NOMBA_ACCOUNT_ID"), client_id = os.getenv("NOMBA_CLIENT_ID"),
                          client_secret = os.getenv("NOMBA_CLIENT_SECRET"), base_url = base, cafile = cafile }
assert(other:revoke(client:token()))
print("token revoked elsewhere; the call sees a 401, invalidates, renews and retries:")
local status = call_balance()
print("second call: HTTP " .. status)
assert(status == 200)
