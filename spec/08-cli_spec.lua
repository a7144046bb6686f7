-- The nomba-oauth command, driven as a subprocess against the simulator.
local cjson = require "cjson"
local H = require "helpers"

local LUA = arg and arg[-1] or "lua5.4"

local function run(args, env)
  local sim = H.sim()
  local vars = {
    NOMBA_ACCOUNT_ID = sim.client.account_id, NOMBA_CLIENT_ID = sim.client.client_id,
    NOMBA_CLIENT_SECRET = sim.client.client_secret, NOMBA_BASE_URL = sim.url,
    NOMBA_CAFILE = sim.cafile,
  }
  for k, v in pairs(env or {}) do vars[k] = v end
  local parts = {}
  for k, v in pairs(vars) do parts[#parts + 1] = k .. "='" .. v .. "'" end
  local cmd = table.concat(parts, " ") .. " " .. LUA .. " bin/nomba-oauth " .. args ..
              " 2>/tmp/nomba-cli-stderr; echo \"exit=$?\""
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  local f = io.open("/tmp/nomba-cli-stderr")
  local err = f:read("*a")
  f:close()
  local code = tonumber(out:match("exit=(%d+)%s*$"))
  return code, out:gsub("exit=%d+%s*$", ""), err
end

describe("nomba-oauth CLI", function()
  before_each(H.reset)

  it("issue prints a redacted token", function()
    local code, out = run("issue")
    assert.are.equal(0, code)
    assert.matches("access_token%s+eyJhbG…%(%d+ chars%)", out)
    assert.matches("expires_in%s+1800", out)
  end)

  it("issue --json --show-secrets prints the whole token as JSON", function()
    local code, out = run("issue --json --show-secrets")
    assert.are.equal(0, code)
    local t = cjson.decode(out)
    assert.is_true(#t.access_token > 300)
    assert.are.equal("Bearer", t.token_type)
    -- and the printed token is the one the simulator issued: it works
    assert.are.equal(200, H.protected { Authorization = "Bearer " .. t.access_token,
                                        accountId = H.sim().client.account_id })
  end)

  it("refresh and revoke take tokens as arguments", function()
    local _, out = run("issue --json --show-secrets")
    local t = cjson.decode(out)
    local code, out2 = run("refresh " .. t.refresh_token .. " --json")
    assert.are.equal(0, code)
    assert.matches("…", cjson.decode(out2).access_token)
    assert.are.equal(0, (run("revoke " .. t.access_token)))
    assert.are.equal(1, #H.log("revoke"))
  end)

  it("token prints a usable token; pkce prints a pair", function()
    local code, out = run("token --show-secrets")
    assert.are.equal(0, code)
    assert.matches("^eyJ", out)
    local c2, out2 = run("pkce --json")
    assert.are.equal(0, c2)
    local p = cjson.decode(out2)
    assert.are.equal(require("nomba.oauth").pkce.challenge(p.code_verifier), p.code_challenge)
    local _, out3 = run("pkce 128")
    assert.matches("code_verifier  " .. ("[%w%-_]"):rep(128) .. "\n", out3)
  end)

  it("exit code 1 and one line on a Nomba failure, never the secret", function()
    local code, out, err = run("issue", { NOMBA_CLIENT_SECRET = "wrong" })
    assert.are.equal(1, code)
    assert.are.equal("", out)
    assert.are.equal('nomba.oauth: issue failed: HTTP 401, Nomba code "01": Invalid client credentials\n', err)
  end)

  it("exit code 2 on usage errors", function()
    assert.are.equal(2, (run("")))
    assert.are.equal(2, (run("frobnicate")))
    assert.are.equal(2, (run("issue --bogus")))
    assert.are.equal(2, (run("pkce 42")))
    assert.are.equal(2, (run("refresh")))
    assert.are.equal(2, (run("issue", { NOMBA_ACCOUNT_ID = "" })))
    local code, out = run("issue --help")
    assert.are.equal(0, code)
    assert.matches("usage: nomba%-oauth issue", out)
  end)
end)
