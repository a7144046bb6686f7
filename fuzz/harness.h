/*
 * harness.h: what the libFuzzer harnesses that drive the module through a
 * Lua state share. harness_state(setup) opens a state with the module as
 * nomba.oauth.core, runs the chunk `setup` with the module as its argument
 * and keeps the function it returns; harness_push() pushes that function
 * before each input's arguments.
 */
#ifndef NOMBA_FUZZ_HARNESS_H
#define NOMBA_FUZZ_HARNESS_H

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

int luaopen_nomba_oauth_core(lua_State *L);

static lua_State *harness_L;

static lua_State *harness_state(const char *setup)
{
    if (harness_L != NULL)
        return harness_L;
    harness_L = luaL_newstate();
    luaL_openlibs(harness_L);
    luaL_requiref(harness_L, "nomba.oauth.core", luaopen_nomba_oauth_core, 0);
    if (luaL_loadstring(harness_L, setup) != 0)
        __builtin_trap();
    lua_insert(harness_L, -2);
    if (lua_pcall(harness_L, 1, 1, 0) != 0)
        __builtin_trap();
    lua_setfield(harness_L, LUA_REGISTRYINDEX, "nomba.fuzz");
    return harness_L;
}

static void harness_push(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "nomba.fuzz");
}

#endif
