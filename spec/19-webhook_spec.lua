-- Webhooks: Nomba's signature verified in C against a vector computed with
-- the openssl CLI, every refusal reason, a bit flipped in each signed
-- field, deduplication across processes (Redis) and nginx workers (shared
-- dict), and the simulator delivering to the resty helper end to end.
local oauth = require "nomba.oauth"
local core = require "nomba.oauth.core"
local cjson = require "cjson"
local H = require "helpers"

local webhook = oauth.webhook
local LUA = arg and arg[-1] or "lua5.4"
local KEY = "whsec-test-key-0001"
local TS = "2024-01-01T00:00:00Z"
local T0 = 1704067200

local function event()
  return {
    event_type = "payment_success", requestId = "d0b6b1b6-4c1a-4a0e-9d7f-1f1a2b3c4d5e",
    data = {
      merchant = { userId = "user-1", walletId = "wallet-1", walletBalance = 100 },
      transaction = { transactionId = "API-VACT_TRA-0001", type = "vact_transfer",
                      time = "2024-01-01T00:00:00Z", responseCode = "", transactionAmount = 1500 },
    },
  }
end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- base64(HMAC-SHA256) by the openssl command line tool.
local function openssl_sig(key, msg)
  local p = io.popen("printf '%s' " .. q(msg) .. " | env -u LD_PRELOAD openssl dgst -sha256 -hmac " .. q(key) ..
                     " -binary | base64")
  local out = p:read("*l")
  p:close()
  return out
end

local function verify(body, headers, extra)
  local o = { key = KEY, body = body, headers = headers, now = T0 }
  for k, v in pairs(extra or {}) do o[k] = v end
  return webhook.verify(o)
end

local function reason(body, headers, extra)
  local ev, err = verify(body, headers, extra)
  assert.is_nil(ev)
  H.assert_error(err, { kind = "webhook", op = "webhook" })
  return err.reason
end

