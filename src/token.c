/*
 * token.c: the kept token, and the only code that changes it.
 *
 * A client keeps one access token (with its refresh token, business id and
 * clocks) in token_state. It changes in four ways, all here: kept (from an
 * answer, a sealed store value or a saved token: token_keep), dropped
 * (after a revoke: token_drop), invalidated (client:invalidate) and
 * forgotten (cleanup: token_forget). Each bumps the generation that
 * LuaJIT's hot-path copy checks, and sets or clears the Lua strings of the
 * hot path kept in the client's user value (UV_TOKEN, UV_BEARER).
 *
 *   core.fresh(client[, margin]) -> token, bearer, account[, fresh_until, gen] | nothing
 *   core.hot_check()             -> lightuserdata: the address of int f(const void *client, unsigned gen)
 *   core.remaining(client)       -> seconds the kept token is still valid (0: none)
 *   core.has(client, what)       -> boolean ("secret", "refresh" or "access")
 *   core.seed(client, token)     -> nothing (raises on a bad saved token)
 *   core.kept(client)            -> token table | nothing
 *   core.drop(client[, access])  -> boolean (dropped)
 *   core.install_fast_paths(token_slow, headers_slow) -> boolean
 *   client:invalidate()
 */
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include "nomba.h"

/* The refresh window: refresh_skew, but never more than half the token's
 * lifetime, so a short-lived sandbox token is not renewed on every call. */
static double skew_of(const client *c)
{
    double half = c->tok.lifetime / 2;
    return c->cfg.refresh_skew < half ? c->cfg.refresh_skew : half;
}

/* Whether the open client's kept token has more than margin seconds left
 * (the hot path's clock): the one freshness rule of every hot path. */
static int fresh_for(const client *c, double margin)
{
    return !c->closed && c->tok.expires_mono > 0 && c->tok.expires_mono - nt_mono_coarse() > margin;
}

/* The hot path's Lua strings: set from the kept token, or cleared. */
static void uv_token(lua_State *L, int cidx, const client *c, int set)
{
    nomba_getuv(L, cidx);
    if (lua_istable(L, -1)) {
        if (set)
            lua_pushlstring(L, c->tok.access.p, c->tok.access.n);
        else
            lua_pushnil(L);
        lua_rawseti(L, -2, UV_TOKEN);
        lua_pushnil(L);                 /* made from the token when headers() first asks */
        lua_rawseti(L, -2, UV_BEARER);
    }
    lua_pop(L, 1);
}

/* Pushes "Bearer <token>" from the user value table at uv (absolute),
 * made once per token: a client that only asks token() never holds it. */
static void push_bearer(lua_State *L, int uv)
{
    lua_rawgeti(L, uv, UV_BEARER);
    if (!lua_isnil(L, -1))
        return;
    lua_pop(L, 1);
    lua_pushliteral(L, "Bearer ");
    lua_rawgeti(L, uv, UV_TOKEN);
    if (lua_type(L, -1) != LUA_TSTRING) {
        lua_pop(L, 2);
        lua_pushnil(L);
        return;
    }
    lua_concat(L, 2);
    lua_pushvalue(L, -1);
    lua_rawseti(L, uv, UV_BEARER);
}

static void swap_sbuf(sbuf *a, sbuf *b)
{
    sbuf t = *a;
    *a = *b;
    *b = t;
}

/* Keeps a new token: *access (and *refresh, unless NULL: the kept refresh
 * token stays) become the client's buffers, and what they replace is
 * wiped; left is the seconds it is valid from now (<= 0: kept for its
 * refresh only). Returns 0 when out of memory. */
int token_keep(lua_State *L, int cidx, client *c, sbuf *access, sbuf *refresh,
               const char *biz, size_t bizlen, double lifetime, double left)
{
    char *b = NULL;
    if (biz != NULL && (b = nomba_strndup(biz, bizlen)) == NULL)
        return 0;
    swap_sbuf(&c->tok.access, access);
    sbuf_wipe(access);
    if (refresh != NULL) {
        swap_sbuf(&c->tok.refresh, refresh);
        sbuf_wipe(refresh);
    }
    free(c->tok.business_id);
    c->tok.business_id = b;
    c->tok.lifetime = lifetime;
    c->tok.expires_mono = left > 0 ? nt_mono() + left : 0;
    c->tok.expires_wall = nt_wall() + left;
    c->tok.gen++;
    uv_token(L, cidx, c, left > 0);
    return 1;
}

