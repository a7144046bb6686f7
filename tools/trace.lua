--- The data path, traced: which files a call goes through, in order.
--
--    make trace      (lua5.4 tools/with-simulator.lua lua5.4 tools/trace.lua)
--
-- A call hook (debug.sethook) sees every function called while one public
-- call runs: a Lua function is named by its file under lua/, a function of
-- the C core by the C file src/README.md names for it (its entry's
-- "[file.c]", or its section's). Prints, for token() with a renewal and
-- for request() GET on libcurl easy, libcurl multi (start and step()) and
-- a Lua transport: the calls into the module's files, the file changes
-- between consecutive calls, the calls from Lua into C, and the path
-- itself (consecutive calls in one file shown once).
local oauth = require "nomba.oauth"
local core = require "nomba.oauth.core"

-- The C file of every core entry, from src/README.md.
local function c_files()
  local f = assert(io.open("src/README.md"))
  local text = f:read("*a")
  f:close()
  local by_name, section = {}, nil
  for line in text:gmatch("[^\n]+") do
    local s = line:match("^## .-%[([%w_]+%.c)")
    if line:match("^## ") then section = s end
    for name in line:gmatch("`([%w_:%.]+)%(") do
      local file = line:match("%[([%w_]+%.c)[^%]]*%]%s*|%s*$") or section
      if file and not by_name[name] then by_name[name] = file end
    end
    local name = line:match("^| `([%w_]+)` |")
    if name and not by_name[name] then by_name[name] = line:match("%[([%w_]+%.c)") or section end
  end
  return by_name
end

-- The core's functions (and its tables' and metatables'), each with its file.
local function c_map(client, frame)
  local by_name, map = c_files(), {}
  local function add(t, prefix)
    for k, v in pairs(t) do
      if type(v) == "function" then
        map[v] = by_name[prefix .. k] or by_name[k] or "core.c"
      elseif type(v) == "table" and prefix == "" and k ~= "_test" then
        add(v, k .. ".")
      end
    end
  end
  add(core, "")
  local mt = getmetatable(client)
  for k, v in pairs(type(mt.__index) == "table" and mt.__index or {}) do
    if type(v) == "function" and debug.getinfo(v, "S").what == "C" then
      map[v] = k == "close" and "client.c" or "token.c"
    end
  end
  for _, v in pairs(getmetatable(frame).__index) do
    if type(v) == "function" then map[v] = "frame.c" end
  end
  return map
end

local function trace(map, f)
  local path, calls, changes, into_c, last = {}, 0, 0, 0, nil
  local caller_lua = false
  debug.sethook(function()
    local info = debug.getinfo(2, "Sf")
    local file
    if info.what == "C" then
      file = map[info.func]
      if file and caller_lua then into_c = into_c + 1 end
    else
      file = info.short_src:match("lua/(nomba/.+%.lua)$")
    end
    caller_lua = info.what ~= "C" and file ~= nil
    if not file then return end
    calls = calls + 1
    if file ~= last then
      if last then changes = changes + 1 end
      path[#path + 1] = file:gsub("^nomba/", "")
      last = file
    end
  end, "c")
  local ok, err = pcall(f)
  debug.sethook()
  assert(ok, err)
  return { calls = calls, changes = changes, into_c = into_c, path = path }
end

local function options(extra)
  local o = {
    base_url = assert(os.getenv("NOMBA_BASE_URL"), "run under tools/with-simulator.lua"),
    cafile = os.getenv("NOMBA_CAFILE"), account_id = os.getenv("NOMBA_ACCOUNT_ID"),
    client_id = os.getenv("NOMBA_CLIENT_ID"), client_secret = os.getenv("NOMBA_CLIENT_SECRET"),
  }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

local cases = {
  { "token() with a renewal, libcurl easy", function()
      local c = oauth.new(options())
      return function() assert(c:token()) end
    end },
  { "request() GET, libcurl easy", function()
      local c = oauth.new(options())
      assert(c:token())
      assert(c:request { path = "/v1/accounts/balance" })
      return function() assert(c:request { path = "/v1/accounts/balance" }) end
    end },
  { "request() GET, libcurl multi (start, then step() until done)", function()
      local c = oauth.new(options { nonblocking = true })
      assert(c:token())
      return function()
        local done
        assert(c:start("request", { path = "/v1/accounts/balance" }, function(r) done = r end))
        while c:step() do c:wait(0.05) end
        assert(done)
      end
    end },
  { "request() GET, a Lua transport (raw bytes)", function()
      -- the specs' Lua transport (the curl command line, --raw): only the module's part is traced
      package.path = "spec/?.lua;" .. package.path
      local c = oauth.new(options { transport = require("helpers").curl_transport(os.getenv("NOMBA_CAFILE")) })
      assert(c:token())
      return function() assert(c:request { path = "/v1/accounts/balance" }) end
    end },
}

local probe = oauth.new(options())
local map = c_map(probe, core.frame("GET", 1))
probe:close()
print("The data path (tools/trace.lua): calls into the module's files, changes between files,")
print("calls from Lua into C, and the files in order")
for _, case in ipairs(cases) do
  local f = case[2]()
  local t = trace(map, f)
  print(("\n%s: %d calls, %d file changes, %d Lua->C calls"):format(case[1], t.calls, t.changes, t.into_c))
  print("  " .. table.concat(t.path, " > "))
end
