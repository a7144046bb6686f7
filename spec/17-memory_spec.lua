-- Secrets do not outlive close() and the collector anywhere in the process:
-- tools/memscan.lua runs the library through every operation that carries
-- or receives one (blocking, shared store, non-blocking, revoke), closes
-- everything, collects, then reads its own memory (/proc/self/maps and
-- /proc/self/mem) and counts each secret. Its Lua heap wipes what it frees,
-- standing for the caller's own strings; every copy the library made
-- itself (its buffers, libcurl's, OpenSSL's, its Lua strings) must be gone.
local core = require "nomba.oauth.core"
local H = require "helpers"

local LUA = arg and arg[-1] or "lua5.4"

describe("memory", function()
  before_each(H.reset)

  it("holds no secret anywhere after close and collection", function()
    if not core._test.wiping_alloc then
      error("run with the test build (make test builds it with NOMBA_TEST_HOOKS)")
    end
    local sim = H.sim()
    local secret = core.pkce.verifier(48)
    assert(sim:config { clients = { { client_id = "memscan-client", client_secret = secret,
                                      account_id = sim.client.account_id } } })
    local cmd = ("%s tools/memscan.lua '%s' '%s' '%s' memscan-client '%s' '%s' 2>&1"):format(
      LUA, sim.url, sim.cafile, sim.client.account_id, secret:sub(1, 20), secret:sub(21))
    local p = io.popen(cmd)
    local out = p:read("*a")
    p:close()
    local n = 0
    for name, count in out:gmatch("([%w%- ]+) (%d+)\n") do
      n = n + 1
      assert.are.equal(0, tonumber(count), name .. " is still in memory:\n" .. out)
    end
    assert.are.equal(8, n, out)
    local h = core.hygiene()
    assert.is_true(h.curl_frees_wiped)
    assert.is_true(h.tls_plaintext_cleansed)
    assert.is_true(h.secrets_out_of_core_dumps)
  end)
end)
