--- A platform's tenants in one process: N clients of N accounts, each
-- holding a token (given with the `token` option: no network), as
-- bench/go_tenants.go does with golang.org/x/oauth2. Prints one JSON
-- object: RSS and Lua heap per client holding a token (with "headers",
-- each has made its headers() string too), then microseconds to make a
-- client (median of 5 rounds of 20,000). bench/bench.lua runs it; alone:
--    lua5.4 bench/tenants.lua [N [headers]]
local oauth = require "nomba.oauth"
local core = require "nomba.oauth.core"
local cjson = require "cjson"
local rss_kib = require("procfs").rss_kib

local N = tonumber(arg[1]) or 100000
local now = core.now
-- the simulator's fixed answer's token: a 390-byte JWT
local ACCESS = "eyJhbGciOiJIUzI1NiJ9." .. ("eyJzdWIiOiJmaXhlZCJ9"):rep(16) .. "." .. ("c2lnbmF0dXJl"):rep(4)
local REFRESH = "01h4gdx2tctxfjgacbdwrcvs5d1688473602892"

local function options(i, with_token)
  return { account_id = ("acct-%06d"):format(i), client_id = ("client-%06d"):format(i),
           client_secret = ("secret-%06d-0123456789abcdef"):format(i), base_url = "https://127.0.0.1:9",
           log = false, token = with_token and { access_token = ACCESS, refresh_token = REFRESH,
                                                  expires_at = os.time() + 1800 } or nil }
end

local function median(t)
  table.sort(t)
  return t[(#t + 1) // 2] or t[#t / 2]
end

local function hold(headers)
  local keep = {}
  collectgarbage()
  collectgarbage()
  local heap0, rss0 = collectgarbage("count"), rss_kib()
  for i = 1, N do
    local c = oauth.new(options(i, true))
    assert(c:token() == ACCESS)
    if headers then assert(c:headers()) end
    keep[i] = c
  end
  collectgarbage()
  collectgarbage()
  local heap, rss = (collectgarbage("count") - heap0) * 1024 / N, (rss_kib() - rss0) * 1024 / N
  for i = 1, N do keep[i]:close() end
  return rss, heap, #keep
end

-- first, in a fresh process: what the clients take (memory given back
-- later is reused, and would hide it)
local rss, heap, held = hold(arg[2] == "headers")

-- making a client: the options tables are made before the clock starts
local rounds, M = {}, 20000
for r = 1, 5 do
  local opts, keep = {}, {}
  for i = 1, M do opts[i] = options(i, false) end
  collectgarbage()
  local t0 = now()
  for i = 1, M do keep[i] = oauth.new(opts[i]) end
  rounds[r] = (now() - t0) / M * 1e6
  for i = 1, M do keep[i]:close() end
end
local new_us = median(rounds)


print(cjson.encode { clients = held, new_us = new_us, rss_bytes_per_client = rss, heap_bytes_per_client = heap,
                     headers = arg[2] == "headers" })
