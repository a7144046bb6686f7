--- make docs-browser: the LDoc pages as a reader sees them, in a real
-- browser (Debian chromium, headless). For each page a probe page loads it
-- in an iframe and reports, from the rendered DOM and computed styles, its
-- section headings with the functions under each, whether every table cell
-- has a visible border, and Markdown shown as text (a code block rendered as
-- a paragraph, a code span cut into tags shown as text); the probe's
-- DOM is dumped by chromium and judged here.
--    lua5.4 tools/docs_browser.lua build/docs
local dir = assert(arg[1], "usage: docs_browser.lua DOCDIR")
local CHROMIUM = os.getenv("CHROMIUM") or "chromium"

local PROBE = [[
<!DOCTYPE html><html><body><iframe id="f" src="%s" style="width:1200px;height:800px"></iframe>
<pre id="out">pending</pre>
<script>
document.getElementById("f").onload = function () {
  var d = this.contentDocument, out = [];
  var walk = d.querySelectorAll("h2.section-header, dl.function > dt > a[name], dl.table > dt > a[name]");
  for (var i = 0; i < walk.length; i++) {
    var e = walk[i];
    if (e.tagName === "H2") out.push("section " + e.textContent.trim());
    else out.push("item " + e.getAttribute("name"));
  }
  var cells = d.querySelectorAll("td, th"), bare = 0;
  for (var j = 0; j < cells.length; j++) {
    var st = d.defaultView.getComputedStyle(cells[j]);
    if (parseFloat(st.borderTopWidth) === 0 || st.borderTopStyle === "none") bare++;
  }
  out.push("cells " + cells.length + " bare " + bare);
  // Markdown the renderer got wrong shows as text: a code tag, or a fenced block's language
  var text = d.body.innerText, broken = 0, at = 0;
  while ((at = text.indexOf("</code>", at)) >= 0) { broken++; at++; }
  var codes = d.querySelectorAll("p > code");
  for (var k = 0; k < codes.length; k++) if (/^(lua|sh|nginx)\n/.test(codes[k].textContent)) broken++;
  out.push("code-paragraphs " + broken);
  out.push("width " + d.documentElement.scrollWidth);
  document.getElementById("out").textContent = out.join("\n");
};
</script></body></html>
]]

local function run(page)
  local probe = os.tmpname() .. ".html"
  local f = assert(io.open(probe, "w"))
  f:write(PROBE:format("file://" .. page))
  f:close()
  local cmd = ("%s --headless --no-sandbox --disable-gpu --allow-file-access-from-files " ..
               "--virtual-time-budget=5000 --dump-dom 'file://%s' 2>/dev/null"):format(CHROMIUM, probe)
  local p = io.popen(cmd)
  local dom = p:read("*a")
  p:close()
  os.remove(probe)
  local out = dom:match('<pre id="out">(.-)</pre>')
  assert(out and out ~= "pending", "chromium did not render " .. page .. ":\n" .. dom:sub(1, 500))
  return out:gsub("&amp;", "&"):gsub("&lt;", "<"):gsub("&gt;", ">"):gsub("&#39;", "'")
end

local failed = 0
local function check(ok, what)
  if not ok then
    failed = failed + 1
    print("  FAIL " .. what)
  end
end

local pages = {}
for name in io.popen("cd " .. dir .. " && ls modules/*.html topics/*.html"):lines() do pages[#pages + 1] = name end
assert(#pages >= 8, "too few pages in " .. dir)
local root = io.popen("cd " .. dir .. " && pwd"):read("*l")
for _, name in ipairs(pages) do
  local out = run(root .. "/" .. name)
  local cells, bare = out:match("cells (%d+) bare (%d+)")
  print(("%s: %d table cells (%d without a border), %s"):format(name, cells, bare,
        out:match("code%-paragraphs %d+")))
  check(tonumber(bare) == 0, name .. ": table cells without a border")
  check(out:match("code%-paragraphs (%d+)") == "0", name .. ": a code block rendered as a paragraph")
  if name == "modules/nomba.oauth.html" then
    local sections, section = {}, nil
    for line in out:gmatch("[^\n]+") do
      local s = line:match("^section (.*)")
      local item = line:match("^item (.*)")
      if s then
        section = s
        sections[#sections + 1] = s
      elseif item then
        if item == "new" then check(section == "Making a client", "new() is under " .. tostring(section)) end
        if item == "Client:token" or item == "Client:request" then
          check(section == "A client's methods", item .. " is under " .. tostring(section))
        end
        if item:match("^pkce%.") then check(section == "PKCE helpers", item .. " is under " .. tostring(section)) end
      end
    end
    print("  sections: " .. table.concat(sections, " | "))
    check(#sections == 4, "nomba.oauth has " .. #sections .. " sections")
  end
end
if failed > 0 then
  print(failed .. " problem(s) in the rendered pages")
  os.exit(1)
end
print("the pages render as intended in " .. io.popen(CHROMIUM .. " --version 2>/dev/null"):read("*l"))
