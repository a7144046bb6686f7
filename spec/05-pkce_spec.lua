-- RFC 7636 helpers and the authorize/exchange round trip.
local oauth = require "nomba.oauth"
local cjson = require "cjson"
local H = require "helpers"
local pkce = oauth.pkce

local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

describe("oauth.pkce", function()
  it("matches the RFC 7636 Appendix B vector", function()
    assert.are.equal("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                     pkce.challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"))
    assert.are.equal("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                     pkce.challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", "S256"))
    assert.is_true(pkce.verify("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
                               "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"))
  end)

  it("makes verifiers of 43..128 characters of the unreserved alphabet", function()
    assert.are.equal(43, #pkce.verifier())
    for _, n in ipairs { 43, 44, 64, 100, 127, 128 } do
      local v = pkce.verifier(n)
      assert.are.equal(n, #v)
      assert.is_nil(v:find("[^%w%-%._~]"))
    end
  end)

  it("refuses lengths 42 and 129 and non-integers", function()
    for _, n in ipairs { 42, 129, 0, -1, 43.5 } do
      assert.has_error(function() pkce.verifier(n) end)
      assert.has_error(function() pkce.pair(n) end)
    end
    assert.has_error(function() pkce.verifier("x") end)
  end)

  it("accepts verifiers of 43 and 128, refuses 42 and 129", function()
    assert.is_string(pkce.challenge(("a"):rep(43)))
    assert.is_string(pkce.challenge(("a"):rep(128)))
    assert.has_error(function() pkce.challenge(("a"):rep(42)) end)
    assert.has_error(function() pkce.challenge(("a"):rep(129)) end)
  end)

  it("refuses +, /, =, spaces, NUL and non-ASCII in a verifier", function()
    local base = ("a"):rep(42)
    for _, bad in ipairs { "+", "/", "=", " ", "\0", "\195\169", "\255" } do
      local v = (base .. bad):sub(1, 43)
      if #v < 43 then v = v .. ("a"):rep(43 - #v) end
      assert.has_error(function() pkce.challenge(v) end, nil, ("%q"):format(bad))
      assert.is_false(pkce.verify(v, pkce.challenge(base .. "a")))
    end
    assert.has_error(function() pkce.challenge(5) end)
  end)

  it("names the method: S256 by default, plain only when asked, others refused", function()
    local v = pkce.verifier()
    assert.are.equal(v, pkce.challenge(v, "plain"))
    assert.are_not.equal(v, pkce.challenge(v))
    assert.has_error(function() pkce.challenge(v, "s256") end)
    assert.has_error(function() pkce.challenge(v, "SHA256") end)
    assert.has_error(function() pkce.verify(v, v, "md5") end)
    assert.is_true(pkce.verify(v, v, "plain"))
    assert.is_false(pkce.verify(v, v))
  end)

  it("pair() returns a verifier and its challenge", function()
    local v, c = pkce.pair()
    assert.are.equal(43, #v)
    assert.are.equal(43, #c)
    assert.are.equal(pkce.challenge(v), c)
    assert.is_true(pkce.verify(v, c))
    assert.is_false(pkce.verify(v, c:sub(1, 42) .. (c:sub(43) == "A" and "B" or "A")))
    assert.is_false(pkce.verify(v, c:sub(1, 42)))
    local v2 = pkce.pair(128)
    assert.are.equal(128, #v2)
  end)

  it("draws no duplicate among 100,000 verifiers", function()
    local seen = {}
    for _ = 1, 100000 do
      local v = pkce.verifier()
      assert(not seen[v], "duplicate verifier")
      seen[v] = true
    end
  end)

  it("draws every symbol uniformly (chi-square over 64 symbols)", function()
    local counts, total = {}, 0
    for i = 1, #ALPHABET do counts[ALPHABET:sub(i, i)] = 0 end
    for _ = 1, 4000 do
      for ch in pkce.verifier(128):gmatch(".") do
        assert.is_not_nil(counts[ch], "symbol outside the base64url alphabet")
        counts[ch] = counts[ch] + 1
        total = total + 1
      end
    end
    local expected, chi2 = total / 64, 0
    for _, n in pairs(counts) do chi2 = chi2 + (n - expected) ^ 2 / expected end
    -- 63 degrees of freedom: the 99.99th percentile is about 117
    assert.is_true(chi2 < 117, "chi-square " .. chi2)
    -- and the last character of a 43-character verifier is as uniform as the others
    local last = {}
    for _ = 1, 64000 do
      local ch = pkce.verifier():sub(43)
      last[ch] = (last[ch] or 0) + 1
    end
    local n, chi2b = 0, 0
    for _, k in pairs(last) do n = n + 1; chi2b = chi2b + (k - 1000) ^ 2 / 1000 end
    assert.are.equal(64, n)
    assert.is_true(chi2b < 117, "chi-square of the last character " .. chi2b)
  end)

  it("a forked child never draws its parent's verifier", function()
    -- a C fork: the child inherits the whole process, OpenSSL state included
    local core = require "nomba.oauth.core"
    if not core._test.fork_verifiers then
      pending("the module was built without NOMBA_TEST_HOOKS (make test builds it with them)")
      return
    end
    -- the parent has drawn before forking, so its random pool holds unused
    -- bytes the child inherits: the child must not use them
    for _ = 1, 20 do
      local parent, child, wipeonfork = core._test.fork_verifiers()
      assert.are.equal(43, #parent)
      assert.are.equal(43, #child)
      assert.are_not.equal(parent, child)
      assert.is_boolean(wipeonfork)
    end
  end)
end)

describe("PKCE flow", function()
  local sim
  before_each(function()
    sim = H.sim()
    H.reset()
  end)

  local function pkce_client(extra)
    local o = sim:client_options(extra)
    o.client_secret = nil
    o.retries = 0
    return oauth.new(o)
  end

  it("authorize then exchange gives a kept token, never sending a secret", function()
    local c = pkce_client()
    local verifier, challenge = pkce.pair()
    local code = assert(c:authorize { code_challenge = challenge, state = "xyz",
                                      redirect_uri = "https://merchant.example/cb" })
    assert.is_string(code)
    local t = assert(c:exchange(code, verifier))
    assert.are.equal(t.access_token, c:token())
    local a = H.log("authorize")[1]
    assert.are.same({ client_id = sim.client.client_id, code_challenge = challenge,
                      code_challenge_method = "S256", state = "xyz",
                      redirect_uri = "https://merchant.example/cb" }, cjson.decode(a.body))
    local x = H.log("issue")[1]
    assert.are.same({ grant_type = "authorization_code", client_id = sim.client.client_id,
                      auth_code = code, code_verifier = verifier }, cjson.decode(x.body))
    assert.is_nil(x.body:find("secret", 1, true))
  end)

  it("plain works when named", function()
    local c = pkce_client()
    local v = pkce.verifier()
    local code = assert(c:authorize { code_challenge = v, code_challenge_method = "plain" })
    assert(c:exchange(code, v))
  end)

  it("a PKCE client cannot issue, and token() says so", function()
    local c = pkce_client()
    local _, err = c:issue()
    H.assert_error(err, { kind = "config", op = "issue", retryable = false })
    local _, e2 = c:token()
    H.assert_error(e2, { kind = "config", op = "token" })
    assert.are.equal(0, H.count("issue"))
  end)

  it("a PKCE client renews by refresh", function()
    local c = pkce_client()
    local v, ch = pkce.pair()
    assert(c:exchange(assert(c:authorize { code_challenge = ch }), v))
    local a = c:token()
    c:invalidate()
    local b = assert(c:token())
    assert.are_not.equal(a, b)
    assert.are.equal(1, H.count("refresh"))
  end)

  it("refuses a wrong verifier, a reused code and an expired code", function()
    local c = pkce_client()
    local v, ch = pkce.pair()
    local code = assert(c:authorize { code_challenge = ch })
    local _, err = c:exchange(code, pkce.verifier())
    H.assert_error(err, { kind = "api", op = "exchange", status = 401, code = "01" })
    -- the code was used up by the failed attempt
    local _, e2 = c:exchange(code, v)
    H.assert_error(e2, { kind = "api", op = "exchange", status = 401 })
    -- a good one, used twice
    local code2 = assert(c:authorize { code_challenge = ch })
    assert(c:exchange(code2, v))
    local _, e3 = c:exchange(code2, v)
    H.assert_error(e3, { kind = "api", op = "exchange", status = 401 })
    -- expired
    assert(sim:config { code_lifetime = 0.2 })
    local code3 = assert(c:authorize { code_challenge = ch })
    H.sleep(0.4)
    local _, e4 = c:exchange(code3, v)
    H.assert_error(e4, { kind = "api", op = "exchange", status = 401, code = "02" })
  end)

  it("refuses a code issued to another client", function()
    local other = { account_id = sim.client.account_id, client_id = "sim-client-0002",
                    client_secret = "sim-secret-0002" }
    assert(sim:config { clients = { other } })
    local c1 = pkce_client()
    local c2 = pkce_client { client_id = "sim-client-0002" }
    local v, ch = pkce.pair()
    local code = assert(c1:authorize { code_challenge = ch })
    local _, err = c2:exchange(code, v)
    H.assert_error(err, { kind = "api", op = "exchange", status = 401 })
  end)

  it("refuses a malformed challenge and an unknown client", function()
    local c = pkce_client()
    local _, err = c:authorize { code_challenge = "short" }
    H.assert_error(err, { kind = "api", op = "authorize", status = 400, code = "02" })
    local _, e2 = pkce_client { client_id = "nobody" }:authorize { code_challenge = select(2, pkce.pair()) }
    H.assert_error(e2, { kind = "api", op = "authorize", status = 401 })
  end)

  it("accepts `code` as the auth code's field name", function()
    assert(sim:fault { endpoint = "authorize", status = 200, body = { code = "00", data = { code = "abc" } } })
    assert.are.equal("abc", pkce_client():authorize { code_challenge = select(2, pkce.pair()) })
  end)
end)
