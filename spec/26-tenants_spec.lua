-- A platform's tenants in one process: clients configured alike share one
-- endpoint (the parsed base URL, the operation URLs, TLS, proxy and header
-- lines), counted and freed with its last client; a differently configured
-- client gets its own; a refused configuration leaves nothing behind; the
-- tenants' requests go where each one's configuration says, with its own
-- account and credentials, on handles any of them may reuse.
local oauth = require "nomba.oauth"
local core = require "nomba.oauth.core"
local H = require "helpers"
local cjson = require "cjson"

local function endpoints()
  collectgarbage()
  collectgarbage()
  return core._test.endpoints()
end

describe("tenants", function()
  local sim
  before_each(function()
    if not core._test.endpoints then
      error("run with the test build (make test builds it with NOMBA_TEST_HOOKS)")
    end
    sim = H.sim()
    H.reset()
  end)

  it("share one endpoint per configuration, freed with its last client", function()
    -- a configuration no other client of this process has (one an earlier
    -- spec's uncollected client holds would be shared, as it should)
    local ua = "spec-26/" .. core.pkce.verifier(43)
    local n0, refs0 = endpoints()
    local keep = {}
    for i = 1, 200 do
      keep[i] = oauth.new(sim:client_options { account_id = "acct-" .. i, client_id = "client-" .. i,
                                               client_secret = "secret-" .. i, log = false, user_agent = ua })
    end
    local n, refs = endpoints()
    assert.are.equal(n0 + 1, n)
    assert.are.equal(refs0 + 200, refs)
    -- any option of the endpoint makes another: a CA, a connect timeout, a path, a user agent
    local other = {
      oauth.new(sim:client_options { capath = "/etc/ssl/certs", log = false, user_agent = ua }),
      oauth.new(sim:client_options { connect_timeout = 2, log = false, user_agent = ua }),
      oauth.new(sim:client_options { paths = { refresh = "/v1/auth/token/refresh/" }, log = false,
                                     user_agent = ua }),
      oauth.new(sim:client_options { log = false, user_agent = ua .. "/2" }),
    }
    assert.are.equal(n0 + 5, (endpoints()))
    for i = 1, 100 do keep[i]:close() end       -- closed: given back at once
    n, refs = endpoints()
    assert.are.equal(n0 + 5, n)
    assert.are.equal(refs0 + 100 + #other, refs)
    for i = 1, 200 do keep[i] = nil end         -- collected: given back by __gc
    for i = 1, #other do other[i] = nil end
    n, refs = endpoints()
    assert.are.equal(n0, n)
    assert.are.equal(refs0, refs)
  end)

  it("a refused configuration names its option and leaves no endpoint behind", function()
    local n0, refs0 = endpoints()
    -- refused while the endpoint is built (in C): what it had made is freed
    local ok, err = pcall(oauth.new, sim:client_options { paths = { issue = "/" .. ("a"):rep(1100) } })
    assert.is_false(ok)
    assert.matches("option 'paths' makes a URL over 1023 bytes", err, 1, true)
    ok, err = pcall(oauth.new, sim:client_options { base_url = "https://user:pw@127.0.0.1:1" })
    assert.is_false(ok)
    assert.matches("base_url", err)
    assert.are.same({ n0, refs0 }, { endpoints() })
  end)

  it("each tenant's requests carry its own account and credentials on a shared endpoint", function()
    local secrets = {}
    local clients = {}
    for i = 1, 3 do
      secrets[i] = core.pkce.verifier(48)
      assert(sim:config { clients = { { client_id = "tenant-" .. i, client_secret = secrets[i],
                                        account_id = "acct-tenant-" .. i } } })
    end
    for i = 1, 3 do
      clients[i] = oauth.new(sim:client_options { account_id = "acct-tenant-" .. i, client_id = "tenant-" .. i,
                                                  client_secret = secrets[i], retries = 0, log = false })
    end
    for round = 1, 2 do                         -- the second round reuses handles set up for another tenant
      for i = 3, 1, -1 do
        local t = assert(clients[i]:issue())
        assert.matches("^eyJ", t.access_token)
        local r = assert(clients[i]:request { path = "/v1/accounts/balance" })
        assert.are.equal(200, r.status, round)
      end
    end
    local seen = {}
    for _, entry in ipairs(H.log("issue")) do
      local body = cjson.decode(entry.body)
      assert.are.equal(secrets[tonumber(body.client_id:match("%d+$"))], body.client_secret)
      seen[#seen + 1] = entry.headers.accountId .. " " .. body.client_id
    end
    assert.are.same({ "acct-tenant-3 tenant-3", "acct-tenant-2 tenant-2", "acct-tenant-1 tenant-1",
                      "acct-tenant-3 tenant-3", "acct-tenant-2 tenant-2", "acct-tenant-1 tenant-1" }, seen)
  end)

  it("clients made one after another with different options keep their own (the shared profile)", function()
    local seen = {}
    local a = oauth.new(sim:client_options { retries = 0, log = false })
    local b = oauth.new(sim:client_options { retries = 3, timeout = 7, log = false,
                                             on_event = function(ev) seen[#seen + 1] = ev.op end })
    local a2 = oauth.new(sim:client_options { retries = 0, log = false })
    assert.are.same({ 0, 3, 0 }, { core.state(a).retries, core.state(b).retries, core.state(a2).retries })
    assert.are.same({ 10, 7, 10 }, { core.state(a).timeout, core.state(b).timeout, core.state(a2).timeout })
    assert.is_nil(core.state(a).on_event)
    assert.is_function(core.state(b).on_event)
    assert.is_nil(core.state(a2).on_event)
    -- b's retries are its own: a 503 then a success is two attempts for b
    assert(sim:fault { endpoint = "issue", status = 503, times = 1 })
    assert(b:issue())
    assert.are.equal(2, H.count("issue"))
    assert.is_true(#seen > 0)
    assert(sim:fault { endpoint = "issue", status = 503, times = 1 })
    assert.is_nil((a:issue()))                  -- and a's (none) are a's
    assert.are.equal(3, H.count("issue"))
    -- the next client with the same options shares the profile (the last one made)
    local a3 = oauth.new(sim:client_options { retries = 0, log = false })
    assert.are.equal(getmetatable(core.state(a2)), getmetatable(core.state(a3)))
    assert.are_not.equal(getmetatable(core.state(b)), getmetatable(core.state(a3)))
  end)

  it("an idle client holds no attempt: a thousand renewed clients hold no request or answer buffer", function()
    local keep = {}
    for i = 1, 1000 do
      keep[i] = oauth.new(sim:client_options { base_url = sim.url .. "/fixed", account_id = "acct-" .. i,
                                               client_id = "client-" .. i, retries = 0, log = false })
      assert(keep[i]:token())
    end
    local buffers = 0
    for i = 1, 1000 do
      keep[i]:close()
      local wiped, checked = core._test.wiped(keep[i])
      assert.is_true(wiped)
      buffers = buffers + checked
    end
    assert.are.equal(3000, buffers)     -- each: its secret, access token and refresh token
  end)
end)
