-- The parsers of answers and events: dates (expiresAt, Date, Retry-After) and
-- JSON into Lua values (C, fuzzed too).
local core = require "nomba.oauth.core"

describe("time parsing", function()
  local T = 1657290780   -- 2022-07-08T14:33:00Z

  it("reads ISO 8601 liberally", function()
    for _, s in ipairs { "2022-07-08T14:33:00Z", "2022-07-08t14:33:00z", "2022-07-08 14:33:00Z",
                         "2022-07-08T14:33:00", "2022-07-08T14:33Z", "2022-07-08T15:33:00+01:00",
                         "2022-07-08T13:33:00-01:00", "2022-07-08T15:33:00+0100",
                         "2022-07-08T15:33:00+01", "2022-07-08T20:03:00+05:30" } do
      assert.are.equal(T, core._test.parse_time(s), s)
    end
    assert.is_true(math.abs(core._test.parse_time("2022-07-08T14:33:00.250Z") - (T + 0.25)) < 1e-6)
    assert.is_true(math.abs(core._test.parse_time("2022-07-08T14:33:00.123456789123Z") - (T + 0.123456789)) < 1e-6)
    assert.are.equal(951782400, core._test.parse_time("2000-02-29T00:00:00Z"))
  end)

  it("refuses what is not a time", function()
    for _, s in ipairs { "", "2022", "2022-07-08", "2022-13-01T00:00:00Z", "2022-02-30T00:00:00Z",
                         "2021-02-29T00:00:00Z", "2022-07-08T24:00:00Z", "2022-07-08T14:33:00.Z",
                         "2022-07-08T14:33:00Q", "2022-07-08T14:33:00+25:00", "2022-07-08T14:33:00Zjunk",
                         "1969-12-31T23:59:59Z", "２０２２-07-08T14:33:00Z", "2022-07-08T14:33:00\0Z" } do
      assert.is_nil(core._test.parse_time(s), s)
    end
  end)

  it("reads the three HTTP-date forms", function()
    assert.are.equal(784111777, core._test.parse_time("Sun, 06 Nov 1994 08:49:37 GMT"))
    assert.are.equal(784111777, core._test.parse_time("Sunday, 06-Nov-94 08:49:37 GMT"))
    assert.are.equal(784111777, core._test.parse_time("Sun Nov  6 08:49:37 1994"))
    assert.is_nil(core._test.parse_time("Sun, 06 Nov 1994 08:49:37 PST"))
    assert.is_nil(core._test.parse_time("Sun, 06 Foo 1994 08:49:37 GMT"))
  end)

  it("reads Retry-After as seconds or as a date", function()
    assert.are.equal(120, core._test.retry_after("120"))
    assert.are.equal(0, core._test.retry_after("0"))
    assert.are.equal(5, core._test.retry_after(" 5 "))
    assert.are.equal(30, core._test.retry_after("Sun, 06 Nov 1994 08:50:07 GMT", 784111777))
    assert.are.equal(0, core._test.retry_after("Sun, 06 Nov 1994 08:49:00 GMT", 784111777))
    for _, s in ipairs { "", "-1", "1.5", "soon", "12abc", "99999999999" } do
      assert.is_nil(core._test.retry_after(s), s)
    end
  end)
end)

