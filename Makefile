# nomba-oauth: build, test, demo.
#
#   make                 build nomba/oauth/core.so for Lua 5.4
#   make LUA=5.1|5.2|5.3|jit   the same for another runtime
#   make test            build, start the simulator, run the busted suite, stop it
#   make test-runtimes   the suite under LuaJIT, a smoke run under 5.1, 5.2, 5.3
#   make demo            start the simulator and run examples/client_credentials.lua
#   make openresty-demo  examples/openresty/ in a real nginx against the simulator
#   make env             the exports to run examples and the CLI from the checkout (eval "$(make -s env)")
#   make lint            luacheck on all Lua
#   make bench           benchmarks (bench/README.md, bench/results.json); never in make test
#   make soak            the chaos soak: a fleet sharing one session under faults (SOAK_S=1800 for 30 min;
#                        SOAK_REDIS=sentinel|cluster on Redis Sentinel or Cluster)
#   make examples        runs every example against the simulator
#   make docs            the LDoc API reference in build/docs/ (Markdown through lua-discount)
#   make rock            luarocks lint, offline install for 5.1, 5.3, 5.4 and LuaJIT, luarocks pack
#   make release VERSION=x.y.z   the release rockspec and source rock (tools/release.sh)
#   make check           every quality gate below, after make test
#   make asan            the suite under AddressSanitizer + UBSan
#   make valgrind        tools/lifecycle.lua under valgrind (leaks and errors)
#   make gc-stress       100,000 clients created and dropped; RSS and fds flat
#   make analyze         clang build, cppcheck, clang-tidy
#   make fuzz            libFuzzer harnesses, FUZZ_TIME seconds each (default 60)
#   make embed-demo      examples/embed/host.c: a C program with a Lua 5.4 state per thread
#   make tsan            that host and the module under ThreadSanitizer, 8 threads, then
#                        1,000 states made and closed with RSS and fds flat
#
# Honours CFLAGS, LDFLAGS, LUA_INCDIR, LIBFLAG and pkg-config. Never links -llua.

LUA        ?= 5.4
PKG_CONFIG ?= pkg-config

ifeq ($(LUA),jit)
  LUA_INCDIR ?= $(patsubst -I%,%,$(filter -I%,$(shell $(PKG_CONFIG) --cflags luajit 2>/dev/null)))
  LUA_BIN    ?= luajit
else
  LUA_INCDIR ?= /usr/include/lua$(LUA)
  LUA_BIN    ?= lua$(LUA)
endif

CC       ?= cc
CFLAGS   ?= -O2 -g
WARN     := -Wall -Wextra -Werror -Wshadow -Wmissing-prototypes -Wstrict-prototypes \
            -Wpointer-arith -Wformat=2
LIBFLAG  ?= -shared
DEPS_CFLAGS := $(shell $(PKG_CONFIG) --cflags libcurl libssl libcrypto 2>/dev/null)
DEPS_LIBS   := $(shell $(PKG_CONFIG) --libs libcurl libssl libcrypto 2>/dev/null || echo -lcurl -lssl -lcrypto)
ALL_CFLAGS  = $(CFLAGS) $(WARN) -std=c99 -D_GNU_SOURCE -fPIC -fvisibility=hidden \
              -I$(LUA_INCDIR) $(DEPS_CFLAGS) $(EXTRA_CFLAGS)

BUILD    ?= build/$(LUA)
SRCS     := src/core.c src/client.c src/token.c src/attempt.c src/build.c src/interpret.c src/answer.c src/proto.c src/http.c src/curlmem.c src/fds.c src/err.c src/sbuf.c src/codec.c \
            src/timeparse.c src/pkce.c src/seal.c src/url.c src/endpoint.c src/json.c src/head.c src/frame.c src/outcome.c src/webhook.c src/filestore.c src/slot.c
OBJS     := $(SRCS:src/%.c=$(BUILD)/obj/%.o)
MODULE   := $(BUILD)/nomba/oauth/core.so

# The test build adds test hooks (NOMBA_TEST_HOOKS) and lives apart.
TEST_BUILD := build/$(LUA)-test
BUSTED   ?= /usr/bin/busted
LUA_ENV   = LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$(CURDIR)/spec/?.lua;;" \
            LUA_CPATH="$(CURDIR)/$(BUILD)/?.so;;"
TEST_ENV  = LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$(CURDIR)/spec/?.lua;;" \
            LUA_CPATH="$(CURDIR)/$(TEST_BUILD)/?.so;;"

