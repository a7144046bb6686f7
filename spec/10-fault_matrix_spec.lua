-- The fault matrix: one row per fault the simulator can play. Each row
-- asserts the exact error (kind, status, code, retryable), the number of
-- attempts the simulator saw, and that the client still works afterwards.
local H = require "helpers"

local RETRIES = 2

-- {name, fault, the error, attempts the simulator sees for one issue() call}
local MATRIX = require("parity").MATRIX

describe("fault matrix (issue)", function()
  local sim
  before_each(function()
    sim = H.sim()
    H.reset()
    -- each row's first attempt on a fresh connection (the clients of a Lua
    -- state share their connections: see the case after the matrix)
    assert.is_true(require("nomba.oauth.core")._test.close_idle())
  end)

  for _, row in ipairs(MATRIX) do
    local name, fault, want, attempts = row[1], row[2], row[3], row[4]
    it(name, function()
      fault.endpoint = "issue"
      fault.times = RETRIES + 1
      assert(sim:fault(fault))
      local events = {}
      local c = H.client { retries = RETRIES, timeout = 0.4,
                           on_event = function(ev) events[#events + 1] = ev end }
      local t, err = c:issue()
      assert.is_nil(t)
      want.op = "issue"
      H.assert_error(err, want)
      if not want.status then assert.is_nil(err.status) end
      if not want.code then assert.is_nil(err.code) end
      assert.are.equal(attempts, H.count("issue"))
      assert.are.equal(attempts, #events)
      for i, ev in ipairs(events) do
        assert.are.same({ "issue", i, false, want.kind }, { ev.op, ev.attempt, ev.ok, ev.kind })
      end
      -- the rest of the queued fault, if any, then a healthy client
      assert(sim:control("/_sim/clear_faults", {}))
      if fault.delay or fault.body_delay then H.sleep(0.8) end
      assert.is_string(assert(c:token()))
    end)
  end

  it("clients share connections: a dropped pooled connection is re-sent once by libcurl", function()
    local a = H.client {}
    assert(a:issue())                          -- leaves a keep-alive connection in the pool
    assert(sim:fault { endpoint = "issue", drop = true, times = 1 })
    local events = {}
    local b = H.client { retries = 0, on_event = function(ev) events[#events + 1] = ev end }
    assert(b:issue())                          -- rides a's connection; the server drops it
    assert.are.equal(1, #events)               -- one attempt of ours ...
    assert.are.equal(3, H.count("issue"))      -- ... libcurl re-sent it on a fresh connection
  end)

  it("a refresh fault keeps the valid token, for every row", function()
    for _, row in ipairs(MATRIX) do
      H.reset()
      local c = H.client { retries = 0, timeout = 0.4 }
      local t = assert(c:issue())
      local fault = {}
      for k, v in pairs(row[2]) do fault[k] = v end
      -- twice: libcurl transparently re-sends once when a reused keep-alive
      -- connection turns out dead, which is what a dropped answer looks like
      fault.endpoint, fault.times = "refresh", 2
      assert(sim:fault(fault))
      local r, err = c:refresh()
      assert.is_nil(r, row[1])
      assert.are.equal(row[3].kind, err.kind, row[1])
      assert.are.equal("refresh", err.op)
      assert.are.equal(t.access_token, c:token(), row[1])
      assert(sim:control("/_sim/clear_faults", {}))
    end
  end)
end)
