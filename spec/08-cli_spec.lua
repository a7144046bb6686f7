-- The nomba-oauth command, driven as a subprocess against the simulator.
local cjson = require "cjson"
local H = require "helpers"

local LUA = arg and arg[-1] or "lua5.4"

local CACHE

local function run(args, env, stdin)
  local sim = H.sim()
  local vars = {
    NOMBA_ACCOUNT_ID = sim.client.account_id, NOMBA_CLIENT_ID = sim.client.client_id,
    NOMBA_CLIENT_SECRET = sim.client.client_secret, NOMBA_BASE_URL = sim.url,
    NOMBA_CAFILE = sim.cafile, XDG_CACHE_HOME = CACHE,
  }
  for k, v in pairs(env or {}) do vars[k] = v end
  local parts = {}
  for k, v in pairs(vars) do parts[#parts + 1] = k .. "='" .. v .. "'" end
  local feed = stdin and ("printf '%s\\n' '" .. stdin .. "' | ") or "</dev/null "
  local errfile = os.tmpname()
  local cmd = feed .. "env " .. table.concat(parts, " ") .. " " .. LUA .. " bin/nomba-oauth " .. args ..
              " 2>" .. errfile .. "; echo \"exit=$?\""
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  local f = io.open(errfile)
  local err = f:read("*a")
  f:close()
  os.remove(errfile)
  local code = tonumber(out:match("exit=(%d+)%s*$"))
  return code, out:gsub("exit=%d+%s*$", ""), err
end

describe("nomba-oauth CLI", function()
  before_each(function()
    H.reset()
    CACHE = io.popen("mktemp -d /tmp/nomba-cli-cache.XXXXXX"):read("*l")   -- each test its own session cache
  end)
  after_each(function() os.execute("rm -rf " .. CACHE) end)

  it("issue prints the whole token (it exists to print it); --redact shortens it", function()
    local code, out = run("issue")
    assert.are.equal(0, code)
    local t = out:match("access_token%s+(%S+)")
    assert.is_true(#t > 300)
    assert.are.equal(200, H.protected { Authorization = "Bearer " .. t, accountId = H.sim().client.account_id })
    assert.matches("expires_in%s+1800", out)
    local c2, out2 = run("issue --redact")
    assert.are.equal(0, c2)
    assert.matches("access_token%s+eyJhbG…%(%d+ chars%)", out2)
    assert.matches("refresh_token%s+%w+…%(%d+ chars%)", out2)
    local _, out3 = run("token --redact")
    assert.matches("^eyJhbG…%(%d+ chars%)\n$", out3)
  end)

  it("every session it starts or rotates goes to the cache; issue warns before ending a cached one", function()
    local code, out, err = run("issue --json")
    assert.are.equal(0, code, err)
    assert.are.equal("", err)                                  -- nothing cached yet: no warning
    local t = cjson.decode(out)
    local _, tok = run("token")
    assert.are.equal(t.access_token .. "\n", tok)              -- the issued session, reused
    assert.are.equal(1, H.count("issue"))
    local c2, out2, err2 = run("refresh --json", { NOMBA_REFRESH_TOKEN = t.refresh_token,
                                                   NOMBA_ACCESS_TOKEN = t.access_token })
    assert.are.equal(0, c2, err2)
    local t2 = cjson.decode(out2)
    assert.are_not.equal(t.refresh_token, t2.refresh_token)
    local _, tok2 = run("headers --json")
    assert.are.equal("Bearer " .. t2.access_token, cjson.decode(tok2).Authorization)   -- the rotated pair
    assert.are.equal(1, H.count("issue"))
    local c3, out3, err3 = run("issue --json")
    assert.are.equal(0, c3)
    assert.matches("warning: a login starts a new Nomba session, which ends the cached one", err3, 1, true)
    local _, tok3 = run("token")
    assert.are.equal(cjson.decode(out3).access_token .. "\n", tok3)
    assert.are.equal(2, H.count("issue"))
  end)

  it("issue --json --show-secrets prints the whole token as JSON", function()
    local code, out = run("issue --json --show-secrets")
    assert.are.equal(0, code)
    local t = cjson.decode(out)
    assert.is_true(#t.access_token > 300)
    assert.are.equal("Bearer", t.token_type)
    -- and the printed token is the one the simulator issued: it works
    assert.are.equal(200, H.protected { Authorization = "Bearer " .. t.access_token,
                                        accountId = H.sim().client.account_id })
  end)

  it("refresh and revoke take tokens from the environment or standard input, never argv", function()
    local _, out = run("issue --json --show-secrets")
    local t = cjson.decode(out)
    local code, out2, err2 = run("refresh --json --show-secrets", { NOMBA_REFRESH_TOKEN = t.refresh_token,
                                                                   NOMBA_ACCESS_TOKEN = t.access_token })
    assert.are.equal(0, code, err2)
    assert.are.equal("", err2)
    local t2 = cjson.decode(out2)
    local code3, out3, err3 = run("refresh - --json", { NOMBA_ACCESS_TOKEN = t2.access_token }, t2.refresh_token)
    assert.are.equal(0, code3, err3)
    assert.is_true(#cjson.decode(out3).access_token > 300)
    assert.are.equal(0, (run("revoke -", nil, t.access_token)))
    assert.are.equal(0, (run("revoke", { NOMBA_ACCESS_TOKEN = t2.access_token })))
    assert.are.equal(2, #H.log("revoke"))
    -- argv still works, but warns that it is public
    local _, out4 = run("issue --json --show-secrets")
    local code5, _, err5 = run("revoke " .. cjson.decode(out4).access_token)
    assert.are.equal(0, code5)
    assert.matches("visible to other users", err5)
    assert.matches("deprecated", err5)
  end)

  it("redacts an explicit token the server echoes back", function()
    local _, out = run("issue --json --show-secrets")
    local t = cjson.decode(out)
    for _, echo in ipairs { t.refresh_token, t.refresh_token:sub(1, -2), t.refresh_token:sub(2) } do
      assert(H.sim():fault { endpoint = "refresh", status = 400,
                             body = { code = "02", description = "bad token " .. echo } })
      local code, _, err = run("refresh -", { NOMBA_ACCESS_TOKEN = t.access_token }, t.refresh_token)
      assert.are.equal(1, code)
      assert.matches("bad token %[redacted%]", err)
      assert.is_nil(err:find(t.refresh_token:sub(5, 20), 1, true), err)
    end
  end)

  it("token prints a usable token; pkce prints a pair", function()
    local code, out = run("token --show-secrets")
    assert.are.equal(0, code)
    assert.matches("^eyJ", out)
    local c2, out2 = run("pkce --json")
    assert.are.equal(0, c2)
    local p = cjson.decode(out2)
    assert.are.equal(require("nomba.oauth").pkce.challenge(p.code_verifier), p.code_challenge)
    local _, out3 = run("pkce 128")
    assert.matches("code_verifier  " .. ("[%w%-_]"):rep(128) .. "\n", out3)
  end)

  it("exit code 1 and one line on a Nomba failure, never the secret", function()
    local code, out, err = run("issue", { NOMBA_CLIENT_SECRET = "wrong" })
    assert.are.equal(1, code)
    assert.are.equal("", out)
    assert.are.equal('nomba.oauth: issue failed: HTTP 401, Nomba code "01": Invalid client credentials\n', err)
  end)

  it("webhook sign and verify, the key from the environment", function()
    local ev = '{"event_type":"payment_success","requestId":"r-9","data":{"merchant":{"userId":"u"},' ..
               '"transaction":{"transactionId":"t-1","type":"vact_transfer"}}}'
    local code, headers = run("webhook sign --key-env WH_KEY", { WH_KEY = "k-123" }, ev)
    assert.are.equal(0, code)
    assert.matches("nomba%-signature: [%w+/]+=\n", headers)
    local delivery = headers .. "\n" .. ev
    local c2, out2, err2 = run("webhook verify --key-env WH_KEY --json", { WH_KEY = "k-123" }, delivery)
    assert.are.equal(0, c2, err2)
    assert.are.equal("r-9", cjson.decode(out2).requestId)
    local c3, _, err3 = run("webhook verify --key-env WH_KEY", { WH_KEY = "other" }, delivery)
    assert.are.equal(1, c3)
    assert.matches("bad_signature", err3)
    assert.is_nil(err3:find("other", 1, true))
    -- under --json the refusal is a JSON object too
    local c4, _, err4 = run("webhook verify --key-env WH_KEY --json", { WH_KEY = "other" }, delivery)
    assert.are.equal(1, c4)
    local e = cjson.decode(err4).error
    assert.are.equal("webhook", e.kind)
    assert.are.equal("bad_signature", e.reason)
    assert.are.equal(2, (run("webhook verify", nil, delivery)))
  end)

  it("token and headers reuse one cached session: ten runs, one issue", function()
    local first
    for i = 1, 10 do
      local code, out, err = run("token --show-secrets")
      assert.are.equal(0, code, err)
      first = first or out
      assert.are.equal(first, out, "run " .. i)
    end
    assert.are.equal(1, H.count("issue"))
    local code, out = run("headers --json --show-secrets")
    assert.are.equal(0, code)
    assert.are.equal("Bearer " .. first:gsub("%s+$", ""), cjson.decode(out).Authorization)
    assert.are.equal(1, H.count("issue"))
    -- the cache is sealed: the token is not in it
    local p = io.popen("cat " .. CACHE .. "/nomba-oauth/* 2>/dev/null")
    local raw = p:read("*a")
    p:close()
    assert.matches("n1%.", raw)
    assert.is_nil(raw:find(first:sub(1, 40), 1, true))
    assert.matches("^drwx%-%-%-%-%-%-", io.popen("ls -ld " .. CACHE .. "/nomba-oauth"):read("*l"))
    -- revoke drops the cached session: the next run logs in again
    assert.are.equal(0, (run("revoke")))
    assert.are.equal(1, H.count("revoke"))
    local c2, out2 = run("token --show-secrets")
    assert.are.equal(0, c2)
    assert.are_not.equal(first, out2)
    assert.are.equal(2, H.count("issue"))
    -- --no-cache logs in every time
    for _ = 1, 3 do assert.are.equal(0, (run("token --no-cache"))) end
    assert.are.equal(5, H.count("issue"))
  end)

  it("request: calls a Nomba API with the session's token", function()
    local code, out = run("request GET /v1/accounts/balance --no-cache")
    assert.are.equal(0, code)
    assert.matches("^HTTP 200\n", out)
    assert.are.equal("1000.00", cjson.decode(out:match("\n(.*)$")).data.balance)
    local c2, out2 = run("request POST /v1/checkout/order --no-cache --json '{\"amount\":1500}' --json")
    assert.are.equal(0, c2)
    local r = cjson.decode(out2)
    assert.are.equal(200, r.status)
    assert.matches("^https://checkout", r.body.data.checkoutLink)
    local c3, out3 = run("request GET /v1/transactions/accounts --no-cache --query page=3 --query limit=2")
    assert.are.equal(0, c3)
    assert.are.equal(3, cjson.decode(out3:match("\n(.*)$")).data.page)
    local c4, _, err4 = run("request GET /v1/accounts/balance --no-cache --account-id someone-else --json")
    assert.are.equal(1, c4)
    assert.are.equal(401, cjson.decode(err4).error.status)
    assert.are.equal(2, (run("request TRACE /x --no-cache")))
  end)

  it("request: sends --data as written, after judging it a JSON object or array", function()
    -- a decode and encode would have sent 1.2345678901235e+19, and {} for []
    local body = '{"amount":"1500.00","ref":12345678901234567890, "items":[]}'
    assert.are.equal(0, (run("request POST /v1/checkout/order --no-cache --data '" .. body .. "'")))
    local sent = H.log("order")
    assert.are.equal(body, sent[#sent].body)
    assert.are.equal(1, (run("request POST /v1/checkout/order --no-cache --data '[]'")))   -- Nomba wants an object
    sent = H.log("order")
    assert.are.equal("[]", sent[#sent].body)
    for _, bad in ipairs { '{"a":NaN}', '"text"', '{"a":1', "12" } do
      local code, _, err = run("request POST /v1/checkout/order --no-cache --data '" .. bad .. "'")
      assert.are.equal(2, code, bad)
      assert.matches("--data must be a JSON object or array", err, 1, true)
    end
    assert.are.equal(2, #H.log("order"))
  end)

  it("documents every flag and environment variable in help and the README", function()
    local f = assert(io.open("bin/nomba-oauth"))
    local src = f:read("*a")
    f:close()
    f = assert(io.open("README.md"))
    local readme = f:read("*a")
    f:close()
    local _, help = run("help")
    local flags, vars = 0, 0
    for flag in src:gmatch('a == "(%-%-[%w%-]+)"') do
      flags = flags + 1
      assert.is_truthy(help:find(flag, 1, true), "help lacks " .. flag)
      assert.is_truthy(readme:find(flag, 1, true), "the README lacks " .. flag)
    end
    local names = { "NOMBA_SIM_NGINX", "NOMBA_REFRESH_TOKEN" }
    for name in src:gmatch('getenv%("([%w_]+)"%)') do names[#names + 1] = name end
    for name in src:gmatch('"(NOMBA_[%w_]+)"') do names[#names + 1] = name end
    for _, name in ipairs(names) do
      vars = vars + 1
      assert.is_truthy(help:find(name, 1, true), "help lacks " .. name)
      assert.is_truthy(readme:find("`" .. name .. "`", 1, true), "the README lacks " .. name)
    end
    assert.is_true(flags >= 14 and vars >= 8, flags .. " flags, " .. vars .. " variables")
  end)

  it("--version, help, JSON errors under --json, ISO expiry, a clear message for a missing secret", function()
    local code, out = run("--version")
    assert.are.equal(0, code)
    assert.are.equal(require("nomba.oauth")._VERSION .. "\n", out)
    local c2, out2 = run("help webhook")
    assert.are.equal(0, c2)
    assert.matches("usage: nomba%-oauth webhook verify", out2)
    local c3, _, err3 = run("issue --json", { NOMBA_CLIENT_SECRET = "wrong" })
    assert.are.equal(1, c3)
    local e = cjson.decode(err3)
    assert.are.same({ "api", 401, "01", "issue" }, { e.error.kind, e.error.status, e.error.code, e.error.op })
    local c4, out4 = run("issue")
    assert.are.equal(0, c4)
    assert.matches("expires_at%s+%d+ %(%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ%)", out4)
    local _, out5 = run("issue --json")
    assert.matches('"expires_at":%d+[,}]', out5)              -- a whole number, not 1795836599.0
    assert.matches('"expires_at_iso":"%d%d%d%d%-', out5)
    local c6, _, err6 = run("token", { NOMBA_CLIENT_SECRET = "" })
    assert.are.equal(2, c6)
    assert.matches("set NOMBA_CLIENT_SECRET", err6)
  end)

  it("simulate stops nginx and removes its directory on SIGTERM, even when its parent never reaps it", function()
    local port = require("nomba.oauth.simulator").free_port()
    -- the parent of simulate is a shell that becomes `sleep` and never reaps
    -- it: once killed, simulate stays a zombie (as under an init that reaps
    -- late), which `kill -0` still finds
    local p = io.popen("echo $$; " .. LUA .. " bin/nomba-oauth simulate --port " .. port ..
                       " 2>&1 & echo $!; exec sleep 60")
    local parent = p:read("*l")
    local pid = p:read("*l")
    local banner = p:read("*l")
    local nginx_pid = banner and banner:match("%(pid (%d+)%)")
    assert.is_string(nginx_pid, tostring(banner))
    local dir = p:read("*l"):match("CA file:%s+(.*)/ca%.crt$")
    assert.is_string(dir)
    H.sleep(0.5)                                   -- it is waiting by now (past its banner and watchdog)
    os.execute("kill -TERM " .. pid)
    local alive = require("nomba.oauth.simulator.nginx").alive   -- a zombie has ended
    local gone = false
    for _ = 1, 100 do
      if not alive(nginx_pid) then gone = true break end
      H.sleep(0.05)
    end
    os.execute("kill " .. parent)
    p:close()
    assert.is_true(gone, "nginx outlived the simulate command")
    for _ = 1, 40 do
      if not io.open(dir .. "/ca.crt") then break end
      H.sleep(0.05)
    end
    assert.is_nil(io.open(dir .. "/ca.crt"), "the simulator's directory is still there")
    -- and nothing of it is left running (it waited in a `sleep` child before, which outlived it)
    local plain = "env -u LD_PRELOAD "             -- (ps hangs under make asan's preload)
    local left = io.popen(plain .. "ps -eo ppid=,args= | " .. plain .. "awk '$1 == " .. pid .. "'"):read("*a")
    assert.are.equal("", left)
    assert.are.equal("", io.popen(plain .. "pgrep -f 'sleep 214748364[7]'"):read("*a"))
  end)

  it("usage errors are JSON under --json; -V and version; a bad --timestamp; revoke with nothing cached", function()
    local code, _, err = run("issue --bogus --json")
    assert.are.equal(2, code)
    local e = cjson.decode(err).error
    assert.are.same({ "usage", "unknown option --bogus" }, { e.kind, e.message })
    local c2, _, err2 = run("pkce 7 --json")
    assert.are.equal(2, c2)
    assert.are.equal("usage", cjson.decode(err2).error.kind)
    for _, a in ipairs { "-V", "version", "--version" } do
      local c, out = run(a)
      assert.are.equal(0, c, a)
      assert.are.equal(require("nomba.oauth")._VERSION .. "\n", out)
    end
    local ev = '{"event_type":"payment_success","requestId":"r-1","data":{}}'
    for _, ts in ipairs { "yesterday", "2026-12-02T18:58:00", "", "1e9" } do
      local c, _, e3 = run("webhook sign --key-env K --timestamp '" .. ts .. "'", { K = "k" }, ev)
      assert.are.equal(2, c, ts)
      assert.matches("--timestamp must be RFC 3339", e3, 1, true)
    end
    for _, ts in ipairs { "2026-12-02T18:58:00Z", "2026-12-02T18:58:00+01:00", "1796302000" } do
      local c, out, e4 = run("webhook sign --key-env K --timestamp " .. ts, { K = "k" }, ev)
      assert.are.equal(0, c, e4)
      assert.matches("nomba%-timestamp: " .. ts:gsub("%p", "%%%0"), out)
    end
    local c5, _, err5 = run("revoke")
    assert.are.equal(2, c5)
    assert.matches("nothing to revoke: no session is cached", err5, 1, true)
    assert.are.equal(0, #H.log("revoke"))
  end)

  it("a TLS failure says to give the CA; --query repeated keeps every value", function()
    local code, _, err = run("token --no-cache", { NOMBA_CAFILE = "/etc/ssl/certs/ca-certificates.crt" })
    assert.are.equal(1, code)
    assert.matches("--cafile FILE or $NOMBA_CAFILE", err, 1, true)
    local c2, _, err2 = run("token --no-cache --json", { NOMBA_CAFILE = "/etc/ssl/certs/ca-certificates.crt" })
    assert.are.equal(1, c2)
    local e = cjson.decode(err2).error
    assert.are.equal("tls", e.kind)
    assert.matches("--cafile", e.hint, 1, true)
    local c3 = run("request GET /v1/transactions/accounts --no-cache --query status=a --query status=b " ..
                   "--query page=2")
    assert.are.equal(0, c3)
    local sent = H.log("transactions")
    assert.matches("status=a&status=b$", sent[#sent].uri:gsub("page=2&", ""))
    assert.matches("?page=2&status=a&status=b", sent[#sent].uri, 1, true)
  end)

  it("exit code 2 on usage errors", function()
    assert.are.equal(2, (run("")))
    assert.are.equal(2, (run("frobnicate")))
    assert.are.equal(2, (run("issue --bogus")))
    assert.are.equal(2, (run("pkce 42")))
    assert.are.equal(2, (run("refresh")))
    assert.are.equal(2, (run("refresh", { NOMBA_REFRESH_TOKEN = "rt-without-its-access-token" })))
    assert.are.equal(2, (run("revoke -", nil, "")))
    assert.are.equal(2, (run("issue", { NOMBA_ACCOUNT_ID = "" })))
    local code, out = run("issue --help")
    assert.are.equal(0, code)
    assert.matches("usage: nomba%-oauth issue", out)
  end)
end)
