--- A connection to one Redis node: made, greeted, asked, bounded, closed.
-- (Private to nomba.oauth.store.redis and its Sentinel and Cluster routes.)
--
-- Two client libraries behind one face: redis-lua (Debian lua-redis, over
-- LuaSocket, blocking) in plain Lua, lua-resty-redis on cosockets in
-- OpenResty. redis-lua raises on a Redis error reply and lua-resty-redis
-- returns it: `N.command` answers both as `value` or `nil, message`.
local DEFAULTS = require("nomba.oauth.options").DEFAULTS.store

local type, error, tostring, pcall, rawget, select = type, error, tostring, pcall, rawget, select
local unpack = table.unpack or unpack    -- luacheck: ignore 143

local N = {}

function N.in_openresty()
  local ngx = rawget(_G, "ngx")
  return type(ngx) == "table" and type(ngx.socket) == "table" and type(ngx.get_phase) == "function" and
         ngx.get_phase() ~= "init"
end

local redis_lua                              -- the redis-lua module, loaded when first needed
local function plain_lib()
  if redis_lua then return redis_lua end
  if not package.path:find("/usr/share/lua/5.1/", 1, true) then
    package.path = package.path .. ";/usr/share/lua/5.1/?.lua"    -- Debian's lua-redis, on any Lua
  end
  local ok, lib = pcall(require, "redis")
  if not ok then error("nomba.oauth.store.redis: redis-lua (Debian lua-redis) is not installed", 4) end
  redis_lua = lib
  return lib
end

local resty_lib
local function resty()
  if resty_lib then return resty_lib end
  local ok, lib = pcall(require, "resty.redis")
  if not ok then ok, lib = pcall(require, "nginx.redis") end     -- Debian's lua-nginx-redis
  if not ok then error("nomba.oauth.store.redis: lua-resty-redis is not installed", 4) end
  resty_lib = lib
  return lib
end

-- redis-lua's error text, as Redis said it: "redis error: MOVED 1 h:p" raised
-- with a position before it.
local function reply_text(e)
  local s = tostring(e)
  return s:match("redis error: (.*)$") or s:match("^[^:]*:%d+: (.*)$") or s
end

local plain_cmds = {}                        -- redis-lua: a function per command name, made once
--- Any command on a connection: its answer, or nil and a message (a Redis
-- error reply or a connection failure, from either library).
function N.command(conn, name, ...)
  if type(rawget(conn, "network")) == "table" then                 -- redis-lua
    local f = plain_cmds[name]
    if not f then
      f = plain_lib().command(name:upper())
      plain_cmds[name] = f
    end
    local n = select("#", ...)
    local args = { ... }
    local ok, v = pcall(function() return f(conn, unpack(args, 1, n)) end)
    if not ok then return nil, reply_text(v) end
    return v
  end
  local v, err = conn[name](conn, ...)
  if v == nil and err ~= nil then return nil, tostring(err) end
  return v
end

--- A connection failure a new connection may cure (not a command Redis refused).
function N.broken(err)
  local s = tostring(err):lower()
  return s:find("closed", 1, true) or s:find("timeout", 1, true) or s:find("refused", 1, true) or
         s:find("broken pipe", 1, true) or s:find("reset", 1, true) or s:find("connect", 1, true) or
         s:find("loading", 1, true) or s:find("noauth", 1, true)
end

--- Bounds each Redis call of a connection, where the client library allows it.
function N.bound(conn, seconds)
  if not seconds then return end
  if type(conn.set_timeout) == "function" then                   -- lua-resty-redis
    conn:set_timeout(seconds * 1000)
  elseif type(conn.network) == "table" and conn.network.socket then   -- redis-lua (LuaSocket)
    conn.network.socket:settimeout(seconds)
  end
end