describe("JSON into Lua values (core.json_decode: API answers, webhook events)", function()
  local cjson = require "cjson"
  local decode = core.json_decode

  -- equal values, an integer equal to the float cjson makes of it
  local function same(a, b)
    if type(a) == "number" and type(b) == "number" then return a + 0.0 == b + 0.0 end
    if type(a) ~= "table" or type(b) ~= "table" then return a == b end
    for k, v in pairs(a) do if not same(v, b[k]) then return false end end
    for k in pairs(b) do if a[k] == nil then return false end end
    return true
  end

  it("reads what lua-cjson reads, to the same values", function()
    local members, elements = {}, {}
    for i = 1, 150 do members[#members + 1] = ('"k%d":%d'):format(i, i) elements[i] = tostring(i * 2) end
    local docs = {
      '{}', '[]', '{"a":1,"b":[1,2,{"c":null}],"d":"x","e":true,"f":false}', '"s"', '12', '-0.5', ' [ 1 , 2 ] ',
      '{"u":"\\u00e9\\u4e2d\\ud83d\\ude00 \\n\\t\\"\\\\\\/"}', '{"n":[1.5e3,-2E-2,0,1e-7,12345678901234567890]}',
      '{' .. table.concat(members, ",") .. '}', '[' .. table.concat(elements, ",") .. ']',
      '{"a":1,"a":2}', '{"deep":[[[[[[[[["x"]]]]]]]]]}',
    }
    for _, d in ipairs(docs) do
      assert.is_true(same(cjson.decode(d), decode(d)), d)
    end
    assert.are.equal(cjson.null, decode('{"a":null}').a)
    assert.are.equal(150, #decode(docs[11]))
    assert.are.equal(2, decode('{"a":1,"a":2}').a)
    if math.type then
      assert.are.equal("integer", math.type(decode('{"a":1500}').a))
      assert.are.equal("float", math.type(decode('{"a":1500.0}').a))
    end
    assert.are.equal(tonumber("123456789012345678"), decode("123456789012345678"))  -- as Lua reads it
  end)

  it("refuses what is not JSON, and numbers out of a double's range", function()
    for _, d in ipairs { "", " ", "{", "[1,]", '{"a":1,}', "{'a':1}", '{"a" 1}', "NaN", "Infinity", "-Infinity",
                         "0x10", "01", "1.", ".5", "+1", "1e", '"\1"', '"\\x"', '"\\u12"', "nul", "truex",
                         "[1] [2]", '{"a":1}junk', "1e400", "-1e400", "/* c */ 1", "[" .. ("1,"):rep(3) .. "]" } do
      assert.is_nil(decode(d), d)
    end
    local depth = require("nomba.oauth.core").LIMITS.json_depth    -- one depth for every JSON: 32
    assert.are.equal(32, depth)
    assert.is_nil(decode(("["):rep(depth + 1) .. ("]"):rep(depth + 1)))   -- deeper than that by default
    assert.is_table(decode(("["):rep(depth) .. ("]"):rep(depth)))
    assert.is_nil(decode('{"a":[[1]]}', 2))
    assert.has_error(function() decode("{}", 0) end)
  end)

  it("reads an answer's head into headers as libcurl's and the OpenResty transport's answers have them", function()
    local h = core._test.headers("HTTP/1.1 200 OK: fine\r\nContent-Type: application/json\r\nX-Dup: a\r\n" ..
                           "x-dup:b\r\nX-Pad: \t v w \t\r\nno colon here\r\nBad Name: x\r\n: empty\r\n\r\n")
    assert.are.same({ ["content-type"] = "application/json", ["x-dup"] = "a, b", ["x-pad"] = "v w" }, h)
  end)

  it("reads an API answer's code by the same grammar and depth (32) as its json", function()
    local c = require("nomba.oauth").new { account_id = "a", client_id = "b", client_secret = "s",
                                           base_url = "https://localhost" }
    local nest = function(n) return ("["):rep(n) .. ("]"):rep(n) end
    for _, case in ipairs {
      { '{"code":"00"}', "00" }, { '{"code":"\\u0030\\u0031","data":{"code":"x"}}', "01" }, { '{"code":12}', "12" },
      { '{"code":-0.5e1}', "-5" }, { '{"code":true}' }, { '{"code":null}' }, { '{"code":{"a":1}}' }, { '{"x":1}' },
      { '{"code":"a","code":"b"}', "b" }, { "{}" }, { '{"code":"00","deep":' .. nest(31) .. '}', "00" },
      { '{"code":"00","deep":' .. nest(32) .. '}' }, { '{"code":"00","n":1e400}' }, { "[1]" }, { '"00"' },
      { '{"code":"00"} x' }, { '{"code":"00",}' }, { '{"code":"\1"}' }, { '{"code":NaN}' },
    } do
      local d, want = case[1], case[2]
      local res, err = core.answer(c, "request", 200, { ["Content-Type"] = "application/json" }, d)
      local answer = res or err.response
      assert.are.equal(want, answer.code, d)
      assert.are.equal(want == nil or want == "00", res ~= nil, d)   -- a code but "00" refuses a 2xx
      -- the code is read where, and only where, the document is JSON
      assert.are.equal(decode(d, 32) ~= nil, answer.json ~= nil, d)
    end
  end)

end)
