--- PKCE (RFC 7636) with nomba.oauth: a fresh verifier and challenge, and,
-- when NOMBA_BASE_URL points at a server that has the PKCE endpoints (the
-- simulator does; Nomba's are not public yet), the whole flow.
local oauth = require "nomba.oauth"

local verifier, challenge = oauth.pkce.pair()
print("code_verifier  " .. verifier)
print("code_challenge " .. challenge .. " (S256)")
assert(oauth.pkce.verify(verifier, challenge))

local base = os.getenv("NOMBA_BASE_URL")
if not base or base == "" then return end

-- A PKCE client has no client_secret.
local client = oauth.new {
  account_id = assert(os.getenv("NOMBA_ACCOUNT_ID"), "set NOMBA_ACCOUNT_ID"),
  client_id = assert(os.getenv("NOMBA_CLIENT_ID"), "set NOMBA_CLIENT_ID"),
  base_url = base, cafile = os.getenv("NOMBA_CAFILE"),
}
local code = assert(client:authorize { code_challenge = challenge, state = "demo" })
print("auth_code      " .. code:sub(1, 6) .. "…")
local t = assert(client:exchange(code, verifier))
print(("token          %s…(%d chars), expires in %ds"):format(t.access_token:sub(1, 6), #t.access_token, t.expires_in))
client:close()
