rockspec_format = "3.0"
package = "nomba-oauth"
version = "scm-1"
-- The repository's public address is written once, as the homepage below;
-- tools/release.sh derives a release's source.url from it.
source = {
  url = "git+https://github.com/nomba-oauth/nomba-oauth.git",
}
description = {
  summary = "OAuth 2.0 tokens for the Nomba API: issue, keep, refresh, revoke; PKCE helpers",
  detailed = [[
A C extension module on libcurl and OpenSSL, with a Lua layer for policy:
client:token() before every Nomba call, and never think about expiry,
refresh, retries or clock skew again. Secrets live in C memory and are wiped
on close; TLS verification is always on. Ships a Nomba simulator (nginx +
Lua) for offline development and tests.]],
  homepage = "https://github.com/nomba-oauth/nomba-oauth",
  issues_url = "https://github.com/nomba-oauth/nomba-oauth/issues",
  license = "MIT",
  labels = { "oauth", "nomba", "payments", "pkce" },
}
dependencies = {
  "lua >= 5.1, < 5.5",
  "lua-cjson >= 2.1",
}
-- CURL is found by its library: Debian installs curl/curl.h under the
-- multiarch include directory, where LuaRocks 3.8 does not look for headers
-- (the compiler finds it there by itself).
external_dependencies = {
  CURL = { library = "curl" },
  OPENSSL = { header = "openssl/evp.h", library = "crypto" },
}
build = {
  type = "builtin",
  modules = {
    ["nomba.oauth"] = "lua/nomba/oauth.lua",
    ["nomba.oauth.options"] = "lua/nomba/oauth/options.lua",
    ["nomba.oauth.platform"] = "lua/nomba/oauth/platform.lua",
    ["nomba.oauth.events"] = "lua/nomba/oauth/events.lua",
    ["nomba.oauth.shared_token"] = "lua/nomba/oauth/shared_token.lua",
    ["nomba.oauth.wire"] = "lua/nomba/oauth/wire.lua",
    ["nomba.oauth.machine"] = "lua/nomba/oauth/machine.lua",
    ["nomba.oauth.metrics"] = "lua/nomba/oauth/metrics.lua",
    ["nomba.oauth.renewal"] = "lua/nomba/oauth/renewal.lua",
    ["nomba.oauth.unauthorized"] = "lua/nomba/oauth/unauthorized.lua",
    ["nomba.oauth.token"] = "lua/nomba/oauth/token.lua",
    ["nomba.oauth.client"] = "lua/nomba/oauth/client.lua",
    ["nomba.oauth.request"] = "lua/nomba/oauth/request.lua",
    ["nomba.oauth.store"] = "lua/nomba/oauth/store.lua",
    ["nomba.oauth.store.keys"] = "lua/nomba/oauth/store/keys.lua",
    ["nomba.oauth.store.redis"] = "lua/nomba/oauth/store/redis.lua",
    ["nomba.oauth.store.redis_node"] = "lua/nomba/oauth/store/redis_node.lua",
    ["nomba.oauth.store.sentinel"] = "lua/nomba/oauth/store/sentinel.lua",
    ["nomba.oauth.store.cluster"] = "lua/nomba/oauth/store/cluster.lua",
    ["nomba.oauth.store.file"] = "lua/nomba/oauth/store/file.lua",
    ["nomba.oauth.webhook"] = "lua/nomba/oauth/webhook.lua",
    ["nomba.oauth.resty"] = "lua/nomba/oauth/resty.lua",
    ["nomba.oauth.simulator"] = "lua/nomba/oauth/simulator.lua",
    ["nomba.oauth.simulator.server"] = "lua/nomba/oauth/simulator/server.lua",
    ["nomba.oauth.simulator.nginx"] = "lua/nomba/oauth/simulator/nginx.lua",
    ["nomba.oauth.simulator.state"] = "lua/nomba/oauth/simulator/state.lua",
    ["nomba.oauth.simulator.auth"] = "lua/nomba/oauth/simulator/auth.lua",
    ["nomba.oauth.simulator.resources"] = "lua/nomba/oauth/simulator/resources.lua",
    ["nomba.oauth.simulator.faults"] = "lua/nomba/oauth/simulator/faults.lua",
    ["nomba.oauth.simulator.webhooks"] = "lua/nomba/oauth/simulator/webhooks.lua",
    ["nomba.oauth.core"] = {
      sources = { "src/core.c", "src/client.c", "src/token.c", "src/attempt.c", "src/build.c", "src/interpret.c", "src/answer.c", "src/proto.c", "src/http.c", "src/curlmem.c", "src/fds.c", "src/err.c", "src/codec.c",
                  "src/sbuf.c", "src/timeparse.c", "src/pkce.c", "src/seal.c", "src/url.c", "src/endpoint.c", "src/json.c",
                  "src/head.c", "src/frame.c", "src/outcome.c", "src/webhook.c", "src/filestore.c", "src/slot.c" },
      defines = { "_GNU_SOURCE" },
      libraries = { "curl", "ssl", "crypto" },
      incdirs = { "$(CURL_INCDIR)", "$(OPENSSL_INCDIR)" },
      libdirs = { "$(CURL_LIBDIR)", "$(OPENSSL_LIBDIR)" },
    },
  },
  install = {
    bin = { ["nomba-oauth"] = "bin/nomba-oauth" },
  },
}
-- `luarocks test` runs the Makefile's suite: it builds the test build of the
-- module (with its test hooks) and starts the simulator the specs need.
test = {
  type = "command",
  command = "make test",
}