/* No kept token any more: its business id and clocks go, the generation moves. */
static void forget_clock(client *c)
{
    free(c->tok.business_id);
    c->tok.business_id = NULL;
    c->tok.expires_mono = 0;
    c->tok.lifetime = 0;
    c->tok.gen++;
}

/* Drops the kept token: wipes it and forgets its clock. */
void token_drop(lua_State *L, int cidx, client *c)
{
    sbuf_wipe(&c->tok.access);
    sbuf_wipe(&c->tok.refresh);
    forget_clock(c);
    uv_token(L, cidx, c, 0);
}

/* Wipes and frees every secret (cleanup). */
void token_forget(client *c)
{
    sbuf_free(&c->tok.secret);
    sbuf_free(&c->tok.access);
    sbuf_free(&c->tok.refresh);
    forget_clock(c);
}

/* The server's clock, reckoned from the monotonic clock since an answer
 * said what time it was (its Date): a step of this host's wall clock moves
 * neither. Sealed values in a shared store carry their expiry on it, so the
 * members of a fleet agree on it whatever their own clocks say. Until an
 * answer came, the wall clock. */
void token_anchor(client *c, double server_date)
{
    double a = server_date - nt_mono();
    /* a Date has whole seconds: the anchor moves only when it is off by more
     * (the first answer, or the server's clock stepped) */
    if (!c->tok.anchored || a > c->tok.anchor + 2 || a < c->tok.anchor - 2) {
        c->tok.anchor = a;
        c->tok.anchored = 1;
    }
}

double token_server_now(const client *c)
{
    return c->tok.anchored ? nt_mono() + c->tok.anchor : nt_wall();
}

/* Pushes the kept token as a token table (the shape issue() returns). The
 * access token is the hot path's Lua string when there is one: no second
 * copy. */
void token_push(lua_State *L, int cidx, const client *c)
{
    lua_createtable(L, 0, 6);
    nomba_getuv(L, cidx);
    lua_rawgeti(L, -1, UV_TOKEN);
    lua_remove(L, -2);
    if (lua_type(L, -1) != LUA_TSTRING) {
        lua_pop(L, 1);
        lua_pushlstring(L, c->tok.access.p, c->tok.access.n);
    }
    lua_setfield(L, -2, "access_token");
    if (c->tok.refresh.n > 0) {
        lua_pushlstring(L, c->tok.refresh.p, c->tok.refresh.n);
        lua_setfield(L, -2, "refresh_token");
    }
    lua_pushnumber(L, floor(c->tok.expires_wall));
    lua_setfield(L, -2, "expires_at");
    lua_pushinteger(L, (lua_Integer)floor(c->tok.lifetime));
    lua_setfield(L, -2, "expires_in");
    if (c->tok.business_id != NULL) {
        lua_pushstring(L, c->tok.business_id);
        lua_setfield(L, -2, "business_id");
    }
    lua_pushliteral(L, "Bearer");
    lua_setfield(L, -2, "token_type");
}

/* core.fresh(client[, margin]): the hot path. The kept token, the bearer
 * header and the account id while more than margin (default: the refresh
 * window) seconds remain; with the default window also the token
 * generation (LuaJIT's copies are checked against it: hot_check).
 * No allocation but the bearer's, made once per token (push_bearer). */
static int token_fresh(lua_State *L)
{
    client *c = (client *)lua_touserdata(L, 1);
    int window = lua_isnoneornil(L, 2);
    if (c == NULL || !luaL_testudata(L, 1, NOMBA_CLIENT_MT))
        return luaL_argerror(L, 1, "nomba.oauth.Client expected");
    if (!fresh_for(c, window ? skew_of(c) : lua_tonumber(L, 2)))
        return 0;
    nomba_getuv(L, 1);
    lua_rawgeti(L, -1, UV_TOKEN);
    push_bearer(L, lua_gettop(L) - 1);
    lua_rawgeti(L, -3, UV_ACCOUNT);
    if (!window)
        return 3;
    lua_pushinteger(L, (lua_Integer)c->tok.gen);
    return 4;
}

/* The hot path's check for LuaJIT, called through the FFI (which LuaJIT
 * compiles; its interpreter makes the call for about 1.5 calls of a C
 * function through the Lua API): whether the client (the userdata's
 * payload, as the FFI passes a userdata to a pointer) still keeps the
 * token of generation gen, fresh. */