.PHONY: deb deps-demo deps-docs install uninstall docs-browser soak openresty-demo release embed-host embed-demo tsan env examples docs rock all test test-runtimes test-build jit-module demo lint clean deps bench check asan valgrind gc-stress analyze fuzz trace

all: $(MODULE)

$(BUILD)/obj/%.o: src/%.c src/nomba.h src/compat.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(MODULE): $(OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(LIBFLAG) $(LDFLAGS) -o $@ $(OBJS) $(DEPS_LIBS)

# The exports that run the examples and the CLI from this checkout:
#   eval "$(make -s env)"
env: all
	@mkdir -p $(BUILD)/bin
	@printf '%s\n' '#!/bin/sh' '# nomba-oauth from the checkout $(CURDIR) (made by make env)' \
	  'LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$${LUA_PATH:-;}"' \
	  'LUA_CPATH="$(CURDIR)/$(BUILD)/?.so;$${LUA_CPATH:-;}"' 'export LUA_PATH LUA_CPATH' \
	  'exec $(LUA_BIN) "$(CURDIR)/bin/nomba-oauth" "$$@"' > $(BUILD)/bin/nomba-oauth
	@chmod 755 $(BUILD)/bin/nomba-oauth
	@echo 'export LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;"'
	@echo 'export LUA_CPATH="$(CURDIR)/$(BUILD)/?.so;;"'
	@echo 'export PATH="$(CURDIR)/$(BUILD)/bin:$$PATH"'

# Installs what a fresh Debian 12 machine lacks (as root), or says what to install.
deps:
	@sh .ci/deps.sh
deps-demo:
	@sh .ci/deps.sh demo
deps-docs:
	@sh .ci/deps.sh docs

# The LuaJIT build of the module, for the specs that run inside nginx.
jit-module:
	@if [ "$(LUA)" != jit ]; then $(MAKE) -s all LUA=jit; fi

test-build:
	$(MAKE) all BUILD=$(TEST_BUILD) EXTRA_CFLAGS="-DNOMBA_TEST_HOOKS $(EXTRA_CFLAGS)"

# The other runtimes: the whole suite under LuaJIT, a smoke run for 5.1-5.3.
SMOKE_SPECS := spec/01-module_spec.lua spec/02-lifecycle_spec.lua spec/05-pkce_spec.lua \
               spec/14-docs_spec.lua
test-runtimes:
	$(MAKE) test LUA=jit BUSTED_ARGS=--exclude-tags=slow
	for v in 5.1 5.2 5.3; do $(MAKE) test LUA=$$v BUSTED_ARGS="$(SMOKE_SPECS)" || exit 1; done

test: deps all test-build jit-module
	$(TEST_ENV) $(LUA_BIN) tools/with-simulator.lua $(LUA_BIN) $(BUSTED) $(BUSTED_ARGS)

demo: deps-demo all
	$(LUA_ENV) $(LUA_BIN) tools/with-simulator.lua $(LUA_BIN) examples/client_credentials.lua

openresty-demo: deps jit-module
	$(LUA_ENV) $(LUA_BIN) tools/with-simulator.lua $(LUA_BIN) tools/openresty-demo.lua

# The chaos soak (tools/soak.lua): SOAK_S seconds (180; 1800 for a long run)
soak: deps all jit-module
	$(LUA_ENV) SOAK_S=$${SOAK_S:-180} $(LUA_BIN) tools/with-simulator.lua $(LUA_BIN) tools/soak.lua

lint:
	luacheck lua spec bin/nomba-oauth examples tools bench

EXAMPLES := examples/client_credentials.lua examples/pkce.lua examples/call_nomba_api.lua \
            examples/game_loop.lua examples/luv_loop.lua examples/cqueues_loop.lua examples/billing_hook.lua
examples: all
	@for e in $(EXAMPLES); do echo "== $$e"; \
	  $(LUA_ENV) $(LUA_BIN) tools/with-simulator.lua $(LUA_BIN) $$e || exit 1; done

docs: deps-docs
	@mkdir -p build/docs/docs
	ldoc -q .
	@echo "API reference: build/docs/index.html"

# The LDoc pages in a real browser (Debian chromium, headless): sections, tables, code blocks
docs-browser: docs
	$(LUA_BIN) tools/docs_browser.lua build/docs

ROCKSPEC := rockspec/nomba-oauth-scm-1.rockspec
rock:
	luarocks lint $(ROCKSPEC)
	sh tools/release.sh --lint
	@for v in 5.1 5.3 5.4; do \
	  tree=$$(mktemp -d); \
	  luarocks --lua-version=$$v --tree $$tree make --deps-mode=none $(ROCKSPEC) >/dev/null || exit 1; \
	  (cd / && eval "$$(luarocks --lua-version=$$v --tree $$tree path)" && \
	   lua$$v -e 'local o = require "nomba.oauth"; assert(#o.pkce.verifier() == 43); print("lua'$$v': " .. o._VERSION)') || exit 1; \
	  if [ $$v = 5.1 ]; then (cd / && eval "$$(luarocks --lua-version=5.1 --tree $$tree path)" && \
	   luajit -e 'local o = require "nomba.oauth"; assert(#o.pkce.verifier() == 43); print("luajit: " .. o._VERSION)') || exit 1; fi; \
	  rm -rf $$tree; \
	done
	rm -rf nomba src/*.o
	@# a source rock of the committed tree: the rockspec pointed at this repository
	@mkdir -p build/rock
	sed 's|^  url = "git+https://.*",$$|  url = "git+file://$(CURDIR)",|' $(ROCKSPEC) > build/rock/nomba-oauth-scm-1.rockspec
	cd build/rock && luarocks pack nomba-oauth-scm-1.rockspec >/dev/null && ls -l nomba-oauth-scm-1.src.rock

release:
	sh tools/release.sh $(VERSION)

# make install [PREFIX=/usr/local] [DESTDIR=] [LUA_VERSIONS="5.1 5.4"]: for every Lua
# whose headers are present (5.1's build serves LuaJIT too), the module in
# LIBDIR/lua/V (LIBDIR: PREFIX/lib) and the Lua files in PREFIX/share/lua/V
# (both on Lua's default paths for /usr/local), and bin/nomba-oauth run by
# the newest Lua.
PREFIX       ?= /usr/local
LIBDIR       ?= $(PREFIX)/lib
LUA_VERSIONS ?= $(shell for v in 5.1 5.2 5.3 5.4; do [ -f /usr/include/lua$$v/lua.h ] && printf '%s ' $$v; done)
LUA_FILES    := $(shell cd lua && find nomba -name '*.lua' | sort)
install:
	@[ -n "$(strip $(LUA_VERSIONS))" ] || { echo "install: no Lua headers (liblua5.x-dev) found"; exit 1; }
	@for v in $(LUA_VERSIONS); do \
	  $(MAKE) -s all LUA=$$v || exit 1; \
	  install -d "$(DESTDIR)$(LIBDIR)/lua/$$v/nomba/oauth" || exit 1; \
	  install -m 0644 build/$$v/nomba/oauth/core.so "$(DESTDIR)$(LIBDIR)/lua/$$v/nomba/oauth/core.so" || exit 1; \
	  for f in $(LUA_FILES); do \
	    install -D -m 0644 lua/$$f "$(DESTDIR)$(PREFIX)/share/lua/$$v/$$f" || exit 1; \
	  done; \
	  echo "install: Lua $$v -> $(DESTDIR)$(LIBDIR)/lua/$$v, $(DESTDIR)$(PREFIX)/share/lua/$$v"; \
	done
	@newest=$$(echo $(LUA_VERSIONS) | tr ' ' '\n' | tail -1); \
	install -d "$(DESTDIR)$(PREFIX)/bin" && \
	sed "1s|.*|#!/usr/bin/env lua$$newest|" bin/nomba-oauth > "$(DESTDIR)$(PREFIX)/bin/nomba-oauth" && \
	chmod 0755 "$(DESTDIR)$(PREFIX)/bin/nomba-oauth" && \
	echo "install: $(DESTDIR)$(PREFIX)/bin/nomba-oauth (lua$$newest)"

# make deb: the Debian package lua-nomba-oauth (dpkg-buildpackage with debhelper and
# dh-lua, for Lua 5.1 (and LuaJIT), 5.2, 5.3 and 5.4) in build/deb/
DEB_VERSION = $(shell sed -n '1s/^lua-nomba-oauth (\(.*\)) .*/\1/p' debian/changelog)
deb:
	@sh .ci/deps.sh deb
	rm -rf build/deb && mkdir -p build/deb/src
	git ls-files -z | xargs -0 cp --parents -t build/deb/src
	cd build/deb/src && dpkg-buildpackage -b -us -uc >../build.log 2>&1 || { tail -40 ../build.log; exit 1; }
	@ls build/deb/lua-nomba-oauth_$(DEB_VERSION)_*.deb

uninstall:
	@for v in $(LUA_VERSIONS); do \
	  rm -f "$(DESTDIR)$(LIBDIR)/lua/$$v/nomba/oauth/core.so"; \
	  for f in $(LUA_FILES); do rm -f "$(DESTDIR)$(PREFIX)/share/lua/$$v/$$f"; done; \
	done
	rm -f "$(DESTDIR)$(PREFIX)/bin/nomba-oauth"

BENCH_BIN := $(CURDIR)/build/bench
bench: all jit-module
	@mkdir -p $(BENCH_BIN)
	$(CC) -O2 -Wall -Wextra -Werror -o $(BENCH_BIN)/pkce_c bench/pkce_c.c $(DEPS_LIBS)
	$(CC) -O2 -Wall -Wextra -Werror -o $(BENCH_BIN)/curl_loop bench/curl_loop.c $(DEPS_LIBS)
	$(CC) -O2 -Wall -Wextra -Werror -o $(BENCH_BIN)/webhook_c bench/webhook_c.c $(DEPS_LIBS)
	@if command -v go >/dev/null 2>&1 && [ -d /usr/share/gocode/src/golang.org/x/oauth2 ]; then \
	  GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=$(CURDIR)/build/gocache \
	    go build -o $(BENCH_BIN)/go_tenants bench/go_tenants.go; \
	else echo "bench: Go's row needs golang-go and golang-golang-x-oauth2-dev (Debian)"; fi
	BENCH_BIN=$(BENCH_BIN) BENCH_LUAJIT_CPATH="$(CURDIR)/build/jit/?.so;;" $(LUA_ENV) $(LUA_BIN) \
	  tools/with-simulator.lua $(LUA_BIN) bench/bench.lua

# ---- quality gates ---------------------------------------------------------

check: test lint analyze asan valgrind gc-stress tsan fuzz

ASAN_BUILD := build/$(LUA)-asan
ASAN_LIB   := $(shell gcc -print-file-name=libasan.so)
ASAN_SAN   := address,undefined,float-cast-overflow
# float-cast-overflow is not part of -fsanitize=undefined: it is named so
# that a float-to-integer conversion out of range stops the run. (gcc's
# runtime: clang 14's LeakSanitizer crashes at exit in this sandbox.)
# LeakSanitizer sees only our module's and libcurl/OpenSSL's memory: Lua's
# own heap is still reachable at exit (busted does not close the state), so
# no suppression is needed; tools/asan.supp documents the only one we keep.
asan: jit-module
	$(MAKE) all BUILD=$(ASAN_BUILD) CC=gcc CFLAGS="-O1 -g -fno-omit-frame-pointer" \
	  EXTRA_CFLAGS="-DNOMBA_TEST_HOOKS -fsanitize=$(ASAN_SAN) -fno-sanitize-recover=all" \
	  LDFLAGS="-fsanitize=$(ASAN_SAN)"
	LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/spec/?.lua;;" LUA_CPATH="$(CURDIR)/$(ASAN_BUILD)/?.so;;" \
	  $(LUA_BIN) tools/with-simulator.lua env LD_PRELOAD=$(ASAN_LIB) \
	  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=23:detect_odr_violation=0 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tools/asan.supp:print_suppressions=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(LUA_BIN) $(BUSTED) --exclude-tags=slow,preload $(BUSTED_ARGS)

valgrind: test-build
	$(TEST_ENV) $(LUA_BIN) tools/with-simulator.lua valgrind -q --leak-check=full \
	  --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect \
	  --error-exitcode=1 --child-silent-after-fork=yes --suppressions=tools/valgrind.supp \
	  $(LUA_BIN) tools/lifecycle.lua

# the data path: the files token() and request() go through, on each driver (docs/ARCHITECTURE.md)
trace: all
	$(LUA_ENV) $(LUA_BIN) tools/with-simulator.lua $(LUA_BIN) tools/trace.lua

gc-stress: all
	$(LUA_ENV) $(LUA_BIN) tools/with-simulator.lua $(LUA_BIN) tools/gc_stress.lua

CPPCHECK_FLAGS := --enable=warning,performance,portability --error-exitcode=1 --inline-suppr \
                  --std=c99 -D__GNUC__ -DLUA_VERSION_NUM=504 --quiet
analyze:
	$(MAKE) all BUILD=build/$(LUA)-clang CC=clang
	cppcheck $(CPPCHECK_FLAGS) -I src src
	clang-tidy --quiet $(SRCS) -- $(ALL_CFLAGS) -DNOMBA_TEST_HOOKS

FUZZ_TIME  ?= 60
FUZZ_BUILD := build/fuzz
FUZZERS    := iso8601 httpdate verifier answer url webhook frame
FUZZ_CFLAGS = -g -O1 -fsanitize=fuzzer,address,undefined,float-cast-overflow -fno-sanitize-recover=all -D_GNU_SOURCE -I src -I$(LUA_INCDIR) $(DEPS_CFLAGS)
FUZZ_LIBS   = $(SRCS) \
              -llua$(LUA) $(DEPS_LIBS)
fuzz:
	@mkdir -p $(FUZZ_BUILD)
	@for f in $(FUZZERS); do \
	  clang $(FUZZ_CFLAGS) fuzz/fuzz_$$f.c $(FUZZ_LIBS) -o $(FUZZ_BUILD)/fuzz_$$f || exit 1; \
	done
	@# two harnesses at a time (the machines have two cores)
	@run() { mkdir -p $(FUZZ_BUILD)/corpus-$$1; \
	  $(FUZZ_BUILD)/fuzz_$$1 -max_total_time=$(FUZZ_TIME) -print_final_stats=0 \
	    $(FUZZ_BUILD)/corpus-$$1 fuzz/corpus/$$1 2>$(FUZZ_BUILD)/fuzz_$$1.log \
	    || { echo "fuzz_$$1 FOUND A CRASH:"; tail -50 $(FUZZ_BUILD)/fuzz_$$1.log; return 1; }; \
	  echo "fuzz_$$1 ($(FUZZ_TIME) s): $$(grep -E '^#[0-9]+.*DONE' $(FUZZ_BUILD)/fuzz_$$1.log | tail -1)"; }; \
	status=0; \
	run iso8601 & a=$$!; run httpdate & b=$$!; wait $$a || status=1; wait $$b || status=1; \
	run verifier & a=$$!; run answer & b=$$!; wait $$a || status=1; wait $$b || status=1; \
	run url & a=$$!; run webhook & b=$$!; run frame & c=$$!; \
	wait $$a || status=1; wait $$b || status=1; wait $$c || status=1; \
	exit $$status

# ---- embedding: a C host with a Lua 5.4 state per thread --------------------

# The host links Lua 5.4 (an embedding program does; the module never does).
EMBED_CFLAGS := -O2 -g $(WARN) -std=c11 -I/usr/include/lua5.4
EMBED_LIBS   := -llua5.4 -lpthread
EMBED_RUN     = dir=$$(mktemp -d) && \
  LUA_PATH="$(CURDIR)/lua/?.lua;;" LUA_CPATH="$(CURDIR)/$(1)/?.so;;" $(2) \
  lua5.4 tools/with-simulator.lua sh -c '$(1)/host -t $(3) -n 300 -S file:'"$$dir"'/session && \
    $(1)/host -t $(3) -c 1000 -s examples/embed/churn.lua $(4)'; \
  st=$$?; rm -rf "$$dir"; exit $$st

# build/5.4/host and the module it loads (spec/21-embed runs them too)
embed-host:
	$(MAKE) -s all LUA=5.4
	$(CC) $(EMBED_CFLAGS) examples/embed/host.c -o build/5.4/host $(EMBED_LIBS)

embed-demo: deps embed-host
	@$(call EMBED_RUN,build/5.4,,4)

# Any ThreadSanitizer report ends the host with status 66 and fails this.
# RSS is judged by embed-demo: TSan's allocator keeps memory for its history.
TSAN_BUILD := build/5.4-tsan
tsan: deps
	$(MAKE) -s all LUA=5.4 BUILD=$(TSAN_BUILD) CC=clang CFLAGS="-O1 -g" \
	  EXTRA_CFLAGS="-fsanitize=thread" LDFLAGS="-fsanitize=thread"
	clang $(EMBED_CFLAGS) -O1 -fsanitize=thread examples/embed/host.c -o $(TSAN_BUILD)/host $(EMBED_LIBS)
	@$(call EMBED_RUN,$(TSAN_BUILD),TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1",8,-r -1)

clean:
	rm -rf build
