--- What the stores share: the key check, lock owner ids and key families.
-- (Private to nomba.oauth.store.)
local core = require "nomba.oauth.core"

local type, error = type, error
local verifier = core.pkce.verifier

local C = {}

-- A unique owner id for a lock (CSPRNG, never a secret).
function C.owner_id() return verifier(43) end

function C.check_key(key)
  if type(key) ~= "string" or key == "" then error("nomba.oauth.store: key must be a non-empty string", 3) end
end

--- A key's family and the rest of it (key = family .. rest): the keys of
-- one family are kept together (Redis Cluster hashes a family to one slot).
-- A client's keys are its store id (22 base64url characters, no ':') and
-- that id followed by ":lock", ":gen" or ":401:<accountId>"; a webhook
-- delivery's are "webhook:<requestId>" and that followed by ":done". Any
-- other key is its own family up to its first ':'.
function C.family(key)
  if key:sub(1, 8) == "webhook:" then
    if #key > 13 and key:sub(-5) == ":done" then return key:sub(1, -6), ":done" end
    return key, ""
  end
  local at = key:find(":", 1, true)
  if not at then return key, "" end
  return key:sub(1, at - 1), key:sub(at)
end

return C