static int hot_check(const void *ud, unsigned int gen)
{
    const client *c = (const client *)ud;
    return c->tok.gen == gen && fresh_for(c, skew_of(c));
}

/* core.hot_check(): hot_check's address, for ffi.cast. */
static int token_hot_check(lua_State *L)
{
    int (*f)(const void *, unsigned int) = hot_check;
    lua_pushlightuserdata(L, *(void **)&f);
    return 1;
}

static int token_remaining(lua_State *L)
{
    client *c = client_check(L, 1);
    double left = !c->closed && c->tok.expires_mono > 0 ? c->tok.expires_mono - nt_mono() : 0;
    lua_pushnumber(L, left > 0 ? left : 0);
    return 1;
}

static int token_has(lua_State *L)
{
    static const char *const what[] = {"secret", "refresh", "access", NULL};
    client *c = client_check(L, 1);
    const sbuf *b[3];
    b[0] = &c->tok.secret;
    b[1] = &c->tok.refresh;
    b[2] = &c->tok.access;
    lua_pushboolean(L, !c->closed && b[luaL_checkoption(L, 2, NULL, what)]->n > 0);
    return 1;
}

/* A token field of a saved table: a string of visible ASCII, or NULL when
 * absent; raises naming the option otherwise. */
static const char *seed_string(lua_State *L, const char *field, size_t *n, int required)
{
    const char *s;
    lua_getfield(L, 2, field);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        if (required)
            luaL_error(L, "nomba.oauth.new: option 'token' has no %s", field);
        return NULL;
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "nomba.oauth.new: option 'token' has a %s that is not a string", field);
    s = lua_tolstring(L, -1, n);
    if (!codec_visible(s, *n))
        luaL_error(L, "nomba.oauth.new: option 'token' has a %s outside visible ASCII", field);
    lua_pop(L, 1);   /* the string stays alive in the table */
    return *n ? s : NULL;
}

/* core.seed(client, token): starts from a saved token table (the shape
 * issue() returns). An expired one is kept for its refresh: its access
 * token is the bearer the refresh needs. */
static int token_seed(lua_State *L)
{
    client *c = client_check(L, 1);
    size_t an = 0, rn = 0, bn = 0;
    const char *at, *rt, *biz;
    double at_wall, left, lifetime;
    int ok;
    luaL_checktype(L, 2, LUA_TTABLE);
    at = seed_string(L, "access_token", &an, 1);
    rt = seed_string(L, "refresh_token", &rn, 0);
    if (at == NULL)
        return luaL_error(L, "nomba.oauth.new: option 'token' has an empty access_token");
    lua_getfield(L, 2, "expires_at");
    at_wall = lua_tonumber(L, -1);
    if (lua_type(L, -1) != LUA_TNUMBER || !(at_wall > 0 && at_wall < 1e11))
        return luaL_error(L, "nomba.oauth.new: option 'token' needs expires_at (Unix seconds)");
    lua_getfield(L, 2, "expires_in");
    lifetime = lua_tonumber(L, -1);
    lua_getfield(L, 2, "business_id");
    biz = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &bn) : NULL;
    left = at_wall - nt_wall();
    if (!(left <= NOMBA_MAX_LIFETIME))
        return luaL_error(L, "nomba.oauth.new: option 'token' expires more than a year from now");
    if (!(lifetime > 0 && lifetime <= NOMBA_MAX_LIFETIME))
        lifetime = left > 0 ? left : 0;
    if (c->closed)
        return 0;
    {
        sbuf a = {NULL, 0, 0}, r = {NULL, 0, 0};   /* token_keep swaps them with the kept ones */
        ok = sbuf_set(&a, at, an) && (rt == NULL || sbuf_set(&r, rt, rn)) &&
             token_keep(L, 1, c, &a, rt != NULL ? &r : NULL, biz, bn, lifetime, left);
        sbuf_free(&a);
        sbuf_free(&r);
    }
    if (!ok)
        return luaL_error(L, "nomba.oauth: out of memory");
    return 0;
}

static int token_kept(lua_State *L)
{
    client *c = client_check(L, 1);
    if (c->closed || c->tok.access.n == 0)
        return 0;
    token_push(L, 1, c);
    return 1;
}

/* core.drop(client[, access_token]): after a successful revoke, forget the
 * kept token when it is the one revoked (or when none was named). */
