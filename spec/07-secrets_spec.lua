-- No secret (client secret, access token, refresh token) in any error,
-- event or tostring, on success and on every failure kind, even when the
-- server echoes one back.
local oauth = require "nomba.oauth"
local cjson = require "cjson"
local H = require "helpers"

describe("secrets", function()
  local sim, secrets, texts
  before_each(function()
    sim = H.sim()
    H.reset()
    secrets = { sim.client.client_secret }
    texts = {}
  end)

  local function collect(v)
    if type(v) == "table" then
      if getmetatable(v) == oauth.Error then texts[#texts + 1] = tostring(v) end
      texts[#texts + 1] = cjson.encode(v)
    elseif v ~= nil then
      texts[#texts + 1] = tostring(v)
    end
  end

  local function client(extra)
    extra = extra or {}
    extra.on_event = function(ev) collect(ev) end
    local c = H.client(extra)
    return c
  end

  local function keep(t)
    if t then
      secrets[#secrets + 1] = t.access_token
      secrets[#secrets + 1] = t.refresh_token
    end
    return t
  end

  local function scan()
    assert.is_true(#texts > 10)
    for _, text in ipairs(texts) do
      for _, s in ipairs(secrets) do
        assert.is_nil(text:find(s, 1, true), "a secret leaked into: " .. text:sub(1, 120))
      end
    end
  end

  it("never appear in what the library hands back", function()
    local c = client { retries = 1 }
    collect(c)
    local t = keep(c:issue())
    collect(c)
    keep(c:refresh())
    collect(c)
    collect(c:headers() and "headers-ok")
    c:invalidate()
    collect(c)
    keep({ access_token = c:token() })
    collect(c)
    -- every failure kind, with the kept token in place
    local faults = {
      { status = 500, body = "<html>boom</html>", content_type = "text/html" },
      { status = 200, body = { code = "05", description = "Not permitted" } },
      { status = 200, truncate = true, body = '{"code":"00"' },
      { status = 200, size = 70000 },
      { drop = true },
      { status = 401, body = { code = "401", description = "nope" } },
    }
    for _, ep in ipairs { "issue", "refresh", "revoke" } do
      for _, f in ipairs(faults) do
        f.endpoint = ep
        f.times = 2
        assert(sim:fault(f))
        local r, err = c[ep](c)
        collect(r ~= true and r and r.expires_in)
        collect(err)
        assert(sim:control("/_sim/clear_faults", {}))
      end
    end
    local _, e1 = client { client_secret = "not-the-secret" }:issue()
    collect(e1)
    local _, e2 = client { base_url = "https://127.0.0.1:" .. sim.port }:issue()
    collect(e2)
    local _, e3 = client { base_url = "https://localhost:1" }:issue()
    collect(e3)
    c:close()
    collect(c)
    collect(select(2, c:token()))
    assert.is_table(t)
    scan()
  end)

  it("are redacted when the server echoes one back", function()
    local c = client()
    local t = keep(c:issue())
    local echo = "you sent " .. sim.client.client_secret .. " and " .. t.access_token ..
                 " and " .. t.refresh_token
    for _, ep in ipairs { "issue", "refresh" } do
      assert(sim:fault { endpoint = ep, status = 400, body = { code = "02", description = echo } })
      local _, err = c[ep](c)
      collect(err)
      assert.matches("you sent %[redacted%] and %[redacted%]", err.message)
    end
    collect(c)
    for _ = 1, 10 do collect(c) end
    scan()
  end)

  it("are redacted from every error, whoever made it: a transport's failure, the Lua layer's", function()
    local secret = sim.client.client_secret
    local c = client { retries = 0, transport = function()
      return nil, { outcome = "reset", message = "peer said: " .. secret }
    end }
    local _, err = c:issue()
    assert.are.equal("transport", err.kind)
    assert.are.equal("peer said: [redacted]", err.message)
    _, err = c:issue()                           -- the same through the failure a Lua transport names plainly
    assert.is_nil(err.message:find(secret, 1, true))
    local made = require("nomba.oauth.core").error(c, "config", "token", "the Lua layer wrote " .. secret)
    assert.are.equal("the Lua layer wrote [redacted]", made.message)
    c:close()
  end)

  it("custom transports get no secret in an error when they raise", function()
    local c = client { transport = function(req) error("failed sending " .. req.body) end }
    local _, err = c:issue()
    collect(err)
    for _ = 1, 10 do collect(c) end
    scan()
  end)
end)
