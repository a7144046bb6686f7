-- Every public name of the API has a doc comment, the version is the same
-- everywhere, LDoc renders Markdown, the README points only at files of the
-- repository, and make release checks what it must.
local oauth = require "nomba.oauth"

local function read(path)
  local f = assert(io.open(path))
  local s = f:read("*a")
  f:close()
  return s
end

describe("documentation", function()
  local sources = read("lua/nomba/oauth.lua") .. read("lua/nomba/oauth/client.lua") ..
                  read("lua/nomba/oauth/store.lua") .. read("lua/nomba/oauth/store/redis.lua") ..
                  read("lua/nomba/oauth/store/file.lua") ..
                  read("lua/nomba/oauth/resty.lua") .. read("lua/nomba/oauth/webhook.lua")

  local lines = {}
  for line in (sources .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = line end

  -- the comment block right above "function NAME(" or holding "@function NAME",
  -- or nil when there is none or it is not an LDoc ("---") block
  local function doc_block(name)
    for i, line in ipairs(lines) do
      local def = line:find("function " .. name .. "(", 1, true) == 1 or
                  line:find("local function " .. name .. "(", 1, true) == 1
      local tag = line == "-- @function " .. name
      if def or tag then
        local first = def and i - 1 or i
        while first > 1 and lines[first - 1]:find("^%-%-") do first = first - 1 end
        local last = def and i - 1 or i
        while not def and lines[last + 1] and lines[last + 1]:find("^%-%-") do last = last + 1 end
        if first <= i and lines[first] and lines[first]:find("^%-%-%-") then
          return table.concat(lines, "\n", first, last)
        end
        if def then return nil end
      end
    end
  end

  -- The parameters of NAME's definition ("function NAME(a, b)"), or nil
  -- when it is defined elsewhere (an @function tag: C, or a table field).
  local function params_of(name)
    for _, line in ipairs(lines) do
      local args = line:match("^function " .. name:gsub("%.", "%%.") .. "%(([^)]*)%)") or
                   line:match("^local function " .. name .. "%(([^)]*)%)")
      if args then
        local out = {}
        for a in args:gmatch("[%w_]+") do out[#out + 1] = a end
        return out
      end
    end
  end

  -- what a function gives back is documented, except for these, which give nothing
  local RETURNS_NOTHING = { ["Client:invalidate"] = true, ["Client:close"] = true, ["M.webhook"] = true }

  for _, name in ipairs {
    "new", "metrics", "Client:status", "M.prometheus", "Client:issue", "Client:refresh", "Client:revoke",
    "Client:token", "Client:headers",
    "Client:invalidate", "Client:authorize", "Client:exchange", "Client:close", "Client:request",
    "pkce.verifier", "pkce.challenge", "pkce.pair", "pkce.verify",
    "M.memory", "M.shdict", "M.redis", "M.request", "M.keep_fresh",
    "M.verify", "M.sign", "M.dedupe", "M.claim", "M.done", "M.release", "M.webhook", "M.file",
  } do
    it("documents " .. name, function()
      local block = doc_block(name)
      assert.is_string(block, name .. " has no doc comment")
      assert.matches("^%-%-%- %u", block, nil, name .. "'s comment does not start with a sentence")
      for _, p in ipairs(params_of(name) or {}) do      -- every parameter, by name
        assert.is_truthy(block:find("@param " .. p .. "%f[^%w_]") or block:find("@tparam%S* %S+ " .. p .. "%f[^%w_]"),
                         name .. " does not document its parameter " .. p)
      end
      local returns = block:find("@t?return") ~= nil
      assert.are.equal(not RETURNS_NOTHING[name], returns, name .. (returns and " documents a return it has not"
                       or " does not document what it returns"))
    end)
  end

  it("documents both return shapes of the operations", function()
    for _, name in ipairs { "issue", "refresh", "revoke", "authorize", "exchange", "token", "headers", "request" } do
      local block = doc_block("Client:" .. name)
      assert.is_string(block, name)
      assert.is_true(block:find("nil, err", 1, true) ~= nil or block:find("@treturn[2] nil", 1, true) ~= nil,
                     name .. " does not document its failure shape")
    end
  end)

  it("documents both return shapes of webhook verification and dedupe", function()
    for _, name in ipairs { "M.verify", "M.dedupe" } do
      assert.matches("@treturn[2] nil", doc_block(name), 1, true)
    end
  end)

  it("the rockspec installs every Lua module of lua/ and every C file of src/, and no other", function()
    local spec = read("rockspec/nomba-oauth-scm-1.rockspec")
    local listed, files = {}, {}
    for module, path in spec:gmatch('%["([%w%._]+)"%]%s*=%s*"(lua/[^"]+%.lua)"') do
      listed[path] = true
      assert.are.equal(path, "lua/" .. module:gsub("%.", "/") .. ".lua", module)
    end
    for path in io.popen("git ls-files 'lua/*.lua'"):lines() do files[path] = true end
    for path in pairs(files) do assert.is_true(listed[path], path .. " is not in the rockspec") end
    for path in pairs(listed) do assert.is_true(files[path], path .. " is in the rockspec, not in lua/") end
    local csrc = {}
    for path in spec:gmatch('"(src/[%w_]+%.c)"') do csrc[path] = true end
    for path in io.popen("git ls-files 'src/*.c'"):lines() do assert.is_true(csrc[path], path) end
  end)

  it("has one version: C core, Lua module, CHANGELOG, Debian package, user agent", function()
    local v = oauth._VERSION:match("^nomba%.oauth (%d+%.%d+%.%d+)$")
    assert.is_string(v)
    assert.are.equal(require("nomba.oauth.core")._VERSION, oauth._VERSION)
    assert.matches("## " .. v:gsub("%.", "%%."), read("CHANGELOG.md"))
    assert.matches("^lua%-nomba%-oauth %(" .. v:gsub("%.", "%%.") .. "%-%d+%) ", read("debian/changelog"))
    assert.matches('#define NOMBA_VERSION%s+"' .. v:gsub("%.", "%%.") .. '"', read("src/nomba.h"))
    assert.matches("version = \"scm%-1\"", read("rockspec/nomba-oauth-scm-1.rockspec"))
  end)

  local function sh(cmd)
    local p = io.popen("env -u LD_PRELOAD sh -c " .. ("'" .. cmd:gsub("'", "'\\''") .. "'") .. " 2>&1; echo status=$?")
    local out = p:read("*a")
    p:close()
    return out, tonumber(out:match("status=(%d+)%s*$"))
  end

  it("renders Markdown in the LDoc pages: no raw backticks or # headings", function()
    local dir = io.popen("mktemp -d /tmp/nomba-ldoc.XXXXXX"):read("*l")
    local out, status = sh("mkdir -p " .. dir .. "/docs && ldoc -d " .. dir .. " . && ls " .. dir .. "/topics " ..
                           dir .. "/modules")
    assert.equals(0, status, out)
    assert.not_matches("falling back to text", out, 1, true)
    local pages = 0
    for name in out:gmatch("([%w%._]+%.html)") do
      local sub = name:find("^nomba") and "/modules/" or "/topics/"
      local html = read(dir .. sub .. name)
      pages = pages + 1
      assert.is_nil(html:find("`", 1, true), name .. " has a raw backtick")
      assert.is_nil(html:find("\n#+ ") or html:find("<p>#+ "), name .. " has a raw # heading")
      assert.is_nil(html:find("<code>lua\n", 1, true), name .. " has a code block rendered as a paragraph")
      assert.is_nil(html:find("&lt;/code&gt;", 1, true), name .. " shows a code span's tags as text")
      assert.is_truthy(html:find("ldoc-extra.css", 1, true), name .. " lacks the stylesheet with table borders")
    end
    os.execute("rm -rf " .. dir)
    assert.is_true(pages >= 8, "pages rendered: " .. pages)   -- 5 modules, README, API, NOMBA_API
  end)

  it("the module's page: its sections in order, each function in its own, new() listing its options", function()
    local dir = io.popen("mktemp -d /tmp/nomba-ldoc.XXXXXX"):read("*l")
    local out, status = sh("mkdir -p " .. dir .. "/docs && ldoc -d " .. dir .. " . 2>&1")
    assert.equals(0, status, out)
    local html = read(dir .. "/modules/nomba.oauth.html")
    os.execute("rm -rf " .. dir)
    local got, current = {}, nil
    local pos = 1
    while true do
      local s1, e1, title = html:find('<h2 class="section%-header[^"]*"><a name="[^"]*"></a>([^<]*)</h2>', pos)
      local s2, e2, name = html:find('<dt>%s*<a name = "([^"]+)"></a>', pos)
      if not s1 and not s2 then break end
      if s1 and (not s2 or s1 < s2) then
        current = { title = title:gsub("%s+$", ""), items = {} }
        got[#got + 1] = current
        pos = e1 + 1
      else
        assert.is_table(current, name .. " is outside every section")
        current.items[#current.items + 1] = name
        pos = e2 + 1
      end
    end
    assert.are.same({
      { title = "Making a client", items = { "new", "metrics" } },
      { title = "A client's methods", items = { "Client", "Client:token", "Client:headers", "Client:invalidate",
        "Client:close", "Client:status", "Client:issue", "Client:refresh", "Client:revoke", "Client:authorize",
        "Client:exchange", "Client:request", "Client:step", "Client:wait", "Client:start", "Client:sockets" } },
      { title = "PKCE helpers", items = { "pkce.verifier", "pkce.challenge", "pkce.pair", "pkce.verify" } },
      { title = "Errors", items = { "Error" } },
    }, got)
    local new = html:match('<a name = "new"></a>(.-)</dd>')
    assert.is_nil(new:find("see docs/API.md", 1, true))
    assert.matches("<li>", new)
    for _, opt in ipairs { "account_id", "client_secret", "store", "timeout", "transport", "on_token" } do
      assert.is_truthy(new:find(opt, 1, true), "new() does not list " .. opt)
    end
  end)

  it("points only at files of the repository", function()
    for _, doc in ipairs { "README.md", "docs/API.md", "docs/NOMBA_API.md" } do
      local text = read(doc)
      assert.is_nil(text:find("shared/", 1, true), doc .. " mentions shared/")
      for target in text:gmatch("%]%(([^)#]+)[^)]*%)") do
        if not target:find("^https?://") then
          local base = doc:match("^(.*/)") or ""
          local f = io.open(base .. target)
          assert.is_truthy(f, doc .. " links to a missing file: " .. target)
          f:close()
        end
      end
      for path in text:gmatch("`((%a[%w_%-]*)/[%w_%-%./]+%.%a+)`") do
        if path:find("^examples/") or path:find("^docs/") or path:find("^spec/") or path:find("^tools/") or
           path:find("^lua/") or path:find("^bench/") or path:find("^src/") then
          local f = io.open(path)
          assert.is_truthy(f, doc .. " names a missing file: " .. path)
          f:close()
        end
      end
    end
  end)

  it("make install puts the module for every Lua present under PREFIX (in DESTDIR), and the command", function()
    local dir = io.popen("mktemp -d /tmp/nomba-install.XXXXXX"):read("*l")
    local out, status = sh("make -s --no-print-directory install DESTDIR=" .. dir .. " PREFIX=/opt/nomba 2>&1")
    assert.equals(0, status, out)
    local versions = 0
    for v in out:gmatch("install: Lua (%d%.%d) ") do
      versions = versions + 1
      local env = ("cd / && LUA_PATH='%s/opt/nomba/share/lua/%s/?.lua;;' LUA_CPATH='%s/opt/nomba/lib/lua/%s/?.so;;' ")
                  :format(dir, v, dir, v)
      local got = sh(env .. "lua" .. v .. " -e 'local o = require \"nomba.oauth\"; " ..
                     "assert(require(\"nomba.oauth.simulator\")); io.write(o._VERSION)'")
      assert.matches("^" .. oauth._VERSION:gsub("%p", "%%%0"), got, nil, "Lua " .. v)
      if v == "5.1" then                                   -- the 5.1 build serves LuaJIT too
        assert.matches("^" .. oauth._VERSION:gsub("%p", "%%%0"),
                       sh(env .. "luajit -e 'io.write(require(\"nomba.oauth\")._VERSION)'"))
      end
    end
    assert.is_true(versions >= 1, out)
    local newest = out:match("bin/nomba%-oauth %((lua[%d%.]+)%)")
    assert.are.equal("#!/usr/bin/env " .. newest, io.open(dir .. "/opt/nomba/bin/nomba-oauth"):read("*l"))
    out, status = sh("make -s --no-print-directory uninstall DESTDIR=" .. dir .. " PREFIX=/opt/nomba 2>&1 && " ..
                     "find " .. dir .. " -type f")
    assert.equals(0, status, out)
    assert.are.equal("", (out:gsub("status=%d+%s*$", "")))
    os.execute("rm -rf " .. dir)
  end)

  it("make release checks the version, CHANGELOG and tag, then packs a source rock", function()
    local dir = io.popen("mktemp -d /tmp/nomba-release.XXXXXX"):read("*l")
    local git = "git -c user.name=ci -c user.email=ci@localhost -c advice.detachedHead=false "
    local out, status = sh("git clone -q . " .. dir .. "/r")
    assert.equals(0, status, out)
    local r = "cd " .. dir .. "/r && "
    local v = oauth._VERSION:match("(%d+%.%d+%.%d+)$")
    sh(r .. "git tag -d v" .. v .. " >/dev/null 2>&1; true")   -- the clone starts with no tag of its own
    out, status = sh(r .. "sh tools/release.sh 9.9.9")
    assert.equals(1, status)
    assert.matches("src/nomba.h says " .. v .. ", not 9.9.9", out, 1, true)
    -- a refused release leaves nothing behind: no build/release, no temporary directory
    assert.is_nil(io.open(dir .. "/r/build/release/nomba-oauth-9.9.9-1.rockspec"))
    local gone = os.execute("test -e " .. dir .. "/r/build/release")   -- (5.1 and LuaJIT: a number)
    assert.is_true(gone == false or gone == nil or (type(gone) == "number" and gone ~= 0))
    -- a release needs its CHANGELOG heading
    sh(r .. "sed -i '0,/^## .*/s//## Unreleased/' CHANGELOG.md && " .. git .. "commit -qam wip")
    out, status = sh(r .. "sh tools/release.sh " .. v)
    assert.equals(1, status)
    assert.matches("the first heading of CHANGELOG.md is '## Unreleased'", out, 1, true)
    sh(r .. "sed -i '0,/^## .*/s//## " .. v .. " (2026-11-28)/' CHANGELOG.md && " .. git .. "commit -qam release")
    out, status = sh(r .. "sh tools/release.sh " .. v)
    assert.equals(1, status)
    assert.matches("there is no tag v" .. v, out, 1, true)
    sh(r .. git .. "tag -a v" .. v .. " -m v" .. v)
    out, status = sh(r .. "sh tools/release.sh " .. v)
    assert.equals(0, status, out)
    local spec = read(dir .. "/r/build/release/nomba-oauth-" .. v .. "-1.rockspec")
    assert.matches('version = "' .. v .. '-1"', spec, 1, true)
    assert.matches('tag = "v' .. v .. '"', spec, 1, true)
    assert.matches('url = "git+https://', spec, 1, true)
    -- the source rock carries the published rockspec and the tagged sources
    out, status = sh("unzip -l " .. dir .. "/r/build/release/nomba-oauth-" .. v .. "-1.src.rock")
    assert.equals(0, status, out)
    assert.matches("nomba-oauth-" .. v .. "-1.rockspec", out, 1, true)
    assert.matches("src/client.c", out, 1, true)
    local name = "nomba-oauth-" .. v .. "-1"
    out = sh("unzip -p " .. dir .. "/r/build/release/" .. name .. ".src.rock " .. name .. ".rockspec")
    assert.matches('url = "git+https://', out, 1, true)
    os.execute("rm -rf " .. dir)
  end)
end)
