--- What the stores share: the key check and lock owner ids.
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

return C
