-- The date parsers behind expiresAt, Date and Retry-After (C, fuzzed too).
local core = require "nomba.oauth.core"

describe("time parsing", function()
  local T = 1657290780   -- 2022-07-08T14:33:00Z

  it("reads ISO 8601 liberally", function()
    for _, s in ipairs { "2022-07-08T14:33:00Z", "2022-07-08t14:33:00z", "2022-07-08 14:33:00Z",
                         "2022-07-08T14:33:00", "2022-07-08T14:33Z", "2022-07-08T15:33:00+01:00",
                         "2022-07-08T13:33:00-01:00", "2022-07-08T15:33:00+0100",
                         "2022-07-08T15:33:00+01", "2022-07-08T20:03:00+05:30" } do
      assert.are.equal(T, core.parse_time(s), s)
    end
    assert.is_true(math.abs(core.parse_time("2022-07-08T14:33:00.250Z") - (T + 0.25)) < 1e-6)
    assert.is_true(math.abs(core.parse_time("2022-07-08T14:33:00.123456789123Z") - (T + 0.123456789)) < 1e-6)
    assert.are.equal(951782400, core.parse_time("2000-02-29T00:00:00Z"))
  end)

  it("refuses what is not a time", function()
    for _, s in ipairs { "", "2022", "2022-07-08", "2022-13-01T00:00:00Z", "2022-02-30T00:00:00Z",
                         "2021-02-29T00:00:00Z", "2022-07-08T24:00:00Z", "2022-07-08T14:33:00.Z",
                         "2022-07-08T14:33:00Q", "2022-07-08T14:33:00+25:00", "2022-07-08T14:33:00Zjunk",
                         "1969-12-31T23:59:59Z", "２０２２-07-08T14:33:00Z", "2022-07-08T14:33:00\0Z" } do
      assert.is_nil(core.parse_time(s), s)
    end
  end)

  it("reads the three HTTP-date forms", function()
    assert.are.equal(784111777, core.parse_time("Sun, 06 Nov 1994 08:49:37 GMT"))
    assert.are.equal(784111777, core.parse_time("Sunday, 06-Nov-94 08:49:37 GMT"))
    assert.are.equal(784111777, core.parse_time("Sun Nov  6 08:49:37 1994"))
    assert.is_nil(core.parse_time("Sun, 06 Nov 1994 08:49:37 PST"))
    assert.is_nil(core.parse_time("Sun, 06 Foo 1994 08:49:37 GMT"))
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
