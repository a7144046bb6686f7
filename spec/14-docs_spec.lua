-- Every public name of shared/API.md has a doc comment, and the version is
-- the same everywhere.
local oauth = require "nomba.oauth"

local function read(path)
  local f = assert(io.open(path))
  local s = f:read("*a")
  f:close()
  return s
end

describe("documentation", function()
  local sources = read("lua/nomba/oauth.lua") .. read("lua/nomba/oauth/store.lua") ..
                  read("lua/nomba/oauth/resty.lua") .. read("lua/nomba/oauth/webhook.lua")

  local lines = {}
  for line in (sources .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = line end

  -- the comment block right above "function NAME(" or holding "@function NAME",
  -- or nil when there is none or it is not an LDoc ("---") block
  local function doc_block(name)
    for i, line in ipairs(lines) do
      local def = line:find("function " .. name .. "(", 1, true) == 1 or
                  line:find("local function " .. name .. "(", 1, true) == 1
      local tag = line == "-- @function " .. name
      if def or tag then
        local first = def and i - 1 or i
        while first > 1 and lines[first - 1]:find("^%-%-") do first = first - 1 end
        local last = def and i - 1 or i
        while not def and lines[last + 1] and lines[last + 1]:find("^%-%-") do last = last + 1 end
        if first <= i and lines[first] and lines[first]:find("^%-%-%-") then
          return table.concat(lines, "\n", first, last)
        end
        if def then return nil end
      end
    end
  end

  for _, name in ipairs {
    "M.new", "Client:issue", "Client:refresh", "Client:revoke", "Client:token", "Client:headers",
    "Client:invalidate", "Client:authorize", "Client:exchange", "Client:close",
    "pkce.verifier", "pkce.challenge", "pkce.pair", "pkce.verify",
    "M.memory", "M.shdict", "M.redis", "M.request", "M.keep_fresh",
    "M.verify", "M.sign", "M.dedupe", "M.webhook", "M.file",
  } do
    it("documents " .. name, function()
      assert.is_string(doc_block(name), name .. " has no doc comment")
    end)
  end

  it("documents both return shapes of the operations", function()
    for _, name in ipairs { "issue", "refresh", "revoke", "authorize", "exchange", "token", "headers" } do
      local block = doc_block("Client:" .. name)
      assert.is_string(block, name)
      assert.is_true(block:find("nil, err", 1, true) ~= nil or block:find("@treturn[2] nil", 1, true) ~= nil,
                     name .. " does not document its failure shape")
    end
  end)

  it("documents both return shapes of webhook verification and dedupe", function()
    for _, name in ipairs { "M.verify", "M.dedupe" } do
      assert.matches("@treturn[2] nil", doc_block(name), 1, true)
    end
  end)

  it("has one version: C core, Lua module, CHANGELOG, user agent", function()
    local v = oauth._VERSION:match("^nomba%.oauth (%d+%.%d+%.%d+)$")
    assert.is_string(v)
    assert.are.equal(require("nomba.oauth.core")._VERSION, oauth._VERSION)
    assert.matches("## " .. v:gsub("%.", "%%."), read("CHANGELOG.md"))
    assert.matches('#define NOMBA_VERSION%s+"' .. v:gsub("%.", "%%.") .. '"', read("src/nomba.h"))
    assert.matches("version = \"scm%-1\"", read("rockspec/nomba-oauth-scm-1.rockspec"))
  end)
end)