--- Closes a connection that failed, now: left to the garbage collector, its
-- descriptor would stay open (half-closed after a Redis restart) until a
-- collection comes.
function N.drop(conn)
  if type(conn) ~= "table" then return end
  local net = rawget(conn, "network")
  if type(net) == "table" and net.socket then                    -- redis-lua (LuaSocket)
    pcall(net.socket.close, net.socket)
  elseif type(conn.close) == "function" then                     -- lua-resty-redis
    pcall(conn.close, conn)
  end
end

--- Gives a per-operation connection back: to nginx's pool when it is
-- sound, else closed. A sound redis-lua connection is closed when `owned`
-- (made here for one operation), else left to whoever made it (a connect
-- function may keep and hand out one connection).
function N.release(conn, sound, keepalive, owned)
  if sound and type(conn.set_keepalive) == "function" then
    conn:set_keepalive(keepalive, 16)
  elseif not sound or owned then
    N.drop(conn)
  end
end

--- AUTH (with an ACL user when given) and SELECT on a new connection; the
-- password goes to Redis only, never into a message.
function N.greet(conn, p, who)
  if p.password ~= nil then
    local v, err
    if p.username ~= nil then
      v, err = N.command(conn, "auth", p.username, p.password)
    else
      v, err = N.command(conn, "auth", p.password)
    end
    if v == nil and err or v == false then
      return nil, (who or "redis") .. " AUTH failed" .. (p.username and (" for user " .. p.username) or "")
    end
  end
  if p.db ~= nil then
    local v, err = N.command(conn, "select", p.db)
    if v == nil and err then return nil, (who or "redis") .. " SELECT " .. tostring(p.db) .. " failed" end
  end
  return true
end

--- A function connecting to any node, `connect(host, port, seconds)` ->
-- connection, a new one (true when it was made now, not taken from nginx's
-- pool) | nil, err. `p`: the parameters (`username`, `password`, `db`,
-- `ssl`, `server_name`, `pool`: a prefix for nginx's pool names);
-- `seconds`: what the connect may take. In OpenResty lua-resty-redis on cosockets (TLS
-- verified against lua_ssl_trusted_certificate), elsewhere redis-lua.
function N.connector(p)
  if N.in_openresty() then
    local lib = resty()
    return function(host, port, seconds)
      local red = lib:new()
      red:set_timeout(seconds * 1000)
      local ok2, err = red:connect(host, port, { pool = p.pool .. host .. ":" .. port, pool_size = p.pool_size })
      if not ok2 then return nil, "redis connect " .. host .. ":" .. port .. ": " .. tostring(err) end
      if red:get_reused_times() ~= 0 then return red, false end
      if p.ssl then
        -- lua-resty-redis 0.27 (Debian) has no TLS option: the handshake on its socket,
        -- verified (there is no switch to turn verification off)
        local sock = rawget(red, "_sock")
        -- (Debian's lua-resty-core 0.1.25 can raise there: keep it a failure)
        local called, session, herr = pcall(sock.sslhandshake, sock, nil, p.server_name or host, true)
        if not called then session, herr = nil, session end
        if not session then
          red:close()
          return nil, "redis TLS handshake: " .. tostring(herr)
        end
      end
      local greeted, gerr = N.greet(red, p)
      if not greeted then
        red:close()
        return nil, gerr
      end
      return red, true
    end
  end
  if p.ssl then
    error("nomba.oauth.store.redis: ssl needs OpenResty's cosockets (redis-lua speaks plain TCP)", 4)
  end
  local redis = plain_lib()
  return function(host, port, seconds)
    local okc, conn = pcall(redis.connect, { host = host, port = port, timeout = seconds })
    if not okc then return nil, "redis connect " .. host .. ":" .. port .. ": " .. reply_text(conn) end
    local greeted, gerr = N.greet(conn, p)
    if not greeted then
      N.drop(conn)
      return nil, gerr
    end
    return conn, true
  end
end

N.DEFAULT_TIMEOUT = DEFAULTS.redis_timeout

return N