static int token_drop_binding(lua_State *L)
{
    client *c = client_check(L, 1);
    size_t n = 0;
    const char *t = luaL_optlstring(L, 2, NULL, &n);
    int dropped = 0;
    if (!c->closed && c->tok.access.n > 0 &&
        (t == NULL || (n == c->tok.access.n && memcmp(t, c->tok.access.p, n) == 0))) {
        token_drop(L, 1, c);
        dropped = 1;
    }
    lua_pushboolean(L, dropped);
    return 1;
}

/* client:invalidate(): never hand out the kept access token again. Its
 * bytes stay (wiped on close) because a refresh sends it as the bearer. */
static int token_invalidate(lua_State *L)
{
    client *c = client_check(L, 1);
    c->tok.expires_mono = 0;
    c->tok.gen++;
    uv_token(L, 1, c, 0);
    return 0;
}

#if LUA_VERSION_NUM >= 503
/*
 * The hot path as methods written in C (Lua 5.3 and 5.4). Upvalues: 1 the
 * client metatable (a cheaper check than luaL_testudata's registry lookup),
 * 2 the Lua slow path, 3 and 4 the keys "Authorization" and "accountId".
 * When the kept token is not fresh, the call continues into the Lua slow
 * path with lua_callk, so a yielding transport or store still works.
 */
static int fresh_client(lua_State *L)
{
    client *c = (client *)lua_touserdata(L, 1);
    int ok = c != NULL && lua_getmetatable(L, 1) && lua_rawequal(L, -1, lua_upvalueindex(1));
    return ok && fresh_for(c, skew_of(c));
}

static int slow_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    return lua_gettop(L);
}

static int slow_path(lua_State *L, int nargs)
{
    lua_settop(L, nargs);
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_insert(L, 1);
    lua_callk(L, nargs, LUA_MULTRET, 0, slow_k);
    return lua_gettop(L);
}

static int token_fast(lua_State *L)
{
    int nargs = lua_gettop(L);
    if (fresh_client(L)) {
        nomba_getuv(L, 1);
        lua_rawgeti(L, -1, UV_TOKEN);
        return 1;
    }
    return slow_path(L, nargs);
}

static int headers_fast(lua_State *L)
{
    int nargs = lua_gettop(L);
    if (fresh_client(L)) {
        nomba_getuv(L, 1);
        lua_createtable(L, 0, 2);
        lua_pushvalue(L, lua_upvalueindex(3));
        push_bearer(L, lua_gettop(L) - 2);
        lua_rawset(L, -3);
        lua_pushvalue(L, lua_upvalueindex(4));
        lua_rawgeti(L, -3, UV_ACCOUNT);
        lua_rawset(L, -3);
        return 1;
    }
    return slow_path(L, nargs);
}
#endif

/* core.install_fast_paths(token_slow, headers_slow): on Lua 5.3+, makes
 * methods.token and methods.headers C functions that fall back to the given
 * Lua functions; returns whether it did. */
static int token_install_fast(lua_State *L)
{
#if LUA_VERSION_NUM >= 503
    luaL_checktype(L, 1, LUA_TFUNCTION);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    luaL_getmetatable(L, NOMBA_CLIENT_MT);
    lua_getfield(L, -1, "__index");               /* the methods */
    luaL_getmetatable(L, NOMBA_CLIENT_MT);
    lua_pushvalue(L, 1);
    lua_pushcclosure(L, token_fast, 2);
    lua_setfield(L, -2, "token");
    luaL_getmetatable(L, NOMBA_CLIENT_MT);
    lua_pushvalue(L, 2);
    lua_pushliteral(L, "Authorization");
    lua_pushliteral(L, "accountId");
    lua_pushcclosure(L, headers_fast, 4);
    lua_setfield(L, -2, "headers");
    lua_pushboolean(L, 1);
#else
    lua_pushboolean(L, 0);
#endif
    return 1;
}

/* Adds the entries to the module table on top of the stack, and
 * invalidate to its method table (module.methods, made by client_open). */
void token_open(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"fresh", token_fresh},
        {"hot_check", token_hot_check},
        {"remaining", token_remaining},
        {"has", token_has},
        {"seed", token_seed},
        {"kept", token_kept},
        {"drop", token_drop_binding},
        {"install_fast_paths", token_install_fast},
        {NULL, NULL}
    };
    luaL_setfuncs(L, funcs, 0);
    lua_getfield(L, -1, "methods");
    lua_pushcfunction(L, token_invalidate);
    lua_setfield(L, -2, "invalidate");
    lua_pop(L, 1);
}
