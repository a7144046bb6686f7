-- The module's surface and oauth.new's option checks (no network).
local oauth = require "nomba.oauth"

local BASE = { account_id = "3f1c2d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f", client_id = "id",
               client_secret = "s3cret-value" }

local function with(extra)
  local o = {}
  for k, v in pairs(BASE) do o[k] = v end
  for k, v in pairs(extra) do o[k] = v end
  return o
end

local function new_error(opts)
  local ok, err = pcall(oauth.new, opts)
  assert.is_false(ok)
  return err
end

describe("nomba.oauth module", function()
  it("has its version and URLs", function()
    assert.are.equal("nomba.oauth 0.2.0", oauth._VERSION)
    assert.are.equal("https://api.nomba.com", oauth.PRODUCTION_URL)
    assert.are.equal("https://sandbox.nomba.com", oauth.SANDBOX_URL)
    assert.are.equal(require("nomba.oauth.core")._VERSION, oauth._VERSION)
  end)

  it("exposes Error as the metatable of every error", function()
    local c = oauth.new(BASE)
    c:close()
    local tok, err = c:token()
    assert.is_nil(tok)
    assert.are.equal(oauth.Error, getmetatable(err))
    assert.are.equal("nomba.oauth.Error", oauth.Error.__name)
  end)

  it("makes a full userdata with the metatable nomba.oauth.Client", function()
    local c = oauth.new(BASE)
    assert.are.equal("userdata", type(c))
    assert.are.equal(debug.getregistry()["nomba.oauth.Client"], getmetatable(c))
    assert.are.equal("nomba.oauth.Client", getmetatable(c).__name)
    for _, m in ipairs { "issue", "refresh", "revoke", "token", "headers", "invalidate",
                         "authorize", "exchange", "close" } do
      assert.is_function(c[m], m)
    end
  end)
end)

describe("oauth.new", function()
  it("requires account_id and client_id, naming them", function()
    assert.matches("option 'account_id' is required", new_error { client_id = "x" })
    assert.matches("option 'client_id' is required", new_error { account_id = "x" })
    assert.matches("option 'account_id' is required", new_error(with { account_id = "" }))
  end)

  it("rejects a non-table", function()
    assert.matches("options table expected, got string", new_error("x"))
    assert.matches("options table expected, got nil", new_error(nil))
  end)

  it("rejects unknown options by name", function()
    assert.matches("option 'clientsecret' is unknown", new_error(with { clientsecret = "x" }))
  end)

  it("checks every option's type", function()
    local cases = {
      timeout = "10", connect_timeout = true, retries = "2", refresh_skew = {},
      base_url = 1, sandbox = "yes", cafile = 1, capath = 1, pinned_pubkey = 1, proxy = 1,
      user_agent = 1, max_response_bytes = "1", paths = "x", on_event = "f",
      transport = {}, client_secret = 5,
    }
    for name, v in pairs(cases) do
      assert.matches("option '" .. name .. "' must be a", new_error(with { [name] = v }), 1, true)
    end
  end)

  it("checks values", function()
    assert.matches("'timeout' must be a number of seconds from 0.001 to 300", new_error(with { timeout = 0 }))
    assert.matches("'connect_timeout' must be a number of seconds", new_error(with { connect_timeout = -1 }))
    assert.matches("'retries' must be an integer from 0 to 10", new_error(with { retries = 1.5 }))
    assert.matches("'retries' must be an integer from 0 to 10", new_error(with { retries = -1 }))
    assert.matches("'refresh_skew' must be a number of seconds from 0", new_error(with { refresh_skew = -1 }))
    assert.matches("'max_response_bytes' must be an integer", new_error(with { max_response_bytes = 10 }))
    assert.matches("'pinned_pubkey' must look like", new_error(with { pinned_pubkey = "abc" }))
    assert.matches("'client_secret' must not be empty", new_error(with { client_secret = "" }))
    assert.matches("'account_id' must not contain control characters",
                   new_error(with { account_id = "a\r\nX-Evil: 1" }))
  end)

  it("insists on https, allowing http only on loopback", function()
    assert.matches("must be https://", new_error(with { base_url = "http://api.nomba.com" }))
    assert.matches("must be an https:// URL", new_error(with { base_url = "ftp://x" }))
    assert.matches("an absolute https:// URL is expected", new_error(with { base_url = "api.nomba.com" }))
    assert.is_userdata(oauth.new(with { base_url = "http://127.0.0.1:8080" }))
    assert.is_userdata(oauth.new(with { base_url = "http://localhost:8080/" }))
    assert.is_userdata(oauth.new(with { base_url = "https://example.com/" }))
  end)

  it("picks the sandbox, and refuses sandbox with base_url", function()
    local c = oauth.new(with { sandbox = true })
    assert.matches("https://sandbox.nomba.com", tostring(c), 1, true)
    assert.matches("https://api.nomba.com", tostring(oauth.new(BASE)), 1, true)
    assert.matches("'sandbox' conflicts with base_url",
                   new_error(with { sandbox = true, base_url = "https://x.test" }))
  end)

  it("checks paths", function()
    assert.matches("'paths' has an unknown key 'token'", new_error(with { paths = { token = "/x" } }))
    assert.matches("'paths' .issue must be a string starting with '/'",
                   new_error(with { paths = { issue = "v1/x" } }), 1, true)
  end)

  it("checks the store and store_key", function()
    assert.matches("option 'store' has no 'get' method", new_error(with { store = {} }))
    assert.matches("'store_key' must be at least 16 bytes", new_error(with { store_key = "k" }))
    local pkce = with { store = oauth.store.memory() }
    pkce.client_secret = nil
    assert.matches("'store_key' is required for a client without client_secret", new_error(pkce))
    pkce.store_key = ("k"):rep(32)
    assert.is_userdata(oauth.new(pkce))
  end)
end)

describe("a client", function()
  it("shows account and state in tostring, never a secret", function()
    local c = oauth.new(BASE)
    local s = tostring(c)
    assert.matches("account 3f1c2d4e%-5a6b%-4c7d%-8e9f%-0a1b2c3d4e5f", s)
    assert.matches("client id", s)
    assert.matches("token none", s)
    assert.is_nil(s:find("s3cret", 1, true))
    c:close()
    assert.matches("closed", tostring(c))
  end)

  it("raises when a method is called without self", function()
    local c = oauth.new(BASE)
    assert.has_error(function() c.issue() end)
    assert.has_error(function() c.issue({}) end)
    assert.has_error(function() c:refresh(5) end)
    assert.has_error(function() c:revoke("") end)
    assert.has_error(function() c:authorize() end)
    assert.has_error(function() c:exchange("code", "short") end)
  end)
end)
