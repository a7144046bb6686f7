std = "max"
max_line_length = 120
exclude_files = { "build/**" }
files["spec/**"] = { std = "+busted" }
files["lua/nomba/oauth/simulator/**"] = { globals = { "ngx" } }
files["lua/nomba/oauth/resty.lua"] = { globals = { "ngx" } }
files["lua/nomba/oauth/resty/**"] = { globals = { "ngx" } }
files["examples/openresty/**"] = { globals = { "ngx" } }
files["spec/openresty/**"] = { globals = { "ngx" } }
files["bench/openresty_bench.lua"] = { globals = { "ngx" } }
files["tools/soak_app.lua"] = { globals = { "ngx" } }
