-- One Nomba session across restarts and processes: a client started from a
-- saved token, the on_token hook, and the file store shared by the
-- processes of one host (permissions, torn files, a killed lock holder, 8
-- processes making one issue, a directory swapped for a link, FIFOs, leases
-- across wall-clock steps).
local oauth = require "nomba.oauth"
local core = require "nomba.oauth.core"
local cjson = require "cjson"
local H = require "helpers"

local LUA = arg and arg[-1] or "lua5.4"

local function tmpdir() return H.tmpdir("session") end

local function mode_of(path)
  return io.popen("stat -c %a " .. path):read("*l")
end

describe("sessions", function()
  local sim
  before_each(function()
    sim = H.sim()
    H.reset()
  end)

  describe("token = saved", function()
    it("starts from a saved token: token() makes no request", function()
      local saved = assert(H.client():issue())
      local c = H.client { token = saved }
      assert.are.equal(saved.access_token, c:token())
      assert.are.equal(1, H.count("issue"))
      assert.are.equal(200, H.protected(c:headers()))
    end)

    it("refreshes a saved token when due, with its access token as the bearer", function()
      assert(sim:config { lifetime = 2 })
      local saved = assert(H.client():issue())
      H.sleep(2.1)                                -- expired: kept for its refresh
      local c = H.client { token = saved }
      local tok = assert(c:token())
      assert.are_not.equal(saved.access_token, tok)
      assert.are.equal(1, H.count("issue"))
      assert.are.equal(1, H.count("refresh"))
      assert.are.equal("Bearer " .. saved.access_token, H.log("refresh")[1].headers.Authorization)
    end)

    it("refuses a malformed saved token, naming the option", function()
      local o = sim:client_options()
      for _, bad in ipairs {
        { refresh_token = "r", expires_at = os.time() + 60 },
        { access_token = "a\r\nb", expires_at = os.time() + 60 },
        { access_token = "abc" },
        { access_token = "abc", expires_at = 1e300 },
      } do
        o.token = bad
        local ok, err = pcall(oauth.new, o)
        assert.is_false(ok)
        assert.matches("option 'token'", tostring(err))
      end
    end)
  end)

  describe("on_token", function()
    it("fires once per adoption, swallowing errors", function()
      local seen = {}
      local hook = function(t)
        seen[#seen + 1] = t.access_token
        error("the application's hook failed")
      end
      local store = oauth.store.memory()
      local a = H.client { on_token = hook, store = store }
      local t1 = assert(a:token())                    -- issue
      assert.are.same({ t1 }, seen)
      assert.are.equal(t1, a:token())                 -- nothing new
      assert.are.equal(1, #seen)
      local t2 = assert(a:refresh()).access_token     -- refresh
      assert.are.same({ t1, t2 }, seen)
      local got = {}
      local b = H.client { store = store, on_token = function(t) got[#got + 1] = t end }
      b:invalidate()
      local r = a:refresh()                          -- a publishes nothing here (explicit call)
      assert(r)
      assert(b:token())                               -- b adopts from the store
      assert.are.equal(1, #got)
      assert.is_string(got[1].refresh_token)
    end)
  end)

  describe("oauth.store.file", function()
    local dir
    before_each(function() dir = tmpdir() .. "/store" end)
    after_each(function() os.execute("rm -rf " .. dir:gsub("/store$", "")) end)

    it("implements the store contract, 0700 directory and 0600 files", function()
      local s = oauth.store.file(dir)
      assert.are.equal("700", mode_of(dir))
      assert.is_nil(s:get("k"))
      assert.is_true(s:set("k", "v1", 60))
      assert.are.equal("v1", s:get("k"))
      assert.are.equal("600", mode_of(dir .. "/v-k"))
      assert.is_true(s:set("k", "v2"))
      assert.are.equal("v2", s:get("k"))
      assert.is_true(s:set("e", "x", 0.2))
      H.sleep(0.3)
      assert.is_nil(s:get("e"))
      assert.is_true(s:delete("k"))
      assert.is_nil(s:get("k"))
      assert.is_true(s:lock("l", 5))
      local other = oauth.store.file(dir)
      assert.is_false(other:lock("l", 5))
      assert.is_true(s:unlock("l"))
      assert.is_true(other:lock("l", 5))
      assert.is_true(other:unlock("l"))
      assert.is_true(s:add("once", "1", 60))
      assert.is_false(other:add("once", "1", 60))
      -- a holder of add's lock that hangs never blocks add past the store's timeout
      local held = assert(core.fs_lockwait(other.dir, "lock-add", 1))
      other:set_timeout(0.2)
      local r, err = other:add("twice", "1", 60)
      assert.is_nil(r)
      assert.matches("deadline", err)
      core.fs_unlock(held)
      assert.is_true(other:add("twice", "1", 60))
    end)

    it("refuses a directory others can write, another user's, or a symlink", function()
      local base = dir:gsub("/store$", "")
      os.execute("mkdir -p " .. base .. "/open && chmod 777 " .. base .. "/open")
      assert.has_error(function() oauth.store.file(base .. "/open") end)
      os.execute("mkdir -p " .. base .. "/real && chmod 700 " .. base .. "/real && ln -s " ..
                 base .. "/real " .. base .. "/link")
      assert.has_error(function() oauth.store.file(base .. "/link") end)
      os.execute("mkdir -p " .. base .. "/theirs && chmod 700 " .. base .. "/theirs && chown nobody " ..
                 base .. "/theirs 2>/dev/null")
      if io.popen("stat -c %U " .. base .. "/theirs"):read("*l") == "nobody" then
        assert.has_error(function() oauth.store.file(base .. "/theirs") end)
      end
    end)

    it("treats torn, garbage and foreign files as a miss", function()
      local s = oauth.store.file(dir)
      local c = H.client { store = s }
      local key = core.store_id(c)
      local name = key:len() .. "\n" .. key .. "\n"
      for _, junk in ipairs { "", "garbage", "123", "0\nnot-sealed", "0\nn1.AAAA", "0\n" .. name .. "not-sealed",
                              "0\n999\n" .. key .. "\nx", "0\n" .. name:gsub(".$", "x") } do
        local f = assert(io.open(dir .. "/v-" .. core.fs_name(key), "w"))
        f:write(junk)
        f:close()
        assert.is_string(c:token())
        c:invalidate()
      end
      -- a value sealed by another client (another secret) does not open
      local o = sim:client_options { store = s }
      o.client_secret = nil
      o.store_key = ("z"):rep(32)
      local pk = oauth.new(o)
      assert.is_nil((pk:token()))                  -- a PKCE client cannot issue, and adopts nothing
    end)

    it("names every key's file apart: long and odd keys by their hash, the key checked on read", function()
      local s = oauth.store.file(dir)
      -- two ids that shared a file when names were a hex prefix of the first 90 bytes
      local long = ("r"):rep(200)
      local odd = "req/0001?x"
      for _, k in ipairs { long .. "-a", long .. "-b", odd, odd .. "\0", "foo", "foo.lock", "x" .. ("6"):rep(179) } do
        assert.is_true(s:set(k, "value of " .. k, 60))
      end
      for _, k in ipairs { long .. "-a", long .. "-b", odd, odd .. "\0", "foo", "foo.lock", "x" .. ("6"):rep(179) } do
        assert.are.equal("value of " .. k, s:get(k))
      end
      assert.are_not.equal(core.fs_name(long .. "-a"), core.fs_name(long .. "-b"))
      assert.matches("^=%x+$", core.fs_name(odd))
      -- a value is not a lock: a key named like another's lock file stays apart from it
      assert.is_true(s:lock("foo", 5))
      assert.are.equal("value of foo.lock", s:get("foo.lock"))
      assert.is_true(s:unlock("foo"))
      -- a file holding another key (written over by hand) is a miss, not that key's value
      local f = assert(io.open(dir .. "/v-" .. core.fs_name(odd), "w"))
      f:write("0\n3\nfoo\nsomeone else's")
      f:close()
      assert.is_nil(s:get(odd))
    end)

    it("removes the temporary files a process killed between write and rename left", function()
      oauth.store.file(dir)
      local function t_files()
        local n = 0
        for name in io.popen("ls -A " .. dir):lines() do if name:match("^t%-") then n = n + 1 end end
        return n
      end
      -- a real one: a process writing in a loop, killed -9
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      f:write(("local s = require('nomba.oauth').store.file(%q) local v = ('x'):rep(60000) " ..
               "while true do s:set('k', v) end"):format(dir))
      f:close()
      local pid = H.sh(LUA .. " " .. script .. " >/dev/null 2>&1 & echo $!"):match("%d+")
      H.sleep(0.5)
      os.execute("kill -9 " .. pid)
      H.sleep(0.1)
      os.remove(script)
      -- and made by hand: a dead process's, a live one's that is fresh, a live one's that is old
      local dead = H.sh("sh -c 'echo $$'"):match("%d+")
      local live = io.open("/proc/self/stat"):read("*l"):match("^(%d+)")
      local function touch(name, old)
        local g = assert(io.open(dir .. "/" .. name, "w"))
        g:write("sealed")
        g:close()
        if old then os.execute("touch -d '20 minutes ago' " .. dir .. "/" .. name) end
      end
      touch("t-v-k." .. dead .. ".1")
      touch("t-v-other." .. live .. ".7")
      touch("t-v-old." .. live .. ".8", true)
      assert.is_true(t_files() >= 3)
      local s = oauth.store.file(dir)                     -- opening the store sweeps
      assert.are.equal(1, t_files())                      -- only the live writer's fresh file
      assert.is_not_nil(io.open(dir .. "/t-v-other." .. live .. ".7"))
      assert.is_true(s:set("k", "v"))
      assert.are.equal("v", s:get("k"))
      os.remove(dir .. "/t-v-other." .. live .. ".7")
    end)

    it("a killed lock holder never blocks the others", function()
      local s = oauth.store.file(dir)
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      f:write(([[
        local s = require("nomba.oauth").store.file(%q)
        assert(s:lock("held", 600))
        io.write("locked\n") io.stdout:flush()
        require("nomba.oauth.core").sleep(600)
      ]]):format(dir))
      f:close()
      local p = io.popen(LUA .. " " .. script .. " & echo $!")
      local pid = p:read("*l")
      assert.are.equal("locked", p:read("*l"))      -- the holder has it
      assert.is_false(s:lock("held", 600))
      os.execute("kill -KILL " .. pid)
      p:close()
      os.remove(script)
      local got = false
      for _ = 1, 100 do
        got = s:lock("held", 600)
        if got then break end
        H.sleep(0.02)
      end
      assert.is_true(got)
    end)

    -- Runs `code` (Lua, given the store's directory as arg[1]) in a child
    -- process for 10 s at most (a hang fails the test, never hangs the
    -- suite), `env` the words before it, `extra` its arg[2]; what it
    -- printed, and how it ended.
    local function child(code, env, extra)
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      f:write("local oauth = require 'nomba.oauth'\nlocal dir = arg[1]\n" .. code)
      f:close()
      -- (io.popen, not H.sh: the child keeps this process's preload, the ASan runtime under make asan)
      local p = io.popen(("timeout 10 %s %s %s '%s' '%s' 2>&1; echo \"exit $?\""):format(env or "", LUA, script, dir,
                                                                                            extra or ""))
      local out = p:read("*a")
      p:close()
      os.remove(script)
      return out:match("^(.-)\n?exit (%d+)\n$")
    end

    it("fails every operation once its directory is replaced by a symbolic link, and writes nothing there", function()
      local base = dir:gsub("/store$", "")
      local s = oauth.store.file(dir)
      assert.is_true(s:set("k", "v", 60))
      -- a user who can write the parent moves the directory away and puts a link to theirs in its place
      os.execute(("mkdir -m 700 %s/theirs && mv %s %s/moved && ln -s %s/theirs %s"):format(base, dir, base, base, dir))
      local function replaced(...)
        local r, err = ...
        assert.is_nil(r)
        assert.are.equal("the store directory " .. dir .. " was replaced", err)
      end
      replaced(s:set("k", "sealed-secret", 60))
      replaced(s:set("new", "sealed-secret", 60))
      replaced(s:get("k"))
      replaced(s:add("claim", "1", 60))
      replaced(s:lock("l", 5))
      replaced(s:delete("k"))
      assert.are.equal("", H.sh("ls -A " .. base .. "/theirs"))        -- nothing written there
      -- a directory (not a link) put in its place is not the store's either
      os.execute(("rm %s && mkdir -m 700 %s"):format(dir, dir))
      replaced(s:set("k", "sealed-secret", 60))
      replaced(s:get("k"))
      assert.are.equal("", H.sh("ls -A " .. dir))
      -- the store's own directory, moved back, is the store again
      os.execute(("rmdir %s && mv %s/moved %s"):format(dir, base, dir))
      assert.are.equal("v", s:get("k"))
      assert.is_true(s:set("k", "w", 60))
      assert.are.equal("w", s:get("k"))
    end)

    it("a store made from a relative path keeps to its directory after a chdir", function()
      local base = dir:gsub("/store$", "")
      local out, status = child([[
        local ok, lfs = pcall(require, "lfs")
        if not ok then print("no lfs") return end
        assert(lfs.chdir(arg[2]))
        local s = oauth.store.file("store")
        assert(lfs.chdir("/"))
        print(s:set("k", "v", 60))
        print(s:get("k"))
      ]], nil, base)
      assert.are.equal("0", status, out)
      if out == "no lfs" then return pending("lfs (lua-filesystem) is not installed for this Lua") end
      assert.are.equal("true\nv", out)
      assert.are.equal("v", oauth.store.file(dir):get("k"))
    end)

    it("a FIFO named like a store file is a miss to read and an error to lock or add, never a hang", function()
      local s = oauth.store.file(dir)
      os.execute(("mkfifo %s/v-%s %s/l-%s %s/lock-add"):format(dir, core.fs_name("k"), dir, core.fs_name("l"), dir))
      local out, status = child([[
        local s = oauth.store.file(dir)
        print("get", s:get("k"))
        print("lock", s:lock("l", 5))
        print("add", s:add("a", "1", 60))
        print("set", s:set("k", "v", 60))
        print("get", s:get("k"))
      ]])
      assert.are.equal("0", status, out)                             -- 124: timeout killed it (a hang)
      assert.are.equal(table.concat({
        "get\tnil",
        "lock\tnil\tthe lock file is not a regular file",
        "add\tnil\tthe lock file is not a regular file",
        "set\ttrue",                                                 -- the value replaces the FIFO
        "get\tv" }, "\n"), out)
      assert.is_nil(s:lock("l", 5))
    end)

    it("judges an expiry on the boot clock within a boot, else (another boot, old layout) the wall clock", function()
      local s = oauth.store.file(dir)
      local clock, boot, wall = core.fs_clock()
      assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", clock)    -- the boot id: CLOCK_BOOTTIME is there
      assert.are.equal(io.open("/proc/sys/kernel/random/boot_id"):read("*l"), clock)
      local other = "00000000-0000-0000-0000-000000000000"
      local function with(head, want, why)
        local f = assert(io.open(dir .. "/v-k", "w"))
        f:write(head .. "\n1\nk\nvalue")
        f:close()
        assert.are.equal(want, s:get("k"), why)
      end
      local b = function(id, be, we) return ("b %s %.3f %.3f"):format(id, be, we) end
      with(b(clock, boot + 60, wall - 1), "value", "this boot: its boot clock rules, whatever the wall clock says")
      with(b(clock, boot - 1, wall + 60), nil, "this boot: over on its boot clock")
      with(b(other, 1, wall + 60), "value", "another boot: its wall-clock expiry rules")
      with(b(other, boot + 60, wall - 1), nil, "another boot: over on the wall clock")
      with(b("-", boot + 60, wall - 1), nil, "no boot id: the wall clock")
      with(b(clock .. "+m", boot + 60, wall - 1), nil, "another clock of this boot: the wall clock")
      with("b " .. clock .. " 0 0", "value", "no expiry")
      with(("%.3f"):format(wall + 60), "value", "the old layout: wall clock")
      with(("%.3f"):format(wall - 1), nil, "the old layout: over on the wall clock")
      with("0", "value", "the old layout: no expiry")
      -- what set writes: both expiries, on this boot's clock
      assert.is_true(s:set("k", "v", 60))
      local head = io.open(dir .. "/v-k"):read("*l")
      local id, be, we = head:match("^b (%S+) (%S+) (%S+)$")
      assert.are.equal(clock, id)
      assert.is_true(math.abs(tonumber(be) - boot - 60) < 5 and math.abs(tonumber(we) - wall - 60) < 5, head)
      assert.is_true(s:set("k", "v"))
      assert.are.equal("b " .. clock .. " 0 0", io.open(dir .. "/v-k"):read("*l"))
    end)

    it("a lease on the boot clock: held across wall-clock steps of +90 s and -1 h, over on time #preload", function()
      local lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
      assert.is_not_nil(io.open(lib), "libfaketime (Debian libfaketime) is needed")
      local pre = os.getenv("LD_PRELOAD")               -- under make asan the ASan runtime stays first
      -- libfaketime with DONT_FAKE_MONOTONIC leaves CLOCK_MONOTONIC and CLOCK_BOOTTIME alone
      local function stepped(step)
        return ("env LD_PRELOAD='%s' FAKETIME=%s DONT_FAKE_MONOTONIC=1"):format(
          (pre and pre ~= "" and pre .. " " or "") .. lib, step)
      end
      local judge = [[
        local s = oauth.store.file(dir)
        print(os.time() - ]] .. os.time() .. [[ > 60 or os.time() - ]] .. os.time() .. [[ < -60, s:add(arg[2], "2", 60))
        print(oauth.webhook.claim(s, arg[3]))
      ]]
      local s = oauth.store.file(dir)
      assert.is_true(s:add("claim", "1", 60))           -- a worker's claim: a lease of 60 s
      assert.are.equal("first", oauth.webhook.claim(s, "purchase", 60))
      for _, step in ipairs { "+90", "-3600" } do
        local out = child(judge:gsub("arg%[2%]", "'claim'"):gsub("arg%[3%]", "'purchase'"), stepped(step))
        assert.are.equal("true\tfalse\nheld", out, step)  -- its clock stepped; the claim is held
      end
      assert.is_true(s:add("short", "1", 0.5))          -- a lease of 0.5 s, over when the judges look
      assert.are.equal("first", oauth.webhook.claim(s, "short-purchase", 0.5))
      H.sleep(0.7)
      for _, step in ipairs { "+90", "-3600" } do
        local out = child(judge:gsub("arg%[2%]", "'short'"):gsub("arg%[3%]", "'short-purchase'"), stepped(step))
        assert.are.equal("true\ttrue\nfirst", out, step)  -- over: one of them takes it
        os.remove(dir .. "/v-short")
        os.remove(dir .. "/v-" .. core.fs_name("webhook:short-purchase"))
      end
      -- and the other way round: claims taken by a process whose clock stepped, judged by ours
      for _, step in ipairs { "+90", "-3600" } do
        local out = child([[
          local s = oauth.store.file(dir)
          print(s:add("mine", "1", 60), s:add("brief", "1", 0.5))
        ]], stepped(step))
        assert.are.equal("true\ttrue", out, step)
        assert.is_false(s:add("mine", "2", 60))         -- held while its lease runs
        H.sleep(0.7)
        assert.is_true(s:add("brief", "2", 60))         -- free after it
        assert.is_true(s:delete("mine"))
        assert.is_true(s:delete("brief"))
      end
    end)

    it("8 processes on one host share one session: one issue", function()
      assert(sim:config { lifetime = 4 })
      local procs = {}
      for i = 1, 8 do
        procs[i] = io.popen(("%s spec/fleet_worker.lua '%s' '%s' - 0 5 file:%s 2>&1"):format(
          LUA, sim.url, sim.cafile, dir))
      end
      for i = 1, 8 do
        local out = procs[i]:read("*a")
        assert(procs[i]:close(), out)
        local summary = assert(cjson.decode(out:match("{.*}$") or "null"), out)
        assert.are.equal(0, summary.failures, out)
        assert.is_true(summary.final_valid)
      end
      assert.are.equal(1, H.count("issue"))
      -- 5 s with 4 s tokens renewed 2 s before expiry: a refresh or two for all 8, not 8 each
      assert.is_true(H.count("refresh") <= 3, "refreshes: " .. H.count("refresh"))
    end)

    it("a process whose wall clock steps an hour keeps to the fleet's session (the server's clock) #preload", function()
      local lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
      assert.is_not_nil(io.open(lib), "libfaketime (Debian libfaketime) is needed")
      assert(sim:config { lifetime = 4 })
      local step = os.tmpname()
      local f = assert(io.open(step, "w"))
      f:write("+0\n")
      f:close()
      local function worker(env)
        return io.popen(("%s %s spec/fleet_worker.lua '%s' '%s' - 0 7 file:%s 2>&1"):format(
          env, LUA, sim.url, sim.cafile, dir))
      end
      local normal = worker("")
      H.sleep(0.5)
      -- its clock is ours, then an hour ahead (the monotonic clock, as a kernel's, does not jump)
      local pre = os.getenv("LD_PRELOAD")               -- under make asan the ASan runtime stays first
      local stepped = worker(("env LD_PRELOAD='%s' FAKETIME_TIMESTAMP_FILE=%s FAKETIME_NO_CACHE=1 " ..
                              "DONT_FAKE_MONOTONIC=1"):format((pre and pre ~= "" and pre .. " " or "") .. lib, step))
      H.sleep(2)
      f = assert(io.open(step, "w"))
      f:write("+3600\n")
      f:close()
      for _, p in ipairs { normal, stepped } do
        local out = p:read("*a")
        assert(p:close(), out)
        local s = assert(cjson.decode(out:match("{.*}$") or "null"), out)
        assert.are.equal(0, s.failures, out)
      end
      os.remove(step)
      local counts = assert(sim:counts())
      assert.are.equal(1, counts.issue)               -- no login of its own
      assert.is_nil(counts.sessions_ended)            -- and no session ended by one
    end)
  end)
end)
