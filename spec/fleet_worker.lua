-- One process of a fleet (spec/13-redis, spec/20-session): calls token() in
-- a loop for a while, sharing the token through Redis (a connected
-- redis-lua client, the form the README shows first; "params" for the
-- store's own connection, "acl:USER:PASSWORD" for that with an ACL user,
-- "sentinel:NAME:PORT,PORT,..." for Redis Sentinel's master NAME through
-- the sentinels on those loopback ports, "cluster:PORT,PORT,..." for a Redis
-- Cluster seeded with those nodes), or
-- a directory ("file:DIR"), or alone ("alone"), checks every token it gets,
-- and prints a JSON summary. Never raises: a raise is a failure of the
-- library and ends the process with status 3.
--   lua5.4 spec/fleet_worker.lua URL CAFILE REDIS_HOST REDIS_PORT SECONDS
--                                [alone | file:DIR | params | acl:U:P | sentinel:NAME:PORTS | cluster:PORTS]
--                                [DRIVER [TIMEOUT RETRIES]]
-- DRIVER: "easy" (libcurl, blocking: the default), "multi" (nonblocking =
-- true: token() steps libcurl's multi interface) or "transport" (a Lua
-- transport: the curl command line tool).
local url, cafile, rhost, rport, seconds, mode = arg[1], arg[2], arg[3], tonumber(arg[4]), tonumber(arg[5]), arg[6]
local driver, timeout, retries = arg[7] or "easy", tonumber(arg[8]) or 2, tonumber(arg[9]) or 1
package.path = package.path .. ";/usr/share/lua/5.1/?.lua"
local oauth = require "nomba.oauth"
local core = require "nomba.oauth.core"
local cjson = require "cjson"
local simulator = require "nomba.oauth.simulator"

local summary = { calls = 0, ok = 0, failures = 0, store_errors = 0, kinds = {} }
local ok, err = pcall(function()
  local store
  if mode and mode:sub(1, 5) == "file:" then
    store = oauth.store.file(mode:sub(6))
  elseif mode == "params" then
    store = oauth.store.redis({ host = rhost, port = rport }, { prefix = "fleet:" })
  elseif mode and (mode:sub(1, 9) == "sentinel:" or mode:sub(1, 8) == "cluster:") then
    store = require("redis_ha").store(mode, { prefix = "fleet:" })
  elseif mode and mode:sub(1, 4) == "acl:" then
    local user, password = mode:match("^acl:([^:]+):(.*)$")
    store = oauth.store.redis({ host = rhost, port = rport, username = user, password = password },
                              { prefix = "fleet:" })
  elseif mode ~= "alone" then
    store = oauth.store.redis(require("redis").connect(rhost, rport), { prefix = "fleet:" })
  end
  local client = oauth.new {
    account_id = simulator.CLIENT.account_id, client_id = simulator.CLIENT.client_id,
    client_secret = simulator.CLIENT.client_secret, base_url = url, cafile = cafile,
    store = store, retries = retries, timeout = timeout, nonblocking = driver == "multi" or nil,
    transport = driver == "transport" and require("helpers").curl_transport(cafile) or nil,
    on_event = function(ev)
      if ev.kind == "store_error" then
        summary.store_errors = summary.store_errors + 1
        summary.store_messages = summary.store_messages or {}
        summary.store_messages[#summary.store_messages + 1] = ev.message
      end
    end,
  }
  local deadline = core.now() + seconds
  while core.now() < deadline do
    summary.calls = summary.calls + 1
    local t, e = client:token()
    if t then
      summary.ok = summary.ok + 1
      summary.last = t
    else
      summary.failures = summary.failures + 1
      summary.kinds[e.kind] = (summary.kinds[e.kind] or 0) + 1
    end
    core.sleep(0.02)
  end
  summary.final_valid = client:token() ~= nil
end)
if not ok then
  io.stderr:write("fleet worker raised: ", tostring(err), "\n")
  os.exit(3)
end
io.write(cjson.encode(summary))
