# nomba-oauth: build, test, demo.
#
#   make                 build nomba/oauth/core.so for Lua 5.4
#   make LUA=5.1|5.2|5.3|jit   the same for another runtime
#   make test            build, start the simulator, run the busted suite, stop it
#   make demo            start the simulator and run examples/client_credentials.lua
#   make lint            luacheck on all Lua
#
# Honours CFLAGS, LDFLAGS, LUA_INCDIR, LIBFLAG and pkg-config. Never links -llua.

LUA        ?= 5.4
PKG_CONFIG ?= pkg-config

ifeq ($(LUA),jit)
  LUA_INCDIR ?= $(shell $(PKG_CONFIG) --variable=includedir luajit 2>/dev/null)/luajit-2.1
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
DEPS_CFLAGS := $(shell $(PKG_CONFIG) --cflags libcurl libcrypto 2>/dev/null)
DEPS_LIBS   := $(shell $(PKG_CONFIG) --libs libcurl libcrypto 2>/dev/null || echo -lcurl -lcrypto)
ALL_CFLAGS  = $(CFLAGS) $(WARN) -std=c99 -D_GNU_SOURCE -fPIC -fvisibility=hidden \
              -I$(LUA_INCDIR) $(DEPS_CFLAGS) $(EXTRA_CFLAGS)

BUILD    ?= build/$(LUA)
SRCS     := src/core.c src/client.c src/proto.c src/http.c src/err.c src/sbuf.c \
            src/timeparse.c src/pkce.c
OBJS     := $(SRCS:src/%.c=$(BUILD)/obj/%.o)
MODULE   := $(BUILD)/nomba/oauth/core.so

# The test build adds test hooks (NOMBA_TEST_HOOKS) and lives apart.
TEST_BUILD := build/$(LUA)-test
BUSTED   ?= /usr/bin/busted
LUA_ENV   = LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$(CURDIR)/spec/?.lua;;" \
            LUA_CPATH="$(CURDIR)/$(BUILD)/?.so;;"
TEST_ENV  = LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$(CURDIR)/spec/?.lua;;" \
            LUA_CPATH="$(CURDIR)/$(TEST_BUILD)/?.so;;"

.PHONY: all test test-build demo lint clean deps

all: $(MODULE)

$(BUILD)/obj/%.o: src/%.c src/nomba.h src/compat.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(MODULE): $(OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(LIBFLAG) $(LDFLAGS) -o $@ $(OBJS) $(DEPS_LIBS)

# Installs what a fresh Debian 12 machine lacks (as root), or says what to install.
deps:
	@sh .ci/deps.sh

test-build:
	$(MAKE) all BUILD=$(TEST_BUILD) EXTRA_CFLAGS="-DNOMBA_TEST_HOOKS $(EXTRA_CFLAGS)"

test: deps all test-build
	$(TEST_ENV) $(LUA_BIN) tools/with-simulator.lua $(LUA_BIN) $(BUSTED) $(BUSTED_ARGS)

demo: deps all
	$(LUA_ENV) $(LUA_BIN) tools/with-simulator.lua $(LUA_BIN) examples/client_credentials.lua

lint:
	luacheck lua spec bin examples tools

clean:
	rm -rf build
