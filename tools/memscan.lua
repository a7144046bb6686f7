--- Scans this process's whole memory for secrets after clients are closed
-- and collected (run by spec/17-memory_spec.lua, with the test build).
--
--    lua5.4 tools/memscan.lua URL CAFILE ACCOUNT CLIENT SECRET_HEAD SECRET_TAIL [plain]
--
-- The secret arrives in two halves (argv), so its whole never stands in
-- memory but where the library puts it. Every needle is kept as two halves
-- for the same reason. Unless "plain" is given, the Lua state's allocator
-- wipes what it frees (core._test.wiping_alloc): the caller's own strings
-- then vanish when collected, and what is found is what the library left.
-- Prints one line per needle: "name count".
local core = require "nomba.oauth.core"
local url, cafile, account, client_id, head, tail, mode = (table.unpack or unpack)(arg)
if mode ~= "plain" then core._test.wiping_alloc() end
local oauth = require "nomba.oauth"

local needles = {}
local function keep(name, s)
  if type(s) == "string" and #s > 16 then needles[#needles + 1] = { name, s:sub(1, 12), s:sub(13) } end
end

local function opts(extra)
  local o = { base_url = url, cafile = cafile, account_id = account, client_id = client_id,
              client_secret = head .. tail, retries = 0 }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

do
  -- the blocking client: every operation that carries or receives a secret
  local c = oauth.new(opts())
  local t = assert(c:issue())
  keep("issued access token", t.access_token)
  keep("issued refresh token", t.refresh_token)
  t = assert(c:refresh())
  keep("refreshed access token", t.access_token)
  keep("refreshed refresh token", t.refresh_token)
  assert(c:token())
  assert(c:headers())
  -- a shared store: seal, then adopt in a second client
  local store = oauth.store.memory()
  local s1 = oauth.new(opts { store = store })
  local tok = assert(s1:token())
  keep("shared access token", tok)
  local s2 = oauth.new(opts { store = store })
  assert(s2:token() == tok)
  -- the non-blocking mode
  local nb = oauth.new(opts { nonblocking = true })
  assert(nb:start("issue"))
  while nb:step() do nb:wait(0.05) end
  keep("non-blocking access token", nb:token())
  -- an explicit revoke
  local r = oauth.new(opts())
  t = assert(r:issue())
  keep("revoked access token", t.access_token)
  assert(r:revoke(t.access_token))
  for _, x in ipairs { c, s1, s2, nb, r } do x:close() end
end   -- every local of this block, tokens included, is garbage from here
needles[#needles + 1] = { "client secret", head, tail }
head, tail = nil, nil
for _ = 1, 5 do collectgarbage("collect") end

-- Counts the places where a needle's two halves stand one after the other.
local function count(chunk, n, limit)
  local k, at = 0, 1
  while true do
    local i = chunk:find(n[2], at, true)
    if not i or i > limit then return k end
    if chunk:sub(i + #n[2], i + #n[2] + #n[3] - 1) == n[3] then k = k + 1 end
    at = i + 1
  end
end

local counts = {}
for i = 1, #needles do counts[i] = 0 end
local mem = assert(io.open("/proc/self/mem", "rb"))
local maps = assert(io.open("/proc/self/maps")):read("*a")
local CHUNK, OVERLAP = 1048576, 4096
for lo, hi, perms, rest in maps:gmatch("(%x+)%-(%x+) (%S+) [^\n]-([^ \n]*)\n") do
  local a, b = tonumber(lo, 16), tonumber(hi, 16)
  -- (a sanitizer's shadow memory reserves terabytes that hold no data)
  if perms:sub(1, 1) == "r" and rest ~= "[vvar]" and rest ~= "[vsyscall]" and b - a < 2 ^ 32 then
    while a < b do
      local len = math.min(CHUNK + OVERLAP, b - a)
      local chunk = mem:seek("set", a) and mem:read(len)
      if chunk then
        for i, n in ipairs(needles) do counts[i] = counts[i] + count(chunk, n, CHUNK) end
      end
      a = a + CHUNK
    end
  end
end
mem:close()
for i, n in ipairs(needles) do print(n[1] .. " " .. counts[i]) end
io.stdout:flush()
-- leave without lua_close: the wiping allocator lives in the module, which
-- lua_close unloads before it frees the last objects
os.exit(0)
