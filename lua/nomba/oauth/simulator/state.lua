--- The simulator's shared state and helpers (inside nginx): the shared dict,
-- the settings, the clock, the clients, answering. (Part of the simulator.)
local cjson = require "cjson.safe"
local ngx = ngx
local ffi = require "ffi"

local S = {}

ffi.cdef [[
unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md);
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *md, const void *key, int key_len, const unsigned char *d,
                    size_t n, unsigned char *out, unsigned int *out_len);
]]

--- Binds the shared dict (init and init_worker).
function S.bind()
  S.dict = ngx.shared.sim
end

S.DEFAULTS = { rate_limit = 40,  lifetime = 1800, clock_offset = 0, code_lifetime = 60,
                   omit_date = false, expires_in = false, webhook_key = "sim-webhook-key-0001",
                   one_session = true, log = "all" }

function S.setting(name)
  local v = S.dict:get("set:" .. name)
  if v == nil then return S.DEFAULTS[name] end
  return v
end

function S.now()
  return ngx.now() + S.setting("clock_offset")
end

function S.b64url(s)
  return (ngx.encode_base64(s):gsub("%+", "-"):gsub("/", "_"):gsub("=", ""))
end

function S.sha256(s)
  local out = ffi.new("unsigned char[32]")
  ffi.C.SHA256(s, #s, out)
  return ffi.string(out, 32)
end

local ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"

function S.random_text(n)
  local t = {}
  for i = 1, n do
    local k = math.random(1, #ALNUM)
    t[i] = ALNUM:sub(k, k)
  end
  return table.concat(t)
end

function S.iso(t)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t))
end

function S.clients()
  return cjson.decode(S.dict:get("clients") or "[]") or {}
end

function S.find_client(client_id)
  for _, c in ipairs(S.clients()) do
    if c.client_id == client_id then return c end
  end
end

-- Answers with the server's clock (shifted by clock_offset) in Date.
function S.respond(status, obj, extra_headers)
  if ngx.ctx.drop_answer then return ngx.exit(444) end   -- a fault: processed, then the line goes dead
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  if not S.setting("omit_date") then
    ngx.header["Date"] = ngx.http_time(math.floor(S.now()))
  end
  for k, v in pairs(extra_headers or {}) do ngx.header[k] = v end
  ngx.print(cjson.encode(obj))
  return ngx.exit(status)
end

function S.fail(status, code, description, errors)
  return S.respond(status, { code = code, description = description, errors = errors })
end

function S.store(key, value, ttl)
  S.dict:set(key, cjson.encode(value), ttl and math.max(ttl, 0.001) or 0)
end

function S.load(key)
  local v = S.dict:get(key)
  return v and cjson.decode(v)
end


--- Whether a token's session is its client's current one (one session per
-- client, setting one_session; auth.lua starts sessions).
function S.current_session(client_id, session)
  if not S.setting("one_session") or session:sub(1, 5) == "pkce:" then return true end
  local cur = S.load("session:" .. client_id)
  return cur == nil or cur.id == session
end

function S.bearer()
  local h = ngx.var.http_authorization
  return h and h:match("^[Bb]earer%s+(%S+)$")
end

--- HMAC-SHA256 of msg under key, base64 (libcrypto through the FFI; the
-- simulator shares no code with the library it tests).
function S.hmac_b64(key, msg)
  local out, n = ffi.new("unsigned char[32]"), ffi.new("unsigned int[1]")
  ffi.C.HMAC(ffi.C.EVP_sha256(), key, #key, msg, #msg, out, n)
  return ngx.encode_base64(ffi.string(out, 32))
end

return S
