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
#define lua_absindex(L, i) ((i) > 0 || (i) <= LUA_REGISTRYINDEX ? (i) : lua_gettop(L) + (i) + 1)
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

/* libcurl and OpenSSL version switches, in one place. */
#include <openssl/opensslv.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>

/* OpenSSL 3: SHA-256 fetched once (an implicit fetch per digest costs);
 * before 3, the built-in one (NULL here: the caller falls back to it). */
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
#define nomba_fetch_sha256() EVP_MD_fetch(NULL, "SHA256", NULL)
#define nomba_free_md(md) EVP_MD_free(md)
#else
#define nomba_fetch_sha256() ((EVP_MD *)NULL)
#define nomba_free_md(md) ((void)(md))
#endif

/* OpenSSL 3 can wipe each TLS record's plaintext once it is read. */
#ifdef SSL_OP_CLEANSE_PLAINTEXT
#define NOMBA_SSL_CLEANSE SSL_OP_CLEANSE_PLAINTEXT
#else
#define NOMBA_SSL_CLEANSE 0
#endif

#if LIBCURL_VERSION_NUM >= 0x075500       /* CURLOPT_PROTOCOLS_STR: libcurl 7.85 */
#define nomba_set_protocols(h, http) \
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, (http) ? "http,https" : "https")
#else
#define nomba_set_protocols(h, http) \
    curl_easy_setopt(h, CURLOPT_PROTOCOLS, (long)((http) ? CURLPROTO_HTTP | CURLPROTO_HTTPS : CURLPROTO_HTTPS))
#endif

#endif
