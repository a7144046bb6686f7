--- Runs a command with a Nomba simulator around it.
--
--    lua5.4 tools/with-simulator.lua CMD ARGS...
--
-- Starts the simulator, runs CMD with NOMBA_SIM_URL (NOMBA_SIM_URL_H2: the
-- same simulator over HTTP/2), NOMBA_SIM_CAFILE,
-- NOMBA_ACCOUNT_ID, NOMBA_CLIENT_ID, NOMBA_CLIENT_SECRET, NOMBA_BASE_URL and
-- NOMBA_CAFILE in its environment, stops the simulator (by pid) and exits
-- with the command's status.

local simulator = require "nomba.oauth.simulator"

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local sim, err = simulator.start()
if not sim then
  io.stderr:write("with-simulator: ", tostring(err), "\n")
  os.exit(1)
end
local env = {
  NOMBA_SIM_URL = sim.url, NOMBA_SIM_URL_H2 = sim.url_h2, NOMBA_SIM_CAFILE = sim.cafile, NOMBA_SIM_PID = sim.pid,
  NOMBA_BASE_URL = sim.url, NOMBA_CAFILE = sim.cafile,
  NOMBA_ACCOUNT_ID = sim.client.account_id, NOMBA_CLIENT_ID = sim.client.client_id,
  NOMBA_CLIENT_SECRET = sim.client.client_secret, NOMBA_PKCE_CLIENT_ID = simulator.PKCE_CLIENT.client_id,
}
local parts = {}
for k, v in pairs(env) do parts[#parts + 1] = k .. "=" .. q(v) end
for i = 1, #arg do parts[#parts + 1] = q(arg[i]) end
local ok, how, code = os.execute(table.concat(parts, " "))
sim:stop()
if type(ok) == "number" then os.exit(ok == 0 and 0 or 1) end
if how == "exit" then os.exit(code) end
os.exit(1)
