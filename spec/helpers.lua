--- Test helpers: the simulator (started by tools/with-simulator.lua, or here
-- when a spec runs alone) and clients pointed at it.
local simulator = require "nomba.oauth.simulator"
local oauth = require "nomba.oauth"
local assert = require "luassert"

local H = {}

local sim
--- The running simulator.
function H.sim()
  if sim then return sim end
  local url, cafile = os.getenv("NOMBA_SIM_URL"), os.getenv("NOMBA_SIM_CAFILE")
  if url and cafile then
    sim = simulator.attach { url = url, cafile = cafile }
  else
    sim = assert(simulator.start())
    H._owner = setmetatable({}, { __gc = function() sim:stop() end })
  end
  return sim
end

--- Resets the simulator: no tokens, faults or log; default settings.
function H.reset()
  assert(H.sim():reset())
end

--- A client for the simulator; `extra` overrides options.
function H.client(extra)
  local o = H.sim():client_options(extra)
  if o.retries == nil then o.retries = 0 end
  return oauth.new(o)
end

--- The requests the simulator logged, optionally only for one endpoint.
function H.log(endpoint)
  local out = {}
  for _, r in ipairs(assert(H.sim():log())) do
    if endpoint == nil or r.endpoint == endpoint then out[#out + 1] = r end
  end
  return out
end

--- How many requests the simulator saw at an endpoint.
function H.count(endpoint)
  return #H.log(endpoint)
end

--- Calls the simulator's protected endpoint; returns the HTTP status.
function H.protected(headers)
  return (H.sim():protected(headers))
end

function H.sleep(s)
  require("nomba.oauth.core").sleep(s)
end

--- Asserts an error's exact shape.
function H.assert_error(err, want)
  assert.are.equal(oauth.Error, getmetatable(err))
  for k, v in pairs(want) do
    assert.are.same(v, err[k], "err." .. k)
  end
  assert.is_string(err.message)
  assert.is_boolean(err.retryable)
end

return H
