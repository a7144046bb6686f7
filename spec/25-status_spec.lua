-- For the people who run it: client:status(), oauth.metrics() (the
-- Prometheus text exposition) and the log lines of renewals. No secret in
-- any of them. (In nginx, with the nginx-lua-prometheus adapter: spec 12.)
local oauth = require "nomba.oauth"
local cjson = require "cjson"
local H = require "helpers"

local BALANCE = { path = "/v1/accounts/balance" }

describe("status and metrics", function()
  local sim
  before_each(function()
    sim = H.sim()
    H.reset()
  end)

  it("client:status(): the token's state, the last renewal and the counts, no secret", function()
    local c = H.client { retries = 0 }
    local s = c:status()
    assert.are.same({ "none", 0, false, false }, { s.token, s.expires_in, s.renewing, s.store })
    assert.is_nil(s.last_renewal)
    assert.are.equal(sim.client.client_id, s.client_id)
    local tok = assert(c:token())
    assert(c:request(BALANCE))
    assert(sim:control("/_sim/revoke_all", { client_id = sim.client.client_id }))
    assert(c:request(BALANCE))                           -- a 401, one renewal, the call again
    assert(sim:config { rate_limit = 1 })
    H.sleep(1.1)                                         -- a new window of one call
    assert(c:request(BALANCE))                           -- the last call of Nomba's window
    assert(c:request(BALANCE))                           -- the window is spent: waited out, then sent
    s = c:status()
    assert.are.equal("valid", s.token)
    assert.is_true(s.expires_in > 1700 and s.expires_in <= 1800)
    assert.are.same({ issues = 2, refreshes = 0, renewal_failures = 0, unauthorized = 1, rate_limit_waits = 1,
                      requests = 4, request_failures = 0, store_data_lost = 0 }, s.counts)
    assert.are.equal("issue", s.last_renewal.op)         -- the revoked session's refresh was refused
    assert.is_true(s.last_renewal.ok)
    assert.is_true(math.abs(s.last_renewal.at - os.time()) < 5)
    -- a failed renewal
    c:invalidate()
    assert(sim:fault { endpoint = "refresh", status = 503, body = "busy", content_type = "text/plain" })
    assert(sim:fault { endpoint = "issue", status = 503, body = "busy", content_type = "text/plain" })
    assert.is_nil(c:token())
    s = c:status()
    assert.are.same({ "expired", false, "http", 503 },
                    { s.token, s.last_renewal.ok, s.last_renewal.kind, s.last_renewal.status })
    assert.are.equal(1, s.counts.renewal_failures)
    local text = cjson.encode(s)
    assert.is_nil(text:find(tok:sub(1, 40), 1, true))
    assert.is_nil(text:find(sim.client.client_secret, 1, true))
    c:close()
    assert.are.equal("closed", c:status().token)
    assert.has_error(function() c.status({}) end)
  end)

  it("oauth.metrics(): a valid exposition; the clients of one id are one series", function()
    collectgarbage()
    collectgarbage()
    local ours = ('{account_id="%s",client_id="%s"}'):format(sim.client.account_id, sim.client.client_id)
    local before = tonumber(oauth.metrics():match("\nnomba_oauth_clients" .. ours:gsub("%p", "%%%0") .. " (%d+)"))
                   or 0
    local store = oauth.store.memory()                   -- a fleet of two in this process
    local a, b = H.client { store = store }, H.client { store = store }
    assert(a:token())
    assert(b:issue())
    assert(a:request(BALANCE))
    local other = oauth.new { account_id = "acc-2", client_id = "client-2", client_secret = "s",
                              base_url = sim.url, cafile = sim.cafile }
    local text = oauth.metrics()
    local families, samples = {}, {}
    for line in text:gmatch("[^\n]+") do
      local kind, name = line:match("^# (%u+) (nomba_oauth_[%w_]+)")
      if kind then
        families[name] = families[name] or {}
        families[name][kind] = true
      else
        local n, labels, v = line:match("^(nomba_oauth_[%w_]+)(%b{}) (%S+)$")
        assert.is_string(n, "not a sample line: " .. line)
        assert.is_number(tonumber(v), line)
        samples[n .. labels] = tonumber(v)
      end
    end
    for name, f in pairs(families) do
      assert.is_true(f.HELP and f.TYPE, name)
    end
    assert.are.equal(before + 2, samples["nomba_oauth_clients" .. ours])
    if before == 0 then
      assert.are.equal(2, samples["nomba_oauth_issues_total" .. ours])
      assert.are.equal(1, samples["nomba_oauth_requests_total" .. ours])
    end
    assert.is_true(samples["nomba_oauth_token_expires_in_seconds" .. ours] > 1700)
    assert.are.equal(1, samples["nomba_oauth_last_renewal_success" .. ours])
    assert.are.equal(0, samples['nomba_oauth_token_expires_in_seconds{account_id="acc-2",client_id="client-2"}'])
    assert.is_nil(text:find(assert(a:token()):sub(1, 40), 1, true))
    -- closed and collected clients leave the exposition
    a:close()
    b:close()
    other:close()
    a, b, other = nil, nil, nil                          -- luacheck: ignore 311 (dropped for the collector)
    collectgarbage()
    collectgarbage()
    assert.is_nil(oauth.metrics():find("client-2", 1, true))
    local after = tonumber(oauth.metrics():match("\nnomba_oauth_clients" .. ours:gsub("%p", "%%%0") .. " (%d+)")) or 0
    assert.are.equal(before, after)
  end)

  it("logs one line per renewal: info when it succeeds, one warning or error when it fails", function()
    local lines = {}
    local function log(level, msg) lines[#lines + 1] = { level, msg } end
    local c = H.client { log = log, retries = 2, timeout = 2 }
    assert(c:token())
    assert.are.equal(1, #lines)
    assert.are.same("info", lines[1][1])
    assert.matches("^nomba%.oauth: token renewed %(issue%); it expires in %d+ s$", lines[1][2])
    lines = {}
    c:invalidate()
    for _, ep in ipairs { "refresh", "issue" } do
      assert(sim:fault { endpoint = ep, status = 503, body = "busy", content_type = "text/plain", times = 3 })
    end
    assert.is_nil(c:token())
    local loud = {}
    for _, l in ipairs(lines) do
      if l[1] ~= "info" then loud[#loud + 1] = l end
    end
    assert.are.equal(1, #loud, cjson.encode(lines))
    assert.are.equal("error", loud[1][1])
    assert.matches("renewal failed", loud[1][2])
    assert.are.equal(4, #lines, cjson.encode(lines))      -- 3 refresh attempts (info), the failure
  end)
end)