describe("webhooks", function()
  it("signs and verifies like the openssl CLI", function()
    local e = event()
    local msg = "payment_success:d0b6b1b6-4c1a-4a0e-9d7f-1f1a2b3c4d5e:user-1:wallet-1:API-VACT_TRA-0001:" ..
                "vact_transfer:2024-01-01T00:00:00Z::" .. TS
    local want = openssl_sig(KEY, msg)
    assert.are.equal(44, #want)
    local h, body = webhook.sign { key = KEY, event = e, timestamp = TS }
    assert.are.equal(want, h["nomba-signature"])
    assert.are.equal(want, h["nomba-sig-value"])
    assert.are.same({ "HmacSHA256", "1.0.0", TS },
                    { h["nomba-signature-algorithm"], h["nomba-signature-version"], h["nomba-timestamp"] })
    local got = assert(verify(body, h))
    assert.are.equal("API-VACT_TRA-0001", got.data.transaction.transactionId)
    -- a hand-made delivery with the openssl signature verifies too
    assert.is_table(verify(cjson.encode(e), {
      ["Nomba-Signature"] = want, ["Nomba-Timestamp"] = TS,
      ["Nomba-Signature-Algorithm"] = "HmacSHA256", ["Nomba-Signature-Version"] = "1.0.0" }))
  end)

  it("matches header names in any case, falls back to nomba-sig-value, accepts a hex digest", function()
    local h, body = webhook.sign { key = KEY, event = event(), timestamp = TS }
    local upper, lower = {}, {}
    for k, v in pairs(h) do upper[k:upper()] = v lower[k] = v end
    assert.is_table(verify(body, upper))
    lower["nomba-signature"] = nil
    assert.is_table(verify(body, lower))
    local raw = core.webhook_mac(KEY, "x")
    assert.is_true(core.webhook_check(KEY, "x", raw))
    assert.are.equal(openssl_sig(KEY, "x"), raw)
    local p = io.popen("printf x | env -u LD_PRELOAD openssl dgst -sha256 -hmac " .. q(KEY) .. " -r")
    local hexdigest = p:read("*l"):match("^(%x+)")
    p:close()
    assert.are.equal(64, #hexdigest)
    assert.is_true(core.webhook_check(KEY, "x", hexdigest))
    assert.is_true(core.webhook_check(KEY, "x", hexdigest:upper()))
  end)

  it("writes signed fields that are numbers or booleans as JavaScript does (Nomba's signer)", function()
    -- each value and the text JavaScript's String() makes of it
    -- (the time must be a timestamp: it is the one signed field with colons)
    local body = '{"event_type":0.000001,"requestId":123456789012345680000,"data":{"merchant":' ..
                 '{"userId":1e21,"walletId":1.5e-7},"transaction":{"transactionId":-0,"type":true,' ..
                 '"time":"2024-01-01T00:00:00Z","responseCode":9007199254740993}}}'
    local msg = "0.000001:123456789012345680000:1e+21:1.5e-7:0:true:2024-01-01T00:00:00Z:9007199254740992:" .. TS
    local sig = openssl_sig(KEY, msg)
    local h = { ["nomba-signature"] = sig, ["nomba-timestamp"] = TS,
                ["nomba-signature-algorithm"] = "HmacSHA256", ["nomba-signature-version"] = "1.0.0" }
    local ev = assert(verify(body, h))
    assert.are.equal(0, ev.data.transaction.transactionId)
    -- sign computes the same message from the table and from the text
    assert.are.equal(sig, webhook.sign { key = KEY, event = body, timestamp = TS }["nomba-signature"])
    assert.are.equal(sig, webhook.sign { key = KEY, event = ev, timestamp = TS }["nomba-signature"])
    -- other shapes of numbers: integers, negatives, large and tiny exponents
    local cases = { { 0.1, "0.1" }, { 1500, "1500" }, { -42, "-42" }, { 125000.5, "125000.5" }, { 1e300, "1e+300" },
                    { -2.5e-9, "-2.5e-9" }, { 1 / 3, "0.3333333333333333" }, { 1e15, "1000000000000000" },
                    { 123456.789e3, "123456789" }, { false, "false" } }
    for _, c in ipairs(cases) do
      local e = event()
      e.data.transaction.responseCode = c[1]
      local want = openssl_sig(KEY, "payment_success:d0b6b1b6-4c1a-4a0e-9d7f-1f1a2b3c4d5e:user-1:wallet-1:" ..
                                    "API-VACT_TRA-0001:vact_transfer:2024-01-01T00:00:00Z:" .. c[2] .. ":" .. TS)
      assert.are.equal(want, webhook.sign { key = KEY, event = e, timestamp = TS }["nomba-signature"], c[2])
    end
  end)

  it("finds one header spelled differently from the others", function()
    local h, body = webhook.sign { key = KEY, event = event(), timestamp = TS }
    for _, name in ipairs { "nomba-timestamp", "nomba-signature-algorithm", "nomba-signature-version",
                            "nomba-signature" } do
      local mixed = {}
      for k, v in pairs(h) do mixed[k] = v end
      mixed[name] = nil
      mixed[name:gsub("^%l", string.upper):gsub("%-%l", string.upper)] = h[name]
      if name == "nomba-signature" then mixed["nomba-sig-value"] = nil end
      assert.is_table(verify(body, mixed), name)
    end
    -- a list of values (several headers of one name): the first is used
    local list = {}
    for k, v in pairs(h) do list[k] = { v, "garbage" } end
    assert.is_table(verify(body, list))
  end)

  it("refuses with a reason: every one of them", function()
    local h, body = webhook.sign { key = KEY, event = event(), timestamp = TS }
    local function without(name)
      local t = {}
      for k, v in pairs(h) do if k ~= name then t[k] = v end end
      return t
    end
    local function with(name, value)
      local t = without(name)
      t[name] = value
      return t
    end
    local both = without("nomba-signature")
    both["nomba-sig-value"] = nil
    assert.are.equal("missing_header", reason(body, both))
    assert.are.equal("missing_header", reason(body, without("nomba-timestamp")))
    assert.are.equal("missing_header", reason(body, without("nomba-signature-algorithm")))
    assert.are.equal("missing_header", reason(body, without("nomba-signature-version")))
    assert.are.equal("missing_header", reason(body, with("nomba-timestamp", "yesterday")))
    assert.are.equal("unknown_algorithm", reason(body, with("nomba-signature-algorithm", "HmacSHA1")))
    assert.are.equal("unknown_version", reason(body, with("nomba-signature-version", "2.0.0")))
    assert.are.equal("bad_json", reason("not json", h))
    assert.are.equal("bad_json", reason("[1,2]", h))
    assert.are.equal("bad_signature", reason(body, h, { key = "another key" }))
    assert.are.equal("bad_signature", reason(body, with("nomba-signature", "short")))
    assert.are.equal("bad_signature", reason(body, with("nomba-signature", h["nomba-signature"]:sub(1, 43) .. "A")))
    -- the window: two hours old (Nomba's fifth retry carries the first
    -- send's timestamp, about 95 minutes old), five minutes in the future
    assert.is_table(verify(body, h, { now = T0 + 5680 }))
    assert.is_table(verify(body, h, { now = T0 + 7199 }))
    assert.are.equal("stale", reason(body, h, { now = T0 + 7201 }))
    assert.are.equal("future", reason(body, h, { now = T0 - 301 }))
    assert.is_table(verify(body, h, { now = T0 - 299 }))
    assert.are.equal("stale", reason(body, h, { now = T0 + 61, max_age = 60 }))
    assert.are.equal("future", reason(body, h, { now = T0 - 61, max_skew = 60 }))
    -- the key never shows
    local _, err = verify(body, with("nomba-signature", "x"))
    assert.is_nil(tostring(err):find(KEY, 1, true))
  end)

  it("a bit flipped in any signed field or the timestamp breaks the signature", function()
    local h, body = webhook.sign { key = KEY, event = event(), timestamp = TS }
    local paths = {
      { "event_type" }, { "requestId" }, { "data", "merchant", "userId" }, { "data", "merchant", "walletId" },
      { "data", "transaction", "transactionId" }, { "data", "transaction", "type" },
      { "data", "transaction", "time" }, { "data", "transaction", "responseCode" },
    }
    local function flip(s)
      if s == "" then return "\1" end
      local b = s:byte(1)
      return string.char(b % 2 == 0 and b + 1 or b - 1) .. s:sub(2)
    end
    for _, path in ipairs(paths) do
      local e = cjson.decode(body)
      local t = e
      for i = 1, #path - 1 do t = t[path[i]] end
      t[path[#path]] = flip(t[path[#path]])
      assert.are.equal("bad_signature", reason(cjson.encode(e), h), table.concat(path, "."))
    end
    local t = {}
    for k, v in pairs(h) do t[k] = v end
    t["nomba-timestamp"] = "2024-01-01T00:00:01Z"
    assert.are.equal("bad_signature", reason(body, t))
    -- a field outside the eight is not signed: it still verifies. Handlers
    -- must read only the signed fields, or re-fetch the transaction.
    local e = cjson.decode(body)
    e.data.transaction.transactionAmount = 1000000
    assert.are.equal(1000000, verify(cjson.encode(e), h).data.transaction.transactionAmount)
  end)

  it("raises on misuse, naming the argument", function()
    assert.has_error(function() webhook.verify { body = "{}", headers = {} } end,
                     "nomba.oauth.webhook.verify: key must be a non-empty string")
    assert.has_error(function() webhook.verify { key = "k", headers = {} } end,
                     "nomba.oauth.webhook.verify: body must be a string")
    for _, now in ipairs { 0 / 0, math.huge, -math.huge, "1" } do
      assert.has_error(function() webhook.verify { key = "k", body = "{}", headers = {}, now = now } end,
                       "nomba.oauth.webhook.verify: now must be a finite number")
    end
    assert.has_error(function() webhook.dedupe({}, "id") end)
    -- 0 is no window: the message says what is allowed, and it is not 0
    for _, bad in ipairs { 0, -1, 0 / 0, 1e9 } do
      local ok, msg = pcall(webhook.verify, { key = "k", body = "{}", headers = {}, max_age = bad })
      assert.is_false(ok)
      assert.matches("max_age must be a number of seconds greater than 0 and at most 604800", msg, 1, true)
    end
  end)

  it("verifies Nomba's published vector (the Go tab of its webhook page)", function()
    local e = {
      event_type = "payment_success", requestId = "45f2dc2d-d559-4773-bba3-2d5ec17b2e20",
      data = { merchant = { userId = "b7b10e81-e57d-41d0-8fdc-f4e23a132bbf", walletId = "6756ff80aafe04a795f18b38" },
               transaction = { transactionId = "API-VACT_TRA-B7B10-0435b274-807a-4bc7-8abe-9dbb4548fd7a",
                               type = "vact_transfer", time = "2025-09-29T10:51:44Z", responseCode = "" } } }
    local ts = "2025-09-29T10:51:44Z"
    local h = { ["nomba-signature"] = "Kt9095hQxfgmVbx6iz7G2tPhHdbdXgLlyY/mf35sptw=", ["nomba-timestamp"] = ts,
                ["nomba-signature-algorithm"] = "HmacSHA256", ["nomba-signature-version"] = "1.0.0" }
    assert.is_table(webhook.verify { key = "HkatexKDZg7CLWy96q5sfrVHSvtoz92B", body = cjson.encode(e), headers = h,
                                     now = 1759143104 })
    local signed = webhook.sign { key = "HkatexKDZg7CLWy96q5sfrVHSvtoz92B", event = e, timestamp = ts }
    assert.are.equal(h["nomba-signature"], signed["nomba-signature"])
  end)

  it("signs a responseCode \"null\" as Nomba's samples do: an empty field; \"NULL\" under either reading", function()
    local base = "payment_success:d0b6b1b6-4c1a-4a0e-9d7f-1f1a2b3c4d5e:user-1:wallet-1:API-VACT_TRA-0001:" ..
                 "vact_transfer:2024-01-01T00:00:00Z:"
    local function delivered(code, signed_as)
      local e = event()
      e.data.transaction.responseCode = code
      return verify(cjson.encode(e), { ["nomba-signature"] = openssl_sig(KEY, base .. signed_as .. ":" .. TS),
        ["nomba-timestamp"] = TS, ["nomba-signature-algorithm"] = "HmacSHA256", ["nomba-signature-version"] = "1.0.0" })
    end
    assert.is_table(delivered("null", ""))           -- every sample: "" (before: refused, a purchase lost)
    assert.is_nil(delivered("null", "null"))         -- no sample signs it as it is
    assert.is_table(delivered("NULL", ""))           -- the Java sample (any letter case)
    assert.is_table(delivered("NULL", "NULL"))       -- the others
    assert.is_table(delivered("Null", ""))
    assert.is_nil(delivered("nul", ""))
    assert.is_table(delivered("00", "00"))
    -- and sign() signs as Nomba does
    local e = event()
    e.data.transaction.responseCode = "null"
    assert.are.equal(openssl_sig(KEY, base .. ":" .. TS),
                     webhook.sign { key = KEY, event = e, timestamp = TS }["nomba-signature"])
  end)

  it("takes a timestamp in Unix seconds, or RFC 3339 with its offset (never a bare local time)", function()
    local e = cjson.encode(event())
    local msg = "payment_success:d0b6b1b6-4c1a-4a0e-9d7f-1f1a2b3c4d5e:user-1:wallet-1:API-VACT_TRA-0001:" ..
                "vact_transfer:2024-01-01T00:00:00Z::"
    local function with_ts(ts)
      return { ["nomba-signature"] = openssl_sig(KEY, msg .. ts), ["nomba-timestamp"] = ts,
               ["nomba-signature-algorithm"] = "HmacSHA256", ["nomba-signature-version"] = "1.0.0" }
    end
    assert.is_table(verify(e, with_ts("1704067200")))             -- Nomba's older pages
    assert.is_table(verify(e, with_ts("2024-01-01T01:00:00+01:00")))
    assert.is_table(verify(e, with_ts("2024-01-01T00:00:00.250Z")))
    assert.are.equal("stale", reason(e, with_ts("1704000000")))
    for _, ts in ipairs { "2024-01-01T00:00:00", "2024-01-01T00:00Z", "2024-01-01 00:00:00Z", "2024-01-01T00:00:00+01",
                          "1704067200.5", "-1704067200", "0x65920080", "" } do
      assert.are.equal("missing_header", reason(e, with_ts(ts)), ts)
    end
  end)

  it("refuses a delivery re-cut at the colons of its time, a ':' where none belongs, an object as a field", function()
    local h, body = webhook.sign { key = KEY, event = event(), timestamp = TS }
    -- the same signed message, every field moved one place: another requestId
    -- (a replay dedupe would take for a new event), the same HMAC
    local e = cjson.decode(body)
    local m, t = e.data.merchant, e.data.transaction
    e.requestId = e.requestId .. ":" .. m.userId
    m.userId, m.walletId = m.walletId, t.transactionId
    t.transactionId, t.type, t.time = t.type, "2024-01-01T00", "00:00Z"
    local _, err = verify(cjson.encode(e), h)
    H.assert_error(err, { kind = "webhook", reason = "bad_field" })
    assert.matches("requestId holds a ':'", err.message, 1, true)
    -- one field at a time: a colon, a time that is no timestamp, an object or array
    local function changed(path, v)
      local x = cjson.decode(body)
      local at = x
      for i = 1, #path - 1 do at = at[path[i]] end
      at[path[#path]] = v
      local hh = webhook.sign { key = KEY, event = x, timestamp = TS }   -- validly signed: refused anyway
      return reason(cjson.encode(x), hh)
    end
    for _, path in ipairs { { "event_type" }, { "requestId" }, { "data", "merchant", "userId" },
                            { "data", "merchant", "walletId" }, { "data", "transaction", "transactionId" },
                            { "data", "transaction", "type" }, { "data", "transaction", "responseCode" } } do
      assert.are.equal("bad_field", changed(path, "a:b"), table.concat(path, "."))
      assert.are.equal("bad_field", changed(path, { x = 1 }), table.concat(path, "."))
      assert.are.equal("bad_field", changed(path, { 1, 2 }), table.concat(path, "."))
    end
    assert.are.equal("bad_field", changed({ "data", "transaction", "time" }, "yesterday"))
    assert.are.equal("bad_field", changed({ "data", "transaction", "time" }, "2024-01-01T00:00:00"))
    assert.are.equal("bad_field", changed({ "data", "transaction", "time" }, { "2024" }))
    assert.is_table(verify(webhook.sign { key = KEY, event = cjson.decode(body), timestamp = TS } and body, h))
  end)

  it("an id that cannot be a key is an error to return, never a raise (a NUL in a signed requestId)", function()
    local e = event()
    e.requestId = "req\0-1"
    local h, body = webhook.sign { key = KEY, event = e, timestamp = TS }
    local ev = assert(verify(body, h))                 -- signed as sent
    local s = oauth.store.memory()
    for _, f in ipairs { webhook.dedupe, webhook.claim } do
      local ok, first, err = pcall(f, s, ev.requestId)
      assert.is_true(ok)
      assert.is_nil(first)
      H.assert_error(err, { kind = "webhook", reason = "bad_request_id" })
    end
    for _, id in ipairs { "", ("x"):rep(257), 42, false } do
      local first, err = webhook.claim(s, id)
      assert.is_nil(first)
      assert.are.equal("bad_request_id", err.reason)
    end
  end)

  describe("claim, done, release: each event granted once", function()
    local function contract(s, fresh)
      assert.are.equal("first", webhook.claim(s, "a", 1))
      assert.are.equal("held", webhook.claim(fresh(), "a", 1))     -- another worker: in progress
      assert.is_true(webhook.done(s, "a", 60))
      assert.are.equal("done", webhook.claim(fresh(), "a", 1))     -- a duplicate
      assert.are.equal("first", webhook.claim(s, "b", 1))
      assert.is_true(webhook.release(s, "b"))                      -- the handler failed
      assert.are.equal("first", webhook.claim(fresh(), "b", 1))    -- the next delivery is processed
      assert.are.equal("first", webhook.claim(s, "c", 0.3))
      H.sleep(0.5)                                                 -- its holder died: the claim expires
      assert.are.equal("first", webhook.claim(fresh(), "c", 1))
      assert.is_true(webhook.done(s, "c"))
      assert.are.equal("done", webhook.claim(s, "c"))
    end

    it("on the memory store", function()
      local s = oauth.store.memory()
      contract(s, function() return s end)
    end)

    it("on the file store", function()
      local dir = io.popen("mktemp -d /tmp/nomba-claim.XXXXXX"):read("*l")
      contract(oauth.store.file(dir), function() return oauth.store.file(dir) end)
      os.execute("rm -rf " .. dir)
    end)

    it("on Redis", function()
      local redis = assert(H.redis())
      local function fresh() return oauth.store.redis(H.redis_client(redis.port), { timeout = 2 }) end
      contract(fresh(), fresh)
      redis.cleanup()
    end)

    it("a store in trouble is an error, and a claim taken is let go", function()
      local s = oauth.store.memory()
      s.get = function() error("down") end
      local state, err = webhook.claim(s, "x")
      assert.is_nil(state)
      assert.are.equal("store", err.reason)
      s.get = oauth.store.memory().get
      assert.are.equal("first", webhook.claim(s, "x"))    -- the failed claim did not stay
      local broken = oauth.store.memory()
      broken.add = function() return nil end              -- says nothing: not "there already"
      state, err = webhook.claim(broken, "y")
      assert.is_nil(state)
      assert.are.equal("store", err.reason)
    end)

    it("a process killed -9 while granting: the redelivery after its lease is granted once (Redis) #preload", function()
      local redis = assert(H.redis())
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      f:write([[
        package.path = package.path .. ";/usr/share/lua/5.1/?.lua"
        local oauth = require "nomba.oauth"
        local store = oauth.store.redis(require("redis").connect("127.0.0.1", tonumber(arg[1])), { timeout = 2 })
        local state = oauth.webhook.claim(store, "purchase-1", 1)
        io.write(state, "\n")
        io.flush()
        if arg[2] == "die" then while true do end end       -- killed inside the handler
        if state == "first" then assert(oauth.webhook.done(store, "purchase-1")) end
      ]])
      f:close()
      local said = os.tmpname()
      -- (io.popen, not H.sh: the worker keeps this process's preload, the ASan runtime under make asan)
      local pid = io.popen(LUA .. " " .. script .. " " .. redis.port .. " die > " .. said .. " 2>&1 & echo $!")
                    :read("*l"):match("%d+")
      local claimed
      for _ = 1, 200 do                      -- until it holds the claim (it says so), then kill it
        local g = io.open(said)
        claimed = g and g:read("*l")
        if g then g:close() end
        if claimed then break end
        H.sleep(0.01)
      end
      assert.are.equal("first", claimed)
      os.execute("kill -9 " .. pid)
      os.remove(said)
      local function run() return (H.sh(LUA .. " " .. script .. " " .. redis.port):gsub("%s+$", "")) end
      assert.are.equal("held", run())        -- within the dead process's lease: Nomba is told to retry
      H.sleep(1.1)
      assert.are.equal("first", run())       -- granted by this one
      assert.are.equal("done", run())        -- and never again
      assert.are.equal("done", run())
      os.remove(script)
      redis.cleanup()
    end)
  end)

  it("dedupes with every store kind", function()
    local s = oauth.store.memory()
    assert.is_true(webhook.dedupe(s, "a", 60))
    assert.is_false(webhook.dedupe(s, "a", 60))
    assert.is_true(webhook.dedupe(s, "b", 60))
    local broken = oauth.store.memory()
    broken.add = function() error("down") end
    local first, err = webhook.dedupe(broken, "a")
    assert.is_nil(first)
    assert.are.equal("store", err.reason)
    -- a store that answers nothing, or something else than a boolean, has
    -- not said "seen before": never a duplicate, which would drop the event
    for _, answer in ipairs { {}, { nil, nil }, { "OK" }, { 1 } } do
      broken.add = function() return table.unpack(answer, 1, 2) end
      first, err = webhook.dedupe(broken, "a")
      assert.is_nil(first)
      assert.are.equal("store", err.reason)
    end
  end)

  it("dedupes across 4 processes on Redis: one winner per requestId", function()
    local redis = assert(H.redis())
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write([[
      package.path = package.path .. ";/usr/share/lua/5.1/?.lua"
      local oauth = require "nomba.oauth"
      local r = require("redis").connect("127.0.0.1", tonumber(arg[1]))
      local store = oauth.store.redis(r, { timeout = 2 })
      local won = 0
      for i = 1, 50 do if oauth.webhook.dedupe(store, "req-" .. i, 60) then won = won + 1 end end
      io.write(won)
    ]])
    f:close()
    local procs = {}
    for i = 1, 4 do procs[i] = io.popen(LUA .. " " .. script .. " " .. redis.port) end
    local total = 0
    for i = 1, 4 do
      total = total + tonumber(procs[i]:read("*a"))
      procs[i]:close()
    end
    os.remove(script)
    redis.cleanup()
    assert.are.equal(50, total)
  end)

  describe("delivered by the simulator to nginx (resty.webhook, 4 workers)", function()
    local a, sim
    setup(function()
      sim = H.sim()
      a = H.openresty_app { workers = 4, config = { webhook_lease = 1 } }
    end)
    teardown(function() if a then a:stop() end end)
    before_each(H.reset)

    -- curl's arguments for one POST of a signed delivery, its body in a file
    local function delivery(h, body)
      local file = os.tmpname()
      local f = assert(io.open(file, "w"))
      f:write(body)
      f:close()
      local args = { "-X POST -H 'Content-Type: application/json' --data-binary @" .. file }
      for k, v in pairs(h) do args[#args + 1] = "-H " .. q(k .. ": " .. v) end
      args[#args + 1] = a.url .. "/webhook"
      return table.concat(args, " "), function() os.remove(file) end
    end

    local function granted(id)
      return tonumber((H.sh("curl -s '" .. a.url .. "/granted" .. (id and ("?id=" .. id) or "") .. "'")))
    end

    it("grants a signed event once, even when delivered twice", function()
      local before = granted()
      local r = assert(sim:webhook { url = a.url .. "/webhook", duplicate = true })
      assert.are.same({ 200, 200 }, r.statuses)
      assert.are.equal(1, granted(r.event.requestId))
      assert.are.equal(before + 1, granted())
    end)

    it("refuses tampered, stale, future and foreign-key deliveries with 401", function()
      local before = granted()
      for _, o in ipairs { { tamper = true }, { stale = true }, { future = true }, { key = "not-the-key" } } do
        o.url = a.url .. "/webhook"
        local r = assert(sim:webhook(o))
        assert.are.same({ 401 }, r.statuses, cjson.encode(o))
      end
      assert.are.equal(before, granted())
    end)

    it("answers 400 for a body that is not JSON, 500 when the handler fails (and then accepts the retry)", function()
      local args, done = delivery(webhook.sign { key = "sim-webhook-key-0001", event = event() }, "nope")
      local code = H.sh("curl -s -o /dev/null -w '%{http_code}' " .. args)
      done()
      assert.are.equal("400", code)
      local r = assert(sim:webhook { url = a.url .. "/webhook", transaction_type = "fail_me", request_id = "retry-1" })
      assert.are.same({ 500 }, r.statuses)
      r = assert(sim:webhook { url = a.url .. "/webhook", request_id = "retry-1" })
      assert.are.same({ 200 }, r.statuses)
      assert.are.equal(1, granted("retry-1"))
    end)

    it("an event granted while the store takes no mark is marked from a timer, never granted again", function()
      -- the first two "done" marks fail (Redis restarting): the delivery is granted and answered
      -- 200, the mark lands from a timer inside the claim's lease, and the redelivery after the
      -- lease (the same event to another worker, or Nomba's retry) is a duplicate, not a grant
      local url = a.url .. "/webhook?fail_marks=2"
      local r = assert(sim:webhook { url = url, request_id = "mark-1" })
      assert.are.same({ 200 }, r.statuses)
      assert.are.equal(1, granted("mark-1"))
      H.sleep(1.5)                                    -- past the claim's lease (1 s in this app)
      r = assert(sim:webhook { url = url, request_id = "mark-1" })
      assert.are.same({ 200 }, r.statuses)
      assert.are.equal(1, granted("mark-1"))
      assert.matches("processed, but not marked yet", a:error_log(), 1, true)
    end)

    it("a large body buffered to a temp file by nginx still verifies", function()
      local e = event()
      e.requestId = "big-1"
      e.data.padding = ("p"):rep(200000)              -- over client_body_buffer_size: nginx writes a file
      local args, done = delivery(webhook.sign { key = "sim-webhook-key-0001", event = e })
      local code = H.sh("curl -s -o /dev/null -w '%{http_code}' " .. args)
      done()
      assert.are.equal("200", code)
      assert.are.equal(1, granted("big-1"))
    end)

    it("grants 40 concurrent deliveries of one event once across the 4 workers", function()
      local args, done = delivery(webhook.sign { key = "sim-webhook-key-0001", event = event() })
      local urls = {}
      for i = 1, 40 do urls[i] = "-o /dev/null -w '%{http_code}\\n' " .. args end
      local out = H.sh("curl -s --parallel --parallel-max 20 " .. table.concat(urls, " --next -s ") .. " 2>/dev/null")
      local answers = {}
      for c in out:gmatch("%d+") do answers[c] = (answers[c] or 0) + 1 end
      -- 200: granted, or a duplicate; 503: another worker was granting it at that moment (Nomba retries)
      assert.are.equal(40, (answers["200"] or 0) + (answers["503"] or 0), out)
      assert.is_true((answers["200"] or 0) >= 1)
      assert.are.equal(1, granted(event().requestId))
      assert.are.equal("200", H.sh("curl -s -o /dev/null -w '%{http_code}' " .. args))   -- later: a duplicate
      done()
      assert.are.equal(1, granted(event().requestId))
    end)

    it("a worker killed -9 inside the handler: the delivery after the lease is granted, once", function()
      local e = event()
      e.requestId, e.data.transaction.type = "purchase-kill-1", "hang"
      local args, done = delivery(webhook.sign { key = "sim-webhook-key-0001", event = e })
      os.execute("env -u LD_PRELOAD curl -s -o /dev/null --max-time 10 " .. args .. " >/dev/null 2>&1 &")
      local pid
      for _ = 1, 300 do                            -- until the handler runs (it records its worker)
        pid = H.sh("curl -s '" .. a.url .. "/hung?id=purchase-kill-1'"):match("^(%d+)")
        if pid then break end
        H.sleep(0.01)
      end
      assert.is_string(pid, "the handler never ran")
      os.execute("kill -9 " .. pid)                -- the master starts another worker
      local function status() return H.sh("curl -s -o /dev/null -w '%{http_code}' " .. args) end
      assert.are.equal("503", status())            -- its claim holds for its lease: Nomba will retry
      assert.are.equal(0, granted("purchase-kill-1"))
      H.sleep(1.1)                                 -- the lease of the dead worker's claim is over
      assert.are.equal("200", status())
      assert.are.equal(1, granted("purchase-kill-1"))
      assert.are.equal("200", status())            -- a duplicate from now on
      done()
      assert.are.equal(1, granted("purchase-kill-1"))
    end)

    it("takes the simulator's \"null\" response codes (every sample's signing) and Unix-second timestamps", function()
      for _, o in ipairs { { response_code = "null" }, { response_code = "NULL" },
                           { response_code = "NULL", signer = "java" }, { response_code = "null", signer = "java" },
                           { unix_ts = true }, { unix_ts = true, response_code = "null" } } do
        o.url = a.url .. "/webhook"
        local r = assert(sim:webhook(o))
        assert.are.same({ 200 }, r.statuses, cjson.encode(o))
        assert.are.equal(1, granted(r.event.requestId))
      end
    end)

    it("grants a purchase on Nomba's fifth retry, 95 minutes after the first send (time compressed)", function()
      local r = assert(sim:webhook { url = a.url .. "/webhook", transaction_type = "fail_5", retries = true,
                                     compress = 4000 })
      assert.are.same({ 500, 500, 500, 500, 500, 200 }, r.statuses)
      assert.are.same({ 0, 120, 400, 1040, 2480, 5680 }, r.ages)
      assert.are.equal(1, granted(r.event.requestId))
    end)

    it("refuses a delivery re-cut at the colons of its time (a replay under a new requestId)", function()
      local before = granted()
      local r = assert(sim:webhook { url = a.url .. "/webhook", resplit = true })
      assert.are.same({ 401 }, r.statuses)
      assert.matches(":", r.event.requestId)
      assert.are.equal(before, granted())
    end)

    it("refuses a configuration that would grant twice: no store, a ttl shorter than the window", function()
      assert.matches("opts.store is required", H.sh("curl -s '" .. a.url .. "/webhook_config?case=nostore'"))
      assert.matches("opts.ttl must be at least max_age",
                     H.sh("curl -s '" .. a.url .. "/webhook_config?case=shortttl'"))
    end)
  end)
end)
