-- client:request: authorized calls to Nomba's APIs against the simulator's
-- resources, over real HTTPS: the answer's shape, the 401 race (one renewal,
-- one retry, for 8 coroutines and for 4 nginx workers), no double charge, retries, rate limits, per-call accountId,
-- query encoding, refusals, every error kind, no secret anywhere, the
-- non-blocking mode, and the OpenResty transport.
local oauth = require "nomba.oauth"
local cjson = require "cjson"
local H = require "helpers"

local SUB = "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"

describe("client:request", function()
  local sim
  before_each(function()
    sim = H.sim()
    H.reset()
  end)

  it("answers status, lower-case headers, body, json, code, data and the rate limit", function()
    local c = H.client {}
    local res = assert(c:request { path = "/v1/accounts/balance" })
    assert.are.equal(200, res.status)
    assert.matches("application/json", res.headers["content-type"], 1, true)
    assert.are.equal("00", res.code)
    assert.are.equal("1000.00", res.data.balance)
    assert.are.equal(res.data.balance, cjson.decode(res.body).data.balance)
    assert.are.same({ limit = 40, remaining = 39, window = 1 }, res.rate_limit)
    -- the call carried the client's bearer and accountId
    local log = H.log("protected")
    assert.matches("^Bearer eyJ", log[1].headers.Authorization)
    assert.are.equal(sim.client.account_id, log[1].headers.accountId)
  end)

  it("decodes json and data on their first read; the code that decides is read without decoding", function()
    local c = H.client { retries = 0 }
    local res = assert(c:request { path = "/v1/accounts/balance" })
    assert.is_nil(rawget(res, "json"))                  -- nobody has read it: not decoded
    assert.are.equal("00", res.code)
    assert.are.equal("1000.00", res.data.balance)       -- the first read decodes json and data
    assert.is_nil(getmetatable(res))                    -- then the result is a plain table
    assert.are.equal(res.data, rawget(res, "json").data)
    res = assert(c:request { path = "/v1/accounts/balance" })
    local seen = {}
    for k in pairs(res) do seen[k] = true end
    if _VERSION == "Lua 5.1" then                       -- no __pairs (LuaJIT, 5.1): after a first read
      assert.is_nil(seen.json)
      assert.is_table(res.json)
    else                                                -- __pairs decodes first
      assert.is_true(seen.json and seen.data)
    end
    -- a 2xx whose code is not "00" is an api error though nobody read json; its response decodes
    assert(sim:fault { endpoint = "protected", status = 200, body = '{"code":"\\u00301","description":"Declined"}' })
    local _, err = c:request { path = "/v1/accounts/balance" }
    H.assert_error(err, { kind = "api", status = 200, code = "01" })
    assert.are.equal("Declined", err.message)
    assert.are.equal("Declined", err.response.json.description)
    -- an answer that is not JSON has neither, and no metatable
    assert(sim:fault { endpoint = "protected", status = 200, body = "plain",
                       headers = { ["Content-Type"] = "text/plain" } })
    res = assert(c:request { path = "/v1/accounts/balance" })
    assert.is_nil(getmetatable(res))
    assert.is_nil(res.json)
    assert.is_nil(res.code)
  end)

  it("remembers the checked arguments of a call with a path alone, never for a call with more", function()
    local c = H.client {}
    local st = require("nomba.oauth.core").state(c)
    assert.are.equal(sim.client.account_id, assert(c:request { path = "/v1/accounts/balance" }).data.accountId)
    local kept = st.path_args and st.path_args["/v1/accounts/balance"]
    assert.is_table(kept)                                       -- remembered ...
    assert(c:request { path = "/v1/accounts/balance" })
    assert.are.equal(kept, st.path_args["/v1/accounts/balance"])  -- ... and used again, not made again
    assert(c:request { path = "/v1/accounts/balance?q=1", account_id = SUB })
    assert(c:request { path = "/v1/accounts/balance?q=2", timeout = 5 })
    assert.is_nil(st.path_args["/v1/accounts/balance?q=1"])    -- a call with more is never remembered
    assert.is_nil(st.path_args["/v1/accounts/balance?q=2"])
    assert.are.equal(SUB, assert(c:request { path = "/v1/accounts/balance", account_id = SUB }).data.accountId)
    assert.are.equal(sim.client.account_id, assert(c:request { path = "/v1/accounts/balance" }).data.accountId)
    for i = 1, 70 do assert(c:request { path = "/v1/accounts/balance?n=" .. i }) end   -- past what it keeps
    local n = 0
    for _ in pairs(st.path_args) do n = n + 1 end
    assert.is_true(n >= 1 and n <= 64, n)                       -- bounded
    assert.are.equal(sim.client.account_id, assert(c:request { path = "/v1/accounts/balance" }).data.accountId)
    local inherits = setmetatable({ path = "/v1/accounts/balance" }, { __index = { account_id = SUB } })
    assert.are.equal(SUB, assert(c:request(inherits)).data.accountId)      -- its options come through __index
    assert.has_error(function() c:request { path = "/v1/accounts balance" } end)
  end)

  it("renews a token in its refresh window before the call; non-blocking, sends the valid one", function()
    assert(sim:config { lifetime = 4 })            -- fresh for 2 s (half a short lifetime), valid for 4
    local c = H.client {}
    local a = assert(c:token())
    H.sleep(2.3)
    assert(c:request { path = "/v1/accounts/balance" })
    assert.are.equal(1, H.count("refresh"))        -- renewed first (the blocking runner waits for it)
    assert.are_not.equal(a, assert(c:token()))
    local nb = H.client { nonblocking = true }
    local t = assert(nb:token())
    H.sleep(2.3)
    local res
    assert(nb:start("request", { path = "/v1/accounts/balance" }, function(r) res = r end))
    while nb:step() do nb:wait(0.05) end
    assert.are.equal(200, res.status)
    local sent = H.log("protected")
    local h = sent[#sent].headers
    assert.are.equal("Bearer " .. t, h.Authorization or h.authorization)   -- the valid token, at once
    c:close()
    nb:close()
  end)

  it("POSTs JSON and encodes the query; a per-call accountId acts for a sub-account", function()
    local c = H.client {}
    local res = assert(c:request { method = "POST", path = "/v1/checkout/order",
                                   json = { order = { amount = "1500.00", orderReference = "ref-1" } } })
    assert.are.equal("https://checkout.nomba.com/pay/ref-1", res.data.checkoutLink)
    -- numbers lua-cjson writes as they are go out as they are (noise past the 15th digit aside)
    assert(c:request { method = "POST", path = "/v1/checkout/order",
                       json = { order = { amount = 150000, fee = 0.1 + 0.2, cap = 1e20, orderReference = "ref-2" } } })
    local sent = require("cjson").decode(H.log("order")[2].body).order
    assert.are.same({ 150000, 0.3, 1e20 }, { sent.amount, sent.fee, sent.cap })
    res = assert(c:request { path = "/v1/transactions/accounts", query = { page = 2, limit = 3, q = "a b&c=d/é" } })
    assert.are.equal(3, #res.data.results)
    assert.are.equal("a b&c=d/é", res.data.query.q)
    assert.are.equal("/v1/transactions/accounts?limit=3&page=2&q=a%20b%26c%3Dd%2F%C3%A9",
                     H.log("transactions")[1].uri)
    -- a whole number is written the same on every Lua (5.3+ would write 4 / 2 as "2.0")
    assert(c:request { path = "/v1/transactions/accounts", query = { page = 4 / 2, limit = 2.5 } })
    assert.are.equal("/v1/transactions/accounts?limit=2.5&page=2", H.log("transactions")[2].uri)
    -- a list value: its key once per value, in order
    assert(c:request { path = "/v1/transactions/accounts", query = { status = { "b", "a", 3 }, page = 1 } })
    assert.are.equal("/v1/transactions/accounts?page=1&status=b&status=a&status=3", H.log("transactions")[3].uri)
    res = assert(c:request { path = "/v1/accounts/balance", account_id = SUB })
    assert.are.equal(SUB, res.data.accountId)
  end)

  it("rides one TLS connection for the token, its renewal and the calls (libcurl)", function()
    local c = H.client {}
    assert(c:token())
    for _ = 1, 3 do assert(c:request { path = "/v1/accounts/balance" }) end
    c:invalidate()
    assert(c:request { path = "/v1/transactions/accounts" })   -- renews, then calls
    local conns, n = {}, 0
    for _, r in ipairs(H.log()) do
      if not conns[r.connection] then conns[r.connection], n = true, n + 1 end
    end
    assert.are.equal(6, #H.log())
    assert.are.equal(2, H.count("issue") + H.count("refresh"))
    assert.are.equal(1, n, "the token and the calls took " .. n .. " connections")
  end)

  it("a 401 invalidates the token sent, renews once, retries once, never loops", function()
    local events = {}
    local c = H.client { on_event = function(ev) events[#events + 1] = ev end }
    local t1 = assert(c:token())
    assert(H.client {}:revoke(t1))                 -- revoked elsewhere
    local res = assert(c:request { path = "/v1/accounts/balance" })
    assert.are.equal(200, res.status)
    assert.are_not.equal(t1, c:token())
    -- one renewal through the normal path: the revoked session's refresh is
    -- refused, so it issues afresh; then one retry
    assert.are.equal(1, H.count("refresh"))
    assert.are.equal(2, H.count("issue"))
    assert.are.equal(2, H.count("protected"))
    -- a 401 that renewing cannot cure: two calls, then the error
    local _, err = c:request { path = "/v1/accounts/balance", account_id = "someone-else" }
    H.assert_error(err, { kind = "api", op = "request", status = 401 })
    assert.are.equal(401, err.response.status)
    assert.are.equal(4, H.count("protected"))
    local kinds = {}
    for _, ev in ipairs(events) do kinds[#kinds + 1] = ev.op .. ":" .. tostring(ev.status) end
    assert.are.equal("issue:200,request:401,refresh:401,issue:200,request:200," ..
                     "request:401,refresh:200,request:401", table.concat(kinds, ","))
  end)

  it("8 coroutines hitting a 401 together make one renewal", function()
    local curl = H.curl_transport(sim.cafile, false)
    local c = H.client { transport = function(req)
      if coroutine.isyieldable() then coroutine.yield("io") end   -- as a cosocket would
      return curl(req)
    end }
    local t1 = assert(c:token())
    assert(H.client {}:revoke(t1))
    local cos, results = {}, {}
    for i = 1, 8 do
      cos[i] = coroutine.create(function() results[i] = assert(c:request { path = "/v1/accounts/balance" }) end)
    end
    local alive = true
    while alive do                                -- a scheduler: resume each until all are done
      alive = false
      for _, co in ipairs(cos) do
        if coroutine.status(co) ~= "dead" then
          assert(coroutine.resume(co))
          alive = true
        end
      end
    end
    for i = 1, 8 do assert.are.equal(200, results[i].status) end
    -- one renewal for the eight: the revoked session's refresh, refused, then one issue
    assert.are.equal(1, H.count("refresh"))
    assert.are.equal(2, H.count("issue"))
  end)

  it("4 nginx workers hitting a 401 together make one renewal (through the shared dict's lock)", function()
    local a = H.openresty_app { workers = 4 }
    local t = H.sh("curl -s --max-time 10 " .. a.url .. "/token"):gsub("%s+$", "")
    assert.are.equal(1, H.count("issue"))
    assert(H.client {}:revoke(t))                 -- every worker holds t (the shared token): now refused
    local N, urls = 16, {}
    for i = 1, N do urls[i] = "'" .. a.url .. "/request_together?n=" .. N .. "'" end
    local out = H.sh("curl -s --no-progress-meter --max-time 20 --parallel --parallel-immediate " ..
                     "--parallel-max " .. N .. " " .. table.concat(urls, " "))
    a:stop()
    local workers, answers = {}, 0
    for line in out:gmatch("[^\n]+") do
      local r = assert(cjson.decode(line), line)
      assert.are.equal(200, r.status, r.error)
      workers[r.worker] = true
      answers = answers + 1
    end
    assert.are.equal(N, answers)
    local spread = 0
    for _ in pairs(workers) do spread = spread + 1 end
    assert.is_true(spread >= 2, "the requests all landed in one worker")
    -- one renewal for all of them: the revoked session's refresh, refused, then one issue
    assert.are.equal(1, H.count("refresh"))
    assert.are.equal(2, H.count("issue"))
  end)

  it("never sends a POST twice: a drop after the server processed it is not retried", function()
    assert(sim:fault { endpoint = "order", after = true })
    local events = {}
    local c = H.client { retries = 2, on_event = function(ev) events[#events + 1] = ev end }
    local _, err = c:request { method = "POST", path = "/v1/checkout/order", json = { amount = 1500 } }
    assert.are.equal("request", err.op)
    assert.is_true(err.maybe_sent)
    assert.are.equal(1, assert(sim:counts()).orders)   -- one order, not two
    assert.are.equal(1, H.count("order"))
    assert.are.equal(1, #events - 1)                    -- one attempt (after the issue)
    -- the same with idempotent = true is retried
    assert(sim:fault { endpoint = "order", after = true })
    local res = assert(c:request { method = "POST", path = "/v1/checkout/order", json = { amount = 1 },
                                   idempotent = true })
    assert.are.equal(200, res.status)
  end)

  it("retries a GET through 503s; a POST only on 429/503 with Retry-After", function()
    local c = H.client { retries = 2 }
    assert(c:token())
    assert(sim:fault { endpoint = "protected", status = 503, body = "busy", content_type = "text/plain", times = 2 })
    assert(c:request { path = "/v1/accounts/balance" })
    assert.are.equal(3, H.count("protected"))
    assert(sim:fault { endpoint = "order", status = 503, body = "busy", content_type = "text/plain" })
    local _, err = c:request { method = "POST", path = "/v1/checkout/order", json = { amount = 1 } }
    H.assert_error(err, { kind = "http", status = 503 })
    assert.are.equal(1, H.count("order"))
    assert(sim:fault { endpoint = "order", status = 429, headers = { ["Retry-After"] = "0" }, body = "" })
    assert(c:request { method = "POST", path = "/v1/checkout/order", json = { amount = 1 } })
    assert.are.equal(3, H.count("order"))
  end)

  it("waits out a spent rate-limit window; rate_limited where it cannot wait", function()
    assert(sim:config { rate_limit = 2 })
    -- the non-blocking client cannot wait: once a window is spent, rate_limited
    local nb = H.client { nonblocking = true }
    assert(nb:token())
    local err
    for _ = 1, 6 do
      local ok, e = nb:start("request", { path = "/v1/accounts/balance" }, function() end)
      if not ok then
        err = e
        break
      end
      while nb:step() do nb:wait(0.05) end
    end
    H.assert_error(err, { kind = "rate_limited", op = "request" })
    assert.is_true(err.retry_after > 0 and err.retry_after <= 1)
    -- a blocking client waits the window out instead (and a 429's Retry-After), and is answered
    local c = H.client { retries = 2 }
    local res
    for _ = 1, 4 do
      res = assert(c:request { path = "/v1/accounts/balance" })
      if res.rate_limit.remaining == 0 then break end
    end
    assert.are.equal(0, res.rate_limit.remaining)
    res = assert(c:request { path = "/v1/accounts/balance" })
    assert.are.equal(200, res.status)
  end)

  it("never waits a rate-limit window longer than the Retry-After cap: rate_limited", function()
    local c = H.client {}
    assert(sim:fault { endpoint = "protected", status = 200, body = '{"code":"00","data":{}}',
                       headers = { ["X-Rate-Limit-Limit"] = "40", ["X-Rate-Limit-Remaining"] = "0",
                                   ["X-Rate-Limit-Window"] = "3600s" } })
    local res = assert(c:request { path = "/v1/accounts/balance" })
    assert.are.equal(3600, res.rate_limit.window)
    local _, err = c:request { path = "/v1/accounts/balance" }   -- before: slept an hour
    H.assert_error(err, { kind = "rate_limited", op = "request" })
    assert.is_true(err.retry_after > 3000)
  end)

  it("refuses misuse at once, naming the argument", function()
    local c = H.client {}
    local deep = {}                              -- nested past the one JSON depth (core.LIMITS.json_depth)
    local t = deep
    for _ = 1, 40 do t.x = {}; t = t.x end
    for _, case in ipairs {
      { { path = "/x", method = "TRACE" }, "method must be" },
      { { path = "/x", json = deep }, "json.x.x.x" },
      { { path = "https://evil.example/v1" }, "an absolute path must be on base_url's scheme, host and port" },
      { { path = "v1/no-slash" }, "path must start with" },
      { { path = "/x", headers = { Authorization = "Bearer x" } }, "headers.Authorization is set by the client" },
      { { path = "/x", headers = { ["X-A"] = "a\r\nB: c" } }, "headers.X-A must be a string without control" },
      { { path = "/x", json = {}, body = "{}" }, "give json or body" },
      { { path = "/x", timeout = 0 }, "timeout must be" },
      { { path = "/x", json = { amount = 1234567890123456 } }, "json.amount has more than 14 significant digits" },
      { { path = "/x", json = { items = { { id = 2 ^ 60 } } } }, "json.items.1.id has more than 14 significant" },
      { { path = "/x", json = { x = 123456789.123456 } }, "json.x has more than 14 significant digits" },
      { { path = "/x", query = { page = 0 / 0 } }, "query.page must be a finite number" },
      { { path = "/x", query = { page = math.huge } }, "query.page must be a finite number" },
      { { path = "/x", query = { page = -math.huge } }, "query.page must be a finite number" },
      { { path = "/x", query = { status = {} } }, "query.status is an empty list" },
      { { path = "/x", query = { status = { "a", {} } } }, "query.status.2 must be a string or number" },
      { { path = "/x", query = { status = { 0 / 0 } } }, "query.status.1 must be a finite number" },
      { { path = "/x", max_response_bytes = 10 }, "max_response_bytes must be" },
      { { path = "/x", account_id = ("a"):rep(129) }, "account_id must be" },
      -- one URL rule for every driver: what libcurl would drop or collapse is refused
      { { path = "/v1/accounts/balance#top" }, "path must not hold a fragment" },
      { { path = "/v1/a/../../../etc" }, "path must not hold '.' or '..' segments" },
      { { path = "/v1/./balance" }, "path must not hold '.' or '..' segments" },
      { { path = "/v1/%2e%2E/balance" }, "path must not hold '.' or '..' segments" },
      { { path = "/v1/.." }, "path must not hold '.' or '..' segments" },
      { { path = sim.url .. "/v1/a/../b" }, "path must not hold '.' or '..' segments" },
    } do
      local ok, msg = pcall(c.request, c, case[1])
      assert.is_false(ok)
      assert.matches("bad argument #1 to 'request' (" .. case[2], msg, 1, true)
    end
    assert.are.equal(0, H.count("protected"))
    -- an absolute URL on base_url itself is fine
    assert(c:request { path = sim.url .. "/v1/accounts/balance" })
  end)

  it("every error kind, typed, and no secret in any error or event", function()
    local events = {}
    local c = H.client { on_event = function(ev) events[#events + 1] = ev end }
    local tok = assert(c:token())
    local _, e1 = c:request { path = "/v1/transactions/accounts", query = { limit = 50 }, max_response_bytes = 256 }
    H.assert_error(e1, { kind = "protocol", op = "request" })
    local _, e2 = c:request { path = "/v1/nothing-here" }
    H.assert_error(e2, { kind = "api", status = 404 })
    assert(sim:fault { endpoint = "protected", delay = 1.5 })
    local _, e3 = c:request { path = "/v1/accounts/balance", timeout = 0.3 }
    H.assert_error(e3, { kind = "timeout", op = "request" })
    assert.is_true(e3.maybe_sent)
    local saved = { access_token = tok, expires_at = os.time() + 600, expires_in = 1800 }
    local dead = oauth.new(sim:client_options { base_url = "https://127.0.0.1:1", retries = 0, token = saved })
    local _, e4 = dead:request { method = "POST", path = "/v1/checkout/order", json = { amount = 1 } }
    H.assert_error(e4, { kind = "transport", op = "request" })
    assert.is_false(e4.maybe_sent)
    for _, e in ipairs { e1, e2, e3, e4 } do
      local s = tostring(e)
      assert.is_nil(s:find(tok, 1, true))
      assert.is_nil(s:find(sim.client.client_secret, 1, true))
    end
    for _, ev in ipairs(events) do
      for _, v in pairs(ev) do
        if type(v) == "string" then
          assert.is_nil(v:find(tok, 1, true))
          assert.is_nil(v:find("limit=50", 1, true))     -- the path without query values
        end
      end
    end
  end)

  it("redacts a bearer the server echoes; closed and tls errors are typed", function()
    local curl = H.curl_transport(sim.cafile)
    local c = H.client { transport = function(req)
      if req.op ~= "request" then return curl(req) end
      local echo = req.headers.Authorization
      return { status = 400, headers = { ["Content-Type"] = "application/json", ["X-Echo"] = echo },
               body = '{"code":"02","description":"bad request from ' .. req.headers.Authorization .. '"}' }
    end }
    local tok = assert(c:token())
    local _, err = c:request { path = "/v1/accounts/balance" }
    H.assert_error(err, { kind = "api", status = 400 })
    for _, s in ipairs { tostring(err), err.message, err.response.body, err.response.headers["x-echo"] } do
      assert.is_nil(s:find(tok, 1, true))
      assert.matches("[redacted]", s, 1, true)
    end
    c:close()
    local _, e2 = c:request { path = "/v1/accounts/balance" }
    H.assert_error(e2, { kind = "closed", op = "request" })
    local saved = { access_token = tok, expires_at = os.time() + 600, expires_in = 1800 }
    local u2 = oauth.new(sim:client_options { cafile = "/etc/ssl/certs/ca-certificates.crt", token = saved,
                                              retries = 0 })
    local _, e3 = u2:request { path = "/v1/accounts/balance" }
    H.assert_error(e3, { kind = "tls", op = "request" })
    assert.is_false(e3.maybe_sent)
  end)

  it("libcurl answers: names lower-cased, repeated headers joined, an echoed bearer redacted", function()
    for _, nb in ipairs { false, true } do
      local c = H.client { nonblocking = nb, retries = 0 }
      local tok = assert(c:token())
      assert(sim:fault { endpoint = "protected", status = 400, body = '{"code":"02","description":"not ' .. tok .. '"}',
                         headers = { ["X-Echo"] = "Bearer " .. tok, ["X-Dup"] = { "a", "b " }, ["X-MiXed"] = "v" } })
      local res, err
      if nb then
        assert(c:start("request", { path = "/v1/accounts/balance" }, function(r, e) res, err = r, e end))
        while c:step() do c:wait(0.05) end
      else
        res, err = c:request { path = "/v1/accounts/balance" }
      end
      assert.is_nil(res)
      H.assert_error(err, { kind = "api", status = 400, code = "02" })
      local h = err.response.headers
      assert.are.equal("a, b", h["x-dup"])
      assert.are.equal("v", h["x-mixed"])
      for _, s in ipairs { tostring(err), err.message, err.response.body, h["x-echo"] } do
        assert.is_nil(s:find(tok, 1, true))
        assert.matches("[redacted]", s, 1, true)
      end
      c:close()
    end
  end)

  it("on the OpenResty transport too: repeated headers joined, an echoed bearer redacted", function()
    local a = H.openresty_app { workers = 1 }
    local tok = H.sh("curl -s --max-time 10 " .. a.url .. "/token"):gsub("%s+$", "")
    assert(sim:fault { endpoint = "protected", status = 400, body = '{"code":"02"}',
                       headers = { ["X-Dup"] = { "a", "b" }, ["X-Echo"] = "Bearer " .. tok } })
    local out = H.sh("curl -s --max-time 10 " .. a.url .. "/request_headers")
    a:stop()
    local r = assert(cjson.decode(out), out)
    assert.are.equal(400, r.status)
    assert.are.equal("a, b", r.headers["x-dup"])
    assert.is_nil(r.headers["x-echo"]:find(tok, 1, true))
    assert.matches("[redacted]", r.headers["x-echo"], 1, true)
  end)

  it("takes answers up to 1 MiB by default, or the client's max_response_bytes when it gives one", function()
    assert(sim:fault { endpoint = "protected", status = 200, size = 200000 })
    local res = assert(H.client {}:request { path = "/v1/accounts/balance" })   -- past the 64 KiB of token answers
    assert.are.equal(200000 + 22, #res.body)
    assert(sim:fault { endpoint = "protected", status = 200, size = 200000 })
    local _, err = H.client { max_response_bytes = 65536 }:request { path = "/v1/accounts/balance" }
    H.assert_error(err, { kind = "protocol", op = "request" })
    assert(sim:fault { endpoint = "protected", status = 200, size = 200000 })
    _, err = H.client {}:request { path = "/v1/accounts/balance", max_response_bytes = 100000 }
    H.assert_error(err, { kind = "protocol", op = "request" })
  end)

  it("an answer that is not JSON by RFC 8259 (NaN, Infinity, 1e400) has no json", function()
    local c = H.client { retries = 0 }
    for _, body in ipairs { '{"code":"00","x":NaN}', '{"code":"00","x":Infinity}', '{"code":"00","x":1e400}' } do
      assert(sim:fault { endpoint = "protected", status = 200, body = body })
      local res = assert(c:request { path = "/v1/accounts/balance" })
      assert.are.equal(body, res.body)
      assert.is_nil(res.json)
      assert.is_nil(res.code)
    end
  end)

  it("reads a code written as a number as the token operations do, never a raise", function()
    local c = H.client { retries = 0 }
    for _, case in ipairs { { '{"code":0.5,"data":{}}', "0.5" }, { '{"code":1e300,"data":{}}', "1e+300" },
                            { '{"code":-0.25}', "-0.25" }, { '{"code":2}', "2" }, { '{"code":0}', "0" } } do
      for _, status in ipairs { 400, 200 } do       -- a 2xx whose code is not "00" is refused too
        assert(sim:fault { endpoint = "protected", status = status, body = case[1] })
        local res, err = c:request { path = "/v1/accounts/balance" }
        assert.is_nil(res)
        H.assert_error(err, { kind = "api", status = status, code = case[2] })
        -- the same answer to a token operation: the same code
        assert(sim:fault { endpoint = "issue", status = status, body = case[1] })
        local _, terr = c:issue()
        assert.are.same({ "api", case[2] }, { terr.kind, terr.code })
      end
    end
  end)

  it("takes rate-limit and Retry-After headers as digits only: no infinite or hex numbers", function()
    local c = H.client { retries = 0 }
    local huge = ("9"):rep(400)
    assert(sim:fault { endpoint = "protected", status = 200, body = '{"code":"00","data":{}}',
                       headers = { ["X-Rate-Limit-Limit"] = "1e999", ["X-Rate-Limit-Remaining"] = "0x10" } })
    local res = assert(c:request { path = "/v1/accounts/balance" })
    assert.is_nil(res.rate_limit)
    assert(sim:fault { endpoint = "protected", status = 200, body = '{"code":"00","data":{}}',
                       headers = { ["X-Rate-Limit-Limit"] = "40", ["X-Rate-Limit-Remaining"] = "0",
                                   ["X-Rate-Limit-Window"] = huge .. "s" } })
    res = assert(c:request { path = "/v1/accounts/balance" })
    assert.are.same({ limit = 40, remaining = 0 }, res.rate_limit)
    H.sleep(1.05)                                 -- a window with no number: one second
    for _, v in ipairs { "1e999", "0x10", huge, "-5", "5.5" } do
      assert(sim:fault { endpoint = "protected", status = 429, body = "", headers = { ["Retry-After"] = v } })
      local _, err = c:request { path = "/v1/accounts/balance" }
      H.assert_error(err, { kind = "http", status = 429 })
      assert.is_nil(err.retry_after, v)
      H.sleep(1.05)                               -- a 429 without a usable Retry-After: one second
    end
  end)

  it("keeps a rate-limit wait to itself for an hour at most, however long the server asks", function()
    local c = H.client { retries = 0, nonblocking = true }
    assert(c:token())
    assert(sim:fault { endpoint = "protected", status = 429, body = "", headers = { ["Retry-After"] = "999999999" } })
    local err
    assert(c:start("request", { path = "/v1/accounts/balance" }, function(_, e) err = e end))
    while c:step() do c:wait(0.05) end
    assert.are.equal(999999999, err.retry_after)
    local ok, gate = c:start("request", { path = "/v1/accounts/balance" }, function() end)
    assert.is_nil(ok)
    H.assert_error(gate, { kind = "rate_limited", op = "request" })
    assert.is_true(gate.retry_after > 3500 and gate.retry_after <= 3600, tostring(gate.retry_after))
  end)

  it("non-blocking: a 401 renews once and retries once through step(), as the blocking path does", function()
    local events = {}
    local c = H.client { nonblocking = true, on_event = function(ev) events[#events + 1] = ev end }
    local function call(opts)
      local got
      assert(c:start("request", opts, function(r, e) got = { r, e } end))
      while c:step() do c:wait(0.05) end
      return assert(got, "the callback never ran")
    end
    local t1 = assert(c:token())
    assert(H.client {}:revoke(t1))                 -- revoked elsewhere
    local got = call { path = "/v1/accounts/balance" }
    assert.are.equal(200, got[1] and got[1].status, tostring(got[2]))
    assert.are_not.equal(t1, c:token())
    assert.are.equal(2, H.count("protected"))
    assert.are.equal(2, H.count("issue"))         -- the revoked session's refresh is refused: issued afresh
    -- a 401 that renewing cannot cure: two calls, one renewal, then the 401
    got = call { path = "/v1/accounts/balance", account_id = "someone-else" }
    assert.is_nil(got[1])
    H.assert_error(got[2], { kind = "api", op = "request", status = 401 })
    assert.are.equal(4, H.count("protected"))
    local kinds = {}
    for _, ev in ipairs(events) do kinds[#kinds + 1] = ev.op .. ":" .. tostring(ev.status) end
    assert.are.equal("issue:200,request:401,refresh:401,issue:200,request:200," ..
                     "request:401,refresh:200,request:401", table.concat(kinds, ","))
    -- a renewal that fails: its error is the answer, and the call is not made again
    local issued
    assert(c:start("issue", function(r) issued = r end))
    while c:step() do c:wait(0.05) end
    assert(issued, "no token")
    assert(H.client {}:revoke(c:token()))
    assert(sim:fault { endpoint = "refresh", status = 400, body = { code = "400", description = "no" } })
    assert(sim:fault { endpoint = "issue", status = 400, body = { code = "400", description = "no" } })
    got = call { path = "/v1/accounts/balance" }
    assert.is_nil(got[1])
    H.assert_error(got[2], { kind = "api", op = "issue", status = 400 })
    assert.are.equal(5, H.count("protected"))
  end)

  it("runs in the non-blocking mode: start('request', opts, callback) through step()", function()
    local c = H.client { nonblocking = true }
    assert(c:token())
    local result
    assert(c:start("request", { path = "/v1/accounts/balance" }, function(r, e) result = r or e end))
    while c:step() do c:wait(0.05) end
    assert.are.equal(200, result.status)
    assert.are.equal("1000.00", result.data.balance)
  end)

  it("runs on the OpenResty transport (cosockets), with its 401 renewal", function()
    local a = H.openresty_app { workers = 1 }
    local out = H.sh("curl -s --max-time 20 " .. a.url .. "/request")
    a:stop()
    local r = assert(cjson.decode(out), out)
    assert.are.equal(200, r.status)
    assert.are.equal("1000.00", r.balance)
    assert.are.equal(200, r.after_revoke)
  end)
end)
