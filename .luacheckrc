std = "max"
max_line_length = 120
exclude_files = { "build/**", "docs/**" }
files["spec/**"] = { std = "+busted" }
files["lua/nomba/oauth/simulator/server.lua"] = { globals = { "ngx" } }
files["lua/nomba/oauth/resty.lua"] = { globals = { "ngx" } }
files["examples/openresty/**"] = { globals = { "ngx" } }
files["spec/openresty/**"] = { globals = { "ngx" } }
files["bench/openresty_bench.lua"] = { globals = { "ngx" } }
