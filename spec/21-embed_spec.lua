-- A C program embedding Lua 5.4 with a state per thread (examples/embed/host.c):
-- the states share one Nomba session through Redis, the host stops its
-- threads cleanly on SIGTERM, and a state never sees another's client.
-- (make tsan runs the same host under ThreadSanitizer with the file store,
-- and 1,000 states made and closed with RSS and fds flat.)
local H = require "helpers"

local ROOT = os.getenv("PWD")

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

describe("embedding host", function()
  local sim, env
  setup(function()
    local out = H.sh("make -s -C " .. q(ROOT) .. " embed-host 2>&1; echo status=$?")
    assert.matches("status=0", out, 1, true)
    sim = H.sim()
    local c = sim.client
    env = table.concat({
      "LUA_PATH=" .. q(ROOT .. "/lua/?.lua;;"), "LUA_CPATH=" .. q(ROOT .. "/build/5.4/?.so;;"),
      "NOMBA_ACCOUNT_ID=" .. q(c.account_id), "NOMBA_CLIENT_ID=" .. q(c.client_id),
      "NOMBA_CLIENT_SECRET=" .. q(c.client_secret), "NOMBA_BASE_URL=" .. q(sim.url),
      "NOMBA_CAFILE=" .. q(sim.cafile),
      "NOMBA_PKCE_CLIENT_ID=" .. q(require("nomba.oauth.simulator").PKCE_CLIENT.client_id) }, " ")
  end)
  before_each(function() H.reset() end)

  local function host(args)
    return H.sh(env .. " " .. q(ROOT .. "/build/5.4/host") .. " -s " ..
                q(ROOT .. "/examples/embed/worker.lua") .. " " .. args .. " 2>&1; echo status=$?")
  end

  it("4 states on 4 threads share one session through Redis: one issue between them", function()
    local redis = assert(H.redis())
    local out = host("-t 4 -n 50 -S redis:" .. redis.port)
    redis.cleanup()
    assert.matches("status=0", out, 1, true)
    assert.matches("4 threads stopped, 0 failed", out, 1, true)
    local threads, issues = 0, 0
    for line in out:gmatch("%[thread %d+%][^\n]*") do
      threads = threads + 1
      assert.matches("token() 50 times", line, 1, true)
      assert.matches("store redis", line, 1, true)
      assert.matches("own client: authorize 1, exchange 1, refresh 1, revoke 1", line, 1, true)
      issues = issues + select(2, line:gsub("shared client %(store redis%): issue 1", ""))
    end
    assert.equals(4, threads)
    assert.equals(1, issues)
    -- the simulator saw one client-credentials issue; the 4 exchanges are the own clients'
    assert.equals(1 + 4, H.count("issue"))
  end)

  it("stops its threads cleanly on SIGTERM, each closing its state", function()
    local dir = io.popen("mktemp -d /tmp/nomba-embed.XXXXXX"):read("*l")
    local out = H.sh("sh -c " .. q(env .. " " .. q(ROOT .. "/build/5.4/host") .. " -s " ..
      q(ROOT .. "/examples/embed/worker.lua") .. " -t 3 -n 2000000000 -S file:" .. dir ..
      "/s & pid=$!; sleep 1; kill -TERM $pid; wait $pid; echo status=$?") .. " 2>&1")
    os.execute("rm -rf " .. q(dir))
    assert.matches("status=0", out, 1, true)
    assert.matches("3 threads stopped, 0 failed", out, 1, true)
    local n = 0
    for line in out:gmatch("%[thread %d+%][^\n]*") do
      n = n + 1
      assert.not_matches("token%(%) 2000000000 times", line)
      assert.matches("own client: authorize 1, exchange 1, refresh 1, revoke 1", line, 1, true)
    end
    assert.equals(3, n)
  end)
end)
