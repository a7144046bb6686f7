--- The chaos soak's record in bench/README.md: bench/soak.json (the report
-- of `SOAK_S=1800 SOAK_JSON=bench/soak.json make soak`, its event list
-- left out) as a Markdown section. bench/bench.lua appends it to the README
-- it writes; alone, it puts the section into an existing README:
--    lua5.4 tools/soak_report.lua bench/soak.json bench/README.md
local cjson = require "cjson"

local M = {}
M.HEADING = "## The chaos soak, 30 minutes"

--- The section (a list of lines) from a report table.
function M.lines(r)
  local out = { M.HEADING, "",
    ("`SOAK_S=%d make soak` (`tools/soak.lua`): %d cycles of the faults, %d s tokens, %d members (two nginx " ..
     "of 4 workers, %s) sharing one session through a persistent Redis. Targets as " ..
     "`spec/24-soak` asserts them."):format(r.seconds, r.cycles, r.lifetime, r.members or 12,
     r.foreign and "five Lua processes, one naming a foreign accountId in every call" or "four Lua processes"), "",
    "| what | figure | target |", "| --- | ---: | --- |" }
  local function row(what, figure, target) out[#out + 1] = ("| %s | %s | %s |"):format(what, figure, target) end
  row("API calls outside faults that succeeded", ("%d of %d (%.2f%%)"):format(r.ok_outside_faults,
      r.calls_outside_faults, 100 * r.ok_fraction), "100%")
  row("API calls during faults that succeeded", ("%d of %d"):format(r.ok_during_faults, r.calls_during_faults),
      "report")
  if r.foreign then
    row("the foreign member's calls outside faults that were the caller's error (401, no renewal)",
        ("%d of %d"):format(r.foreign.refused, r.foreign.calls), "all")
  end
  row("logins, refreshes", ("%d, %d"):format(r.logins, r.refreshes), "report")
  row("renewals per token lifetime, the whole fleet", ("%.2f"):format(r.renewals_per_lifetime), "<= 1.2")
  row("sessions ended by a parallel login, outside faults (in all)",
      ("%d (%d)"):format(r.sessions_ended_outside_faults, r.sessions_ended), "0")
  row("calls refused: ended session outside faults, expired token, revoked (deliberately)",
      ("%d, %d, %d"):format(r.refused_ended_outside_faults, r.refused.expired, r.refused.unknown), "0, 0, report")
  row("headers() in nginx, p50 / p99: quiet", ("%d / %d us"):format(r.headers_p50_us.quiet, r.headers_p99_us.quiet),
      "report")
  row("headers() p99 during faults (ratio to quiet)", ("%d us (%.2fx)"):format(r.headers_p99_us.faults,
      r.headers_p99_ratio), "unchanged: report")
  row("webhook events granted once, twice, never", ("%d, %d, %d of %d"):format(r.webhooks.once, r.webhooks.twice,
      r.webhooks.never, r.webhooks.answered), "all once")
  local names = {}
  for name in pairs(r.growth) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local g = r.growth[name]
    row(("growth of %s, end of cycle 1 to the end"):format(name), ("RSS %+d KiB of %d, descriptors %+d"):format(
        g.rss_kib, g.rss_from_kib, g.fds), "flat")
  end
  local slow = {}
  for name, us in pairs(r.headers_p99_us_by_fault or {}) do slow[#slow + 1] = { name, us } end
  table.sort(slow, function(a, b) return a[2] > b[2] end)
  out[#out + 1] = ""
  out[#out + 1] = "headers() p99 by fault: " .. table.concat((function()
    local t = {}
    for i, s in ipairs(slow) do t[i] = ("%s %d us"):format(s[1], s[2]) end
    return t
  end)(), "; ") .. ". The slowest are waits for a renewal that must happen (the killed holder's " ..
    "rotation at Nomba, a reload's new workers); p50 stays where it is in every phase."
  if r.note then
    out[#out + 1] = ""
    out[#out + 1] = r.note
  end
  out[#out + 1] = ""
  return out
end

--- Reads a report file; nil when there is none.
function M.read(path)
  local f = io.open(path)
  if not f then return nil end
  local r = cjson.decode(f:read("*a"))
  f:close()
  return r
end

if arg and arg[0] and arg[0]:match("soak_report%.lua$") then
  local r = assert(M.read(assert(arg[1], "usage: soak_report.lua SOAK.json README.md")), "no report")
  local path = assert(arg[2])
  local f = assert(io.open(path))
  local text = f:read("*a")
  f:close()
  local at = text:find("\n" .. M.HEADING, 1, true)
  if at then text = text:sub(1, at) end
  text = text:gsub("\n*$", "\n\n") .. table.concat(M.lines(r), "\n")
  f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

return M
