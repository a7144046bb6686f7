-- close, __gc and __close: safe to repeat, a closed client answers
-- nil, err (kind "closed") everywhere, and many clients come and go.
local oauth = require "nomba.oauth"
local core = require "nomba.oauth.core"
local H = require "helpers"

describe("closing", function()
  before_each(H.reset)

  it("close twice is fine", function()
    local c = H.client()
    assert(c:issue())
    c:close()
    c:close()
    assert.matches("closed", tostring(c))
  end)

  it("every method of a closed client returns nil, err (closed)", function()
    local c = H.client()
    assert(c:issue())
    c:close()
    local calls = {
      issue = function() return c:issue() end,
      refresh = function() return c:refresh() end,
      revoke = function() return c:revoke() end,
      token = function() return c:token() end,
      headers = function() return c:headers() end,
      authorize = function() return c:authorize { code_challenge = ("a"):rep(43) } end,
      exchange = function() return c:exchange("code", ("v"):rep(43)) end,
    }
    for op, f in pairs(calls) do
      local r, err = f()
      assert.is_nil(r, op)
      assert.are.equal(oauth.Error, getmetatable(err), op)
      assert.are.equal("closed", err.kind, op)
      assert.are.equal(op == "headers" and "token" or op, err.op, op)
      assert.is_false(err.retryable, op)
    end
    c:invalidate()   -- harmless
    assert.are.equal(0, H.count("issue") - 1)
  end)

  it("wipes the secret and tokens on close (test build hook)", function()
    if not core._test.wiped then
      pending("the module was built without NOMBA_TEST_HOOKS (make test builds it with them)")
      return
    end
    local c = H.client()
    assert(c:issue())
    assert(c:refresh())
    assert.is_false((core._test.wiped(c)))
    c:close()
    local wiped, checked = core._test.wiped(c)
    assert.is_true(wiped)
    -- secret, access and refresh: an idle client holds nothing of its
    -- attempts (their buffers are wiped and given back when each one ends)
    assert.are.equal(3, checked)
  end)

  it("wipes the buffers of an attempt cut short by close (non-blocking, in flight)", function()
    if not core._test.wiped then
      pending("the module was built without NOMBA_TEST_HOOKS (make test builds it with them)")
      return
    end
    local sim = H.sim()
    local c = H.client()
    local t = assert(c:issue())
    assert(sim:fault { endpoint = "refresh", hold = true, pass = true })
    local nb = H.client { nonblocking = true, token = t }
    c:close()
    assert.is_true(nb:start("refresh"))
    local deadline = core.now() + 5
    while H.count("refresh") == 0 and core.now() < deadline do nb:step() end
    nb:close()                          -- the refresh is still held by the simulator
    assert(sim:release("refresh"))
    local wiped, checked = core._test.wiped(nb)
    assert.is_true(wiped)
    assert.is_true(checked > 3, checked .. " buffers checked")   -- the attempt's too
  end)

  it("__close closes a to-be-closed variable (Lua 5.4)", function()
    if _VERSION ~= "Lua 5.4" then
      pending("to-be-closed variables need Lua 5.4")
      return
    end
    local chunk = assert(load([[
      local H = ...
      local kept
      do
        local c <close> = H.client()
        assert(c:issue())
        kept = c
      end
      return kept
    ]]))
    local c = chunk(H)
    assert.matches("closed", tostring(c))
    local _, err = c:token()
    assert.are.equal("closed", err.kind)
  end)

  it("a half-built client (bad options reaching the core) is collected safely", function()
    for _ = 1, 50 do
      assert.has_error(function() core.new({ account_id = "a", client_id = "b" }, {}) end)
    end
    collectgarbage()
    collectgarbage()
  end)

  it("collects many clients, some with a request done", function()
    local before = collectgarbage("count")
    for i = 1, 2000 do
      local c = H.client()
      if i % 500 == 0 then assert(c:issue()) end
      if i % 2 == 0 then c:close() end
    end
    collectgarbage()
    collectgarbage()
    assert.is_true(collectgarbage("count") - before < 512)
  end)
end)
