--- The 401 rule: which 401s a renewal cannot cure.
--
-- Nomba answers 401 to a valid token sent with an accountId it does not
-- cover (a wrong or unlinked sub-account), as well as to a token it no
-- longer honours. Renewing for the first kind would rotate the session the
-- whole fleet shares on every such call, and cure nothing. So:
--   * a 401 invalidates the token sent, renews once (through the store's
--     lock: a token another member renewed meanwhile is adopted instead)
--     and the call is made once more (request.lua);
--   * the renewed token is marked as renewed for that accountId's 401 (one
--     other than the client's own), for the fleet (in the store) and for a
--     moment (twice the timeout): a 401 for the same accountId on it
--     meanwhile (another member's concurrent call) is the caller's;
--   * a 401 on that renewed token proves the accountId, not the token, is
--     refused: the pair (accountId, token) is marked for the token's life;
--     an accountId other than the client's own is marked for
--     a day (DEFAULTS.unauthorized.foreign_ttl) whatever the token;
--   * a 401 for a marked pair (or a marked foreign accountId) is the
--     caller's error: kind "api", status 401, a message naming the
--     accountId, and no renewal.
-- A genuine revocation still renews once (the renewed token works, nothing
-- is marked). At most one 401-driven renewal per token for the fleet.
-- A mark names the token by core.token_id (a digest), never the token.
-- (Private to nomba.oauth.)
local core = require "nomba.oauth.core"
local platform = require "nomba.oauth.platform"
local shared_token = require "nomba.oauth.shared_token"
local DEFAULTS = require("nomba.oauth.options").DEFAULTS

local math_max, math_min = math.max, math.min
local now, token_id = platform.now, core.token_id

local U = {}

local RULE = DEFAULTS.unauthorized
local FOREIGN_TTL = RULE.foreign_ttl
local ANY = "*"                 -- a foreign accountId: whatever the token
local MARKS_MAX = RULE.kept     -- accountIds kept here; then it starts over
local RECHECK_FOREIGN = RULE.recheck

local function store_key(st, account)
  return st.skey .. ":401:" .. account
end

local function remember(st, account, id, ttl)
  local marks = st.refused
  if not marks or st.refused_n >= MARKS_MAX then
    marks = {}
    st.refused, st.refused_n = marks, 0
  end
  if not marks[account] then st.refused_n = st.refused_n + 1 end
  marks[account] = { id = id, till = now() + ttl }
end

--- Whether a 401 for `account` on the token `tok` is the caller's error
-- (the pair, or the foreign accountId, is marked here or in the store).
function U.refused(self, st, account, tok)
  local id = token_id(tok)
  local m = st.refused and st.refused[account]
  if m and m.till > now() and (m.id == ANY or m.id == id) then return true end
  if not st.store then return false end
  local v = shared_token.call(st, "get", store_key(st, account))
  if v ~= ANY and v ~= id then return false end
  remember(st, account, v, v == ANY and RECHECK_FOREIGN or
                           math_min(RULE.renewed_timeouts * st.timeout, core.remaining(self)))
  return true
end

-- Writes a mark, here and in the store.
local function mark(st, account, v, ttl)
  ttl = math_max(ttl, 0.001)
  remember(st, account, v, ttl)
  if st.store then shared_token.call(st, "set", store_key(st, account), v, ttl) end
end

--- Marks the token `tok`, just renewed for a 401 to `account`, for a
-- moment, when `account` is not the client's own (a 401 to the client's
-- own accountId is a revocation, cured by every renewal, or a mistaken
-- configuration that fails every call: its second 401 marks it).
function U.renewed(st, account, tok)
  if account == st.account_id then return end
  local m = st.refused and st.refused[account]
  if m and m.id == ANY and m.till > now() then return end    -- marked for good already
  mark(st, account, token_id(tok), RULE.renewed_timeouts * st.timeout)
end

--- Marks `account` as refused on the token `tok`, renewed for its 401 and
-- refused again.
function U.mark(self, st, account, tok)
  if account ~= st.account_id then return mark(st, account, ANY, FOREIGN_TTL) end
  mark(st, account, token_id(tok), math_max(core.remaining(self), 1))
end

--- The caller's error for a 401 that renewing cannot cure: the 401's own
-- error (its status, code, response), said so.
function U.error(err, account)
  err.kind, err.retryable = "api", false
  err.message = "HTTP 401: Nomba refuses accountId " .. account .. " with this client's token, which " ..
    "was just renewed (a wrong or unlinked sub-account?); the token is not renewed again for it"
  return err
end

return U
