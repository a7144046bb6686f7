-- An HTTP CONNECT proxy on loopback for the specs (lua-luv): tunnels to
-- loopback targets only, and logs each CONNECT's target to LOGFILE. MODE
-- "407" asks for authentication, "403" refuses, anything else tunnels.
--    lua5.4 spec/connect_proxy.lua PORT LOGFILE [MODE] &
local uv = require "luv"
local port, logfile, mode = tonumber(arg[1]), arg[2], arg[3] or "ok"
local log = assert(io.open(logfile, "a"))
log:setvbuf("line")

local server = uv.new_tcp()
assert(server:bind("127.0.0.1", port))
assert(server:listen(64, function()
  local client = uv.new_tcp()
  server:accept(client)
  local head = ""
  local upstream
  client:read_start(function(err, data)
    if err or not data then
      client:close()
      if upstream and not upstream:is_closing() then upstream:close() end
      return
    end
    if upstream then return upstream:write(data) end
    head = head .. data
    local e = head:find("\r\n\r\n", 1, true)
    if not e then
      if #head > 8192 then client:close() end
      return
    end
    local host, tport = head:match("^CONNECT ([%w%.%-]+):(%d+) HTTP/1%.1\r\n")
    log:write(("CONNECT %s:%s\n"):format(tostring(host), tostring(tport)))
    if mode == "407" then
      client:write("HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n" ..
                   "Content-Length: 0\r\n\r\n")
      return client:shutdown(function() client:close() end)
    end
    if mode == "403" or not host or not (host == "localhost" or host:match("^127%.")) then
      client:write("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
      return client:shutdown(function() client:close() end)
    end
    local rest = head:sub(e + 4)
    upstream = uv.new_tcp()
    upstream:connect("127.0.0.1", tonumber(tport), function(cerr)
      if cerr then
        client:write("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        return client:shutdown(function() client:close() end)
      end
      client:write("HTTP/1.1 200 Connection established\r\nVia: spec-proxy\r\n\r\n")
      if #rest > 0 then upstream:write(rest) end
      upstream:read_start(function(uerr, udata)
        if uerr or not udata then
          upstream:close()
          if not client:is_closing() then client:shutdown(function() client:close() end) end
          return
        end
        client:write(udata)
      end)
    end)
  end)
end))
log:write("listening\n")
uv.run()
