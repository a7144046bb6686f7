-- The handler of make bench's OpenResty row: one client per worker on
-- cosockets with the shared dict store; /headers sets the Authorization
-- header from client:headers(), /constant sets a constant one.
local oauth = require "nomba.oauth"
local M = {}

function M.init_worker(cfg)
  M.client = oauth.new {
    account_id = cfg.account_id, client_id = cfg.client_id, client_secret = cfg.client_secret,
    base_url = cfg.url, transport = require "nomba.oauth.resty",
    store = oauth.store.shdict(ngx.shared.nomba),
  }
end

function M.headers()
  local h = assert(M.client:headers())
  ngx.header["X-Authorization"] = h.Authorization
  ngx.header["X-Account"] = h.accountId
  ngx.say("ok")
  -- the baseline sends headers of the same sizes, so only the work differs
  M.const_auth = M.const_auth or ("Bearer " .. ("x"):rep(#h.Authorization - 7))
  M.const_account = M.const_account or ("y"):rep(#h.accountId)
end

function M.constant()
  ngx.header["X-Authorization"] = M.const_auth or "Bearer constant"
  ngx.header["X-Account"] = M.const_account or "account"
  ngx.say("ok")
end

return M
