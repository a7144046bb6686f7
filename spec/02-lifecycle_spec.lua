-- Every method's success path over real HTTPS, and the exact wire shape of
-- each request as the simulator logged it.
local cjson = require "cjson"
local H = require "helpers"

describe("client-credentials lifecycle", function()
  local sim, creds
  before_each(function()
    sim = H.sim()
    creds = sim.client
    H.reset()
  end)

  it("issues, and keeps the token", function()
    local c = H.client()
    local t = assert(c:issue())
    assert.is_string(t.access_token)
    assert.is_true(#t.access_token >= 300)
    assert.is_string(t.refresh_token)
    assert.are.equal("Bearer", t.token_type)
    assert.are.equal(creds.business_id, t.business_id)
    assert.is_true(t.expires_in >= 1798 and t.expires_in <= 1800)
    assert.is_true(math.abs(t.expires_at - (os.time() + 1800)) <= 2)
    assert.are.equal(t.access_token, c:token())
    assert.are.equal(1, H.count("issue"))
    assert.matches("token valid for 1[78]%d%ds", tostring(c))
  end)

  it("sends the issue request exactly as Nomba documents", function()
    local c = H.client()
    assert(c:issue())
    local r = H.log("issue")[1]
    assert.are.equal("POST", r.method)
    assert.are.equal("/v1/auth/token/issue", r.path)
    assert.are.equal(creds.account_id, r.headers.accountId)
    assert.matches("^application/json", r.headers["Content-Type"])
    local v = require("nomba.oauth")._VERSION:match("(%d+%.%d+%.%d+)$")
    assert.are.equal("nomba-oauth-lua/" .. v, r.headers["User-Agent"])
    assert.is_nil(r.headers.Authorization)
    assert.are.same({ grant_type = "client_credentials", client_id = creds.client_id,
                      client_secret = creds.client_secret }, cjson.decode(r.body))
  end)

  it("token() reuses the kept token without a request", function()
    local c = H.client()
    local a = assert(c:token())
    for _ = 1, 100 do assert.are.equal(a, c:token()) end
    assert.are.equal(1, H.count("issue"))
  end)

  it("reuses one keep-alive connection for consecutive requests", function()
    local c = H.client()
    for _ = 1, 5 do assert(c:issue()) end
    local log = H.log("issue")
    assert.are.equal(5, #log)
    -- the simulator records the connection's request number per request
    local conns = {}
    for _, r in ipairs(log) do conns[r.connection] = true end
    local n = 0
    for _ in pairs(conns) do n = n + 1 end
    assert.are.equal(1, n)
  end)

  it("refreshes with the kept refresh token and the bearer header", function()
    local c = H.client()
    local t1 = assert(c:issue())
    local t2 = assert(c:refresh())
    assert.are_not.equal(t1.access_token, t2.access_token)
    assert.are_not.equal(t1.refresh_token, t2.refresh_token)
    assert.are.equal(t2.access_token, c:token())
    local r = H.log("refresh")[1]
    assert.are.equal("/v1/auth/token/refresh", r.path)
    assert.are.equal("Bearer " .. t1.access_token, r.headers.Authorization)
    assert.are.equal(creds.account_id, r.headers.accountId)
    assert.are.same({ grant_type = "refresh_token", refresh_token = t1.refresh_token },
                    cjson.decode(r.body))
  end)

  it("refresh retires the old refresh token", function()
    local c = H.client()
    local t1 = assert(c:issue())
    assert(c:refresh())
    local t, err = c:refresh(t1.refresh_token)
    assert.is_nil(t)
    H.assert_error(err, { kind = "api", op = "refresh", status = 401, code = "401", retryable = false })
  end)

  it("refreshes with given tokens: the access token is the bearer Nomba requires", function()
    local c = H.client()
    local t1 = assert(c:issue())
    local other = H.client()
    local t2 = assert(other:refresh { refresh_token = t1.refresh_token, access_token = t1.access_token })
    assert.are.equal(t2.access_token, other:token())
    assert.are.equal("Bearer " .. t1.access_token, H.log("refresh")[1].headers.Authorization)
  end)

  it("a refresh without any access token fails at once, sending nothing", function()
    local t1 = assert(H.client():issue())
    local r, err = H.client():refresh(t1.refresh_token)
    assert.is_nil(r)
    H.assert_error(err, { kind = "config", op = "refresh" })
    assert.matches("access token", err.message)
    assert.are.equal(0, H.count("refresh"))
  end)

  it("the simulator refuses a refresh whose bearer is missing or of another session, as Nomba does", function()
    local a, b = assert(H.client():issue()), assert(H.client():issue())
    local _, err = H.client():refresh { refresh_token = a.refresh_token, access_token = b.access_token }
    H.assert_error(err, { kind = "api", status = 401 })
    assert(sim:config { lifetime = 1 })
    local c = H.client()
    local t = assert(c:issue())
    H.sleep(1.1)                                  -- the access token has expired: still the session's bearer
    assert(H.client():refresh { refresh_token = t.refresh_token, access_token = t.access_token })
  end)

  it("revokes the kept token and drops it", function()
    local c = H.client()
    local t = assert(c:issue())
    assert.is_true(c:revoke())
    local r = H.log("revoke")[1]
    assert.are.equal("/v1/auth/token/revoke", r.path)
    assert.are.equal(creds.account_id, r.headers.accountId)
    assert.are.same({ clientId = creds.client_id, access_token = t.access_token }, cjson.decode(r.body))
    assert.matches("token none", tostring(c))
    -- the next token() issues afresh
    local a = assert(c:token())
    assert.are_not.equal(t.access_token, a)
    assert.are.equal(2, H.count("issue"))
  end)

  it("revokes a given token and keeps its own", function()
    local c, other = H.client(), H.client()
    local mine = assert(c:issue())
    local theirs = assert(other:issue())
    assert.is_true(c:revoke(theirs.access_token))
    assert.are.equal(mine.access_token, c:token())
    assert.are.equal(1, #H.log("revoke"))
  end)

  it("a revoked token is refused by the protected endpoint", function()
    local c = H.client()
    local h = assert(c:headers())
    assert.are.equal(200, H.protected(h))
    assert(c:revoke())
    assert.are.equal(401, H.protected(h))
  end)

  it("headers() gives the bearer and accountId", function()
    local c = H.client()
    local h = assert(c:headers())
    assert.are.same({ Authorization = "Bearer " .. c:token(), accountId = creds.account_id }, h)
    -- a fresh table every time, so callers may add to it
    assert.are_not.equal(h, c:headers())
  end)

  it("invalidate() makes token() renew, by refresh", function()
    local c = H.client()
    local a = assert(c:token())
    c:invalidate()
    assert.matches("token invalidated", tostring(c))
    local b = assert(c:token())
    assert.are_not.equal(a, b)
    assert.are.equal(1, H.count("issue"))
    assert.are.equal(1, H.count("refresh"))
  end)

  it("honours custom paths", function()
    local c = H.client { paths = { issue = "/v1/auth/token/issue?x=1" } }
    assert(c:issue())
    assert.are.equal(1, H.count("issue"))
  end)

  it("accepts expires_in instead of expiresAt", function()
    assert(sim:config { expires_in = true, lifetime = 600 })
    local t = assert(H.client():issue())
    assert.is_true(t.expires_in >= 599 and t.expires_in <= 600)
  end)
end)
