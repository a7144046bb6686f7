/*
 * compat.h: one C source for Lua 5.1/LuaJIT 2.1, 5.2, 5.3 and 5.4.
 *
 * We write the 5.3/5.4 API. For older versions we add renamed shims
 * (nomba_*), never redefining a name LuaJIT 2.1 already exports
 * (luaL_setfuncs, luaL_testudata, luaL_setmetatable exist there).
 * The user value of a client userdata is always a table, which all
 * versions support (5.1 through lua_setfenv).
 */
#ifndef NOMBA_COMPAT_H
#define NOMBA_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

#if LUA_VERSION_NUM == 501

#define luaL_setfuncs  nomba_setfuncs
#ifndef luaL_newlib
#define luaL_newlib(L, l) (lua_newtable(L), luaL_setfuncs(L, l, 0))
#endif
#define lua_rawlen     lua_objlen
#define luaL_testudata nomba_testudata

static inline void nomba_setfuncs(lua_State *L, const luaL_Reg *l, int nup)
{
    luaL_checkstack(L, nup, "too many upvalues");
    for (; l->name != NULL; l++) {
        int i;
        for (i = 0; i < nup; i++)
            lua_pushvalue(L, -nup);
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
}

static inline void *nomba_testudata(lua_State *L, int ud, const char *tname)
{
    void *p = lua_touserdata(L, ud);
    if (p != NULL && lua_getmetatable(L, ud)) {
        luaL_getmetatable(L, tname);
        if (!lua_rawequal(L, -1, -2))
            p = NULL;
        lua_pop(L, 2);
        return p;
    }
    return NULL;
}

#define nomba_getuv(L, idx) lua_getfenv(L, idx)
#define nomba_setuv(L, idx) lua_setfenv(L, idx)
#define nomba_newuserdata(L, sz) lua_newuserdata(L, sz)

#elif LUA_VERSION_NUM < 504

#define nomba_getuv(L, idx) lua_getuservalue(L, idx)
#define nomba_setuv(L, idx) lua_setuservalue(L, idx)
#define nomba_newuserdata(L, sz) lua_newuserdata(L, sz)

#else

#define nomba_getuv(L, idx) ((void)lua_getiuservalue(L, idx, 1))
#define nomba_setuv(L, idx) ((void)lua_setiuservalue(L, idx, 1))
#define nomba_newuserdata(L, sz) lua_newuserdatauv(L, sz, 1)

#endif

#endif
