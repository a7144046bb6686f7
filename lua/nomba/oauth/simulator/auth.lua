--- The simulator's token endpoints (inside nginx): issue (client credentials
-- and the PKCE authorization_code grant), refresh (which retires the refresh
-- token it was given and needs the session's access token as bearer),
-- revoke and authorize.
local cjson = require "cjson.safe"
local ngx = ngx
local S = require "nomba.oauth.simulator.state"
local setting, now, respond, fail, store, load = S.setting, S.now, S.respond, S.fail, S.store, S.load
local b64url, sha256, random_text, iso = S.b64url, S.sha256, S.random_text, S.iso
local find_client = S.find_client

-- One session per client, as Nomba keeps it for a server's logins: a new
-- client-credentials issue ends the one before, whose tokens are refused
-- from then on (setting one_session, on by default). A session that ended
-- while still in use (its access token not yet expired, not revoked) is
-- counted: a parallel login, which a fleet sharing its token never makes.
-- A PKCE exchange starts a session of its own (a public app has one per
-- user), which no login ends.
local function begin_session(client, session, pkce)
  if pkce then return session or ("pkce:" .. random_text(16)) end
  local key = "session:" .. client.client_id
  local prev = load(key)
  if not session and prev and prev.exp > now() and setting("one_session") then
    S.dict:incr("count:sessions_ended", 1, 0)
    S.dict:incr("count:sessions_ended:" .. client.client_id, 1, 0)
  end
  session = session or random_text(16)
  store(key, { id = session, exp = now() + setting("lifetime") })
  return session
end

-- A pair belongs to a session: issue starts one, refresh continues it. An
-- access token record outlives its expiry (a day) because an expired access
-- token is still the bearer a refresh of the same session needs.
local function issue_pair(client, session, pkce)
  session = begin_session(client, session, pkce)
  local lifetime = setting("lifetime")
  local t = now()
  local payload = b64url(cjson.encode({ sub = client.client_id, iat = math.floor(t),
                                        exp = math.floor(t + lifetime), jti = random_text(12) }))
  local access = "eyJhbGciOiJIUzI1NiJ9." .. payload .. "." .. b64url(random_text(64)) ..
                 b64url(random_text(96))
  local refresh = "01h" .. random_text(37)
  store("at:" .. access, { client_id = client.client_id, account_id = client.account_id,
                           exp = t + lifetime, session = session }, lifetime + 86400)
  store("rt:" .. refresh, { client_id = client.client_id, account_id = client.account_id,
                           session = session }, 86400)
  S.dict:incr("count:issued", 1, 0)
  local data = { businessId = client.business_id, access_token = access, refresh_token = refresh }
  if setting("expires_in") then
    data.expires_in = lifetime
  else
    data.expiresAt = iso(t + lifetime)
  end
  return respond(200, { code = "00", description = "Success", data = data })
end

local function bearer()
  local h = ngx.var.http_authorization
  return h and h:match("^[Bb]earer%s+(%S+)$")
end

local handlers = {}

function handlers.issue(body, account)
  if body.grant_type == "authorization_code" then
    local client = find_client(body.client_id)
    if not client or client.account_id ~= account then
      return fail(401, "01", "Invalid client")
    end
    if type(body.auth_code) ~= "string" or type(body.code_verifier) ~= "string" then
      return fail(400, "02", "auth_code and code_verifier are required")
    end
    local key = "ac:" .. body.auth_code
    local code = load(key)
    if not code then return fail(401, "01", "Invalid or used authorization code") end
    S.dict:delete(key)                                   -- single use, even on failure
    if code.client_id ~= client.client_id then
      return fail(401, "01", "Authorization code was issued to another client")
    end
    if code.exp < now() then return fail(401, "02", "Authorization code expired") end
    local verifier = body.code_verifier
    local ok
    if not verifier:match("^[%w%-%._~]+$") or #verifier < 43 or #verifier > 128 then
      ok = false
    elseif code.method == "plain" then
      ok = verifier == code.challenge
    else
      ok = b64url(sha256(verifier)) == code.challenge
    end
    if not ok then return fail(401, "01", "code_verifier does not match code_challenge") end
    return issue_pair(client, nil, true)
  end
  if body.grant_type ~= "client_credentials" then
    return fail(400, "02", "Unsupported grant_type", { "grant_type must be client_credentials" })
  end
  if type(body.client_id) ~= "string" or type(body.client_secret) ~= "string" then
    return fail(400, "02", "client_id and client_secret are required")
  end
  local client = find_client(body.client_id)
  if not client or client.client_secret ~= body.client_secret or client.account_id ~= account then
    return fail(401, "01", "Invalid client credentials")
  end
  return issue_pair(client)
end

function handlers.refresh(body, account)
  if body.grant_type ~= "refresh_token" or type(body.refresh_token) ~= "string" then
    return fail(400, "02", "grant_type refresh_token and refresh_token are required")
  end
  local rt = load("rt:" .. body.refresh_token)
  if not rt or rt.account_id ~= account then
    return fail(401, "401", "Refresh token is invalid, expired or revoked")
  end
  -- as Nomba: the session's access token (expired is fine) is the bearer
  local b = bearer()
  if not b then return fail(401, "401", "Authorization: Bearer <access_token> is required") end
  local at = load("at:" .. b)
  if not at or at.session ~= rt.session then
    return fail(401, "401", "The bearer token does not belong to this session")
  end
  if rt.session:sub(1, 5) ~= "pkce:" and not S.current_session(rt.client_id, rt.session) then
    return fail(401, "401", "This session was ended by another login")
  end
  S.dict:delete("rt:" .. body.refresh_token)             -- retired on use
  local client = find_client(rt.client_id)
  if not client then return fail(401, "401", "Unknown client") end
  return issue_pair(client, rt.session, rt.session:sub(1, 5) == "pkce:")
end

function handlers.revoke(body, account)
  if type(body.clientId) ~= "string" or type(body.access_token) ~= "string" then
    return fail(400, "02", "clientId and access_token are required")
  end
  local client = find_client(body.clientId)
  if not client or client.account_id ~= account then
    return fail(401, "01", "Invalid client")
  end
  local at = load("at:" .. body.access_token)
  if at and at.client_id ~= client.client_id then
    return fail(403, "05", "Token belongs to another client")
  end
  S.dict:delete("at:" .. body.access_token)
  S.dict:incr("count:revoked", 1, 0)
  -- a session whose token was revoked is over by intent: the next login ends no session in use
  local cur = at and at.session:sub(1, 5) ~= "pkce:" and load("session:" .. client.client_id)
  if cur and cur.id == at.session then
    cur.exp = 0
    store("session:" .. client.client_id, cur)
  end
  return respond(200, { code = "00", description = "Token revoked successfully" })
end

function handlers.authorize(body, account)
  local client = find_client(body.client_id)
  if not client or client.account_id ~= account then
    return fail(401, "01", "Invalid client")
  end
  local method = body.code_challenge_method or "S256"
  if method ~= "S256" and method ~= "plain" then
    return fail(400, "02", "Unsupported code_challenge_method")
  end
  local ch = body.code_challenge
  if type(ch) ~= "string" or (method == "S256" and not ch:match("^[%w%-_]+$")) or
     (method == "S256" and #ch ~= 43) then
    return fail(400, "02", "Invalid code_challenge")
  end
  local code = random_text(32)
  local life = setting("code_lifetime")
  store("ac:" .. code, { client_id = client.client_id, challenge = ch, method = method,
                         exp = now() + life, redirect_uri = body.redirect_uri }, life + 60)
  return respond(200, { code = "00", description = "Success",
                        data = { auth_code = code, state = body.state } })
end


return handlers
