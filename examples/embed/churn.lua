--- One short-lived Lua state of examples/embed/host.c's churn mode: the
-- module required, a client used (one issue), a PKCE pair, then the host
-- closes the state. The host checks that RSS and descriptors stay flat.
local oauth = require "nomba.oauth"
local client = oauth.new {
  account_id = os.getenv("NOMBA_ACCOUNT_ID"), client_id = os.getenv("NOMBA_CLIENT_ID"),
  client_secret = os.getenv("NOMBA_CLIENT_SECRET"), base_url = os.getenv("NOMBA_BASE_URL"),
  cafile = os.getenv("NOMBA_CAFILE"),
}
assert(client:token())
assert(oauth.pkce.verify(oauth.pkce.pair()))
return "ok"
