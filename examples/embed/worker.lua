--- One Lua state of examples/embed/host.c (a thread of a C program).
--
-- The host calls this file with (thread, tokens, store) and prints the
-- string it returns. Everything here belongs to this state: its clients,
-- their connections, their tokens. What the states share is the Nomba
-- session, through a store (never a client object):
--   store = "file:DIR"    oauth.store.file(DIR): the threads and processes of one host
--   store = "redis:PORT"  oauth.store.redis(...): every host
--   store = ""            none: this state keeps its own session
-- host_stop() is the host's: true once it wants the thread to finish.

local oauth = require "nomba.oauth"
-- luacheck: read globals host_stop

local thread, tokens, store_spec = ...

-- assert, with an error's text (the host prints strings; an oauth.Error is a table)
local function must(v, err, ...)
  if not v then error(tostring(err), 2) end
  return v, err, ...
end

local function env(name)
  local v = os.getenv(name)
  if not v or v == "" then error("set " .. name .. " (make embed-demo does)", 0) end
  return v
end

local store
if store_spec:sub(1, 5) == "file:" then
  store = oauth.store.file(store_spec:sub(6))
elseif store_spec:sub(1, 6) == "redis:" then
  -- Debian's lua-redis is installed for 5.1-5.3; its pure-Lua module runs on 5.4 too
  package.path = package.path .. ";/usr/share/lua/5.3/?.lua"
  local redis = require "redis"
  store = oauth.store.redis(redis.connect("127.0.0.1", tonumber(store_spec:sub(7))),
                            { prefix = "embed:" })
end

-- The requests each client made, from its events ("issue 1, refresh 1").
local function counter()
  local counts = {}
  local function summary()
    local ops = {}
    for k, v in pairs(counts) do ops[#ops + 1] = k .. " " .. v end
    table.sort(ops)
    return #ops > 0 and table.concat(ops, ", ") or "none"
  end
  return function(ev)
    if ev.op ~= "store" then
      local k = ev.op .. (ev.ok and "" or " failed")
      counts[k] = (counts[k] or 0) + 1
    end
  end, summary
end

local function options(on_event, extra)
  local o = {
    account_id = env("NOMBA_ACCOUNT_ID"), client_id = env("NOMBA_CLIENT_ID"),
    client_secret = env("NOMBA_CLIENT_SECRET"), base_url = env("NOMBA_BASE_URL"),
    cafile = os.getenv("NOMBA_CAFILE"), on_event = on_event,
  }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

-- The shared client: token() in a loop, as a request handler would.
local shared_events, shared_summary = counter()
local client <close> = oauth.new(options(shared_events, { store = store }))
local got, distinct, last = 0, 0, nil
for i = 1, tokens do
  if host_stop() then break end
  local t, err = client:token()
  if not t then error(("token() #%d: %s"):format(i, tostring(err)), 0) end
  if t ~= last then distinct, last = distinct + 1, t end
  got = got + 1
  -- halfway, the first thread renews the shared session through the server
  if thread == 1 and i == tokens // 2 then
    must(client:refresh())
  end
end

-- PKCE in this state: its own randomness, its own client for the exchange.
-- A public (PKCE) app is a client of its own at Nomba: were it the shared
-- client's id, its exchange would be a second login, ending the shared session.
local verifier, challenge = oauth.pkce.pair()
assert(oauth.pkce.verify(verifier, challenge))
local solo_events, solo_summary = counter()
local pkce_options = options(solo_events, { client_id = env("NOMBA_PKCE_CLIENT_ID") })
pkce_options.client_secret = nil                   -- a public app has none
local solo = oauth.new(pkce_options)
local code = must(solo:authorize { code_challenge = challenge, state = "t" .. thread })
must(solo:exchange(code, verifier))
must(solo:refresh())
must(solo:revoke())
solo = nil   -- luacheck: ignore 311 (left to the garbage collector, like most clients)
collectgarbage()

return ("token() %d times, %d distinct; shared client (store %s): %s; own client: %s"):format(
  got, distinct, store and store_spec:match("^%a+") or "none", shared_summary(), solo_summary())
