/*
 * client.c: the nomba.oauth.Client userdata, from core.new to __gc.
 *
 * The Lua layer (nomba/oauth/options.lua) checks and completes the
 * options; this file copies them into the configuration, attaches the
 * client to the Lua state's libcurl pool, and ends it: close, __gc and
 * __close wipe every secret and give back what it held.
 *
 *   core.new(opts, state)  -> client (state becomes its user value)
 *   core.is_client(v)      -> boolean
 *   core.state(client)     -> the user value table
 *   core.closed(client)    -> boolean
 *   client:close()
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <math.h>
#include <stdio.h>
#include "nomba.h"

static void free_str(char **s)
{
    free(*s);
    *s = NULL;
}

#ifdef NOMBA_TEST_HOOKS
/* Test build: wipe every secret buffer, then check each byte of its whole
 * capacity is zero before it is freed, and remember the verdict. */
static void test_check_wiped(client *c)
{
    sbuf *bufs[13];
    attempt *a = c->at;                 /* an attempt cut short (an error, GC mid-transfer) */
    int i, nb = 0;
    size_t k;
    bufs[nb++] = &c->tok.secret;
    bufs[nb++] = &c->tok.access;
    bufs[nb++] = &c->tok.refresh;
    if (c->seal != NULL) {
        bufs[nb++] = &c->seal->ikm;
        bufs[nb++] = &c->seal->aes;
    }
    if (a != NULL) {
        bufs[nb++] = &a->body;
        bufs[nb++] = &a->bearer_hdr;
        bufs[nb++] = &a->resp;
        bufs[nb++] = &a->head;
        bufs[nb++] = &a->req_secret[0];
        bufs[nb++] = &a->req_secret[1];
        bufs[nb++] = &a->scratch[0];
        bufs[nb++] = &a->scratch[1];
    }
    c->test_wiped = 1;
    for (i = 0; i < nb; i++) {
        sbuf_wipe(bufs[i]);
        for (k = 0; bufs[i]->p != NULL && k < bufs[i]->cap; k++)
            if (bufs[i]->p[k] != 0)
                c->test_wiped = 0;
        if (bufs[i]->p != NULL)
            c->test_checked++;
    }
}
#endif

/* close, __gc and __close: any number of times. */
static void cleanup(client *c)
{
    http_release(c);
#ifdef NOMBA_TEST_HOOKS
    if (!c->closed)
        test_check_wiped(c);
#endif
    attempt_free(c);
    token_forget(c);
    if (c->seal != NULL) {
        sbuf_free(&c->seal->ikm);
        sbuf_free(&c->seal->aes);
        free(c->seal);
        c->seal = NULL;
    }
    free_str(&c->cfg.account_id);
    free_str(&c->cfg.client_id);
    endpoint_release(c->cfg.ep);        /* also a half-built client's */
    c->cfg.ep = NULL;
    c->closed = 1;
}

/* Copies a required string option of the options table into *dst. */
static void opt_string(lua_State *L, int t, const char *name, char **dst)
{
    const char *s = endpoint_opt(L, t, name);
    if (s == NULL) {
        luaL_error(L, "nomba.oauth: option '%s' is required", name);
        return;                         /* luaL_error does not return */
    }
    if ((*dst = nomba_strndup(s, strlen(s))) == NULL)
        luaL_error(L, "nomba.oauth: out of memory");
}

/* A required number option (the Lua layer filled in the defaults), in
 * [lo, hi]: NaN and infinities never get past this. */
static double opt_number(lua_State *L, int t, const char *name, double lo, double hi)
{
    double v;
    lua_getfield(L, t, name);
    if (lua_type(L, -1) != LUA_TNUMBER)
        luaL_error(L, "nomba.oauth: option '%s' must be a number", name);
    v = lua_tonumber(L, -1);
    if (!(v >= lo && v <= hi))
        luaL_error(L, "nomba.oauth: option '%s' is out of range", name);
    lua_pop(L, 1);
    return v;
}

/* core.new(opts, state): opts already checked and completed by the Lua
 * layer (every default filled in); state becomes the user value. */
static int client_new(lua_State *L)
{
    client *c;
    size_t n;
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TTABLE);
    c = (client *)nomba_newuserdata(L, sizeof *c);
    memset(c, 0, sizeof *c);
    c->closed = 1;                       /* a valid closed client until built */
    luaL_getmetatable(L, NOMBA_CLIENT_MT);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, 2);
    nomba_setuv(L, -2);

    opt_string(L, 1, "account_id", &c->cfg.account_id);
    n = strlen(c->cfg.account_id);
    if (n > NOMBA_MAX_ACCOUNT_ID)
        return luaL_error(L, "nomba.oauth: option 'account_id' is longer than %d bytes",
                          NOMBA_MAX_ACCOUNT_ID);
    opt_string(L, 1, "client_id", &c->cfg.client_id);
    c->cfg.ep = endpoint_get(L, 1);     /* base_url, paths, TLS, proxy, user_agent: shared */

    c->cfg.timeout = opt_number(L, 1, "timeout", 0.001, NOMBA_MAX_TIMEOUT);
    c->cfg.refresh_skew = opt_number(L, 1, "refresh_skew", 0, NOMBA_MAX_LIFETIME);
    c->cfg.max_response = (size_t)opt_number(L, 1, "max_response_bytes", 256, NOMBA_MAX_RESPONSE);

    lua_getfield(L, 1, "client_secret");
    if (!lua_isnil(L, -1)) {
        size_t sn;
        const char *s = luaL_checklstring(L, -1, &sn);
        if (!sbuf_set(&c->tok.secret, s, sn))
            return luaL_error(L, "nomba.oauth: out of memory");
    }
    lua_pop(L, 1);

    lua_pushstring(L, c->cfg.account_id);
    lua_rawseti(L, 2, UV_ACCOUNT);
    http_attach(L, lua_gettop(L), c);
    c->closed = 0;
    return 1;
}

/* core.is_client(v): whether v is a client. */
static int client_is(lua_State *L)
{
    lua_pushboolean(L, luaL_testudata(L, 1, NOMBA_CLIENT_MT) != NULL);
    return 1;
}

static int client_state(lua_State *L)
{
    client_check(L, 1);
    nomba_getuv(L, 1);
    return 1;
}

static int client_closed(lua_State *L)
{
    lua_pushboolean(L, client_check(L, 1)->closed);
    return 1;
}

static int client_close(lua_State *L)
{
    client *c = client_check(L, 1);
    cleanup(c);
    nomba_getuv(L, 1);                   /* the hot path's strings go too */
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        lua_rawseti(L, -2, UV_TOKEN);
        lua_pushnil(L);
        lua_rawseti(L, -2, UV_BEARER);
    }
    return 0;
}

static int client__gc(lua_State *L)
{
    client *c = (client *)luaL_testudata(L, 1, NOMBA_CLIENT_MT);
    if (c != NULL)
        cleanup(c);
    return 0;
}

static int client__tostring(lua_State *L)
{
    client *c = client_check(L, 1);
    const char *state = "none";
    if (c->closed) {
        lua_pushfstring(L, "nomba.oauth.Client (closed): %p", (void *)c);
        return 1;
    }
    if (c->tok.expires_mono > 0) {
        double left = c->tok.expires_mono - nt_mono();
        if (left > 0) {
            lua_pushfstring(L, "valid for %ds", (int)(left < NOMBA_MAX_LIFETIME ? left + 0.5 : NOMBA_MAX_LIFETIME));
            state = lua_tostring(L, -1);
        } else {
            state = "expired";
        }
    } else if (c->tok.access.n > 0) {
        state = "invalidated";
    }
    lua_pushfstring(L, "nomba.oauth.Client (account %s, client %s, %s, token %s): %p",
                    c->cfg.account_id, c->cfg.client_id, c->cfg.ep->base_url, state, (void *)c);
    return 1;
}

#ifdef NOMBA_TEST_HOOKS
/* core._test.wiped(client): after close, whether every secret buffer was
 * all zeros just before it was freed, and how many buffers were checked. */
static int client_test_wiped(lua_State *L)
{
    client *c = client_check(L, 1);
    lua_pushboolean(L, c->closed && c->test_wiped);
    lua_pushinteger(L, c->test_checked);
    return 2;
}
#endif

/* Makes the metatable and the method table (module.methods) and adds the
 * entries to the module table on top of the stack. */
void client_open(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"close", client_close},
        {NULL, NULL}
    };
    static const luaL_Reg meta[] = {
        {"__gc", client__gc},
#if LUA_VERSION_NUM >= 504
        {"__close", client__gc},
#endif
        {"__tostring", client__tostring},
        {NULL, NULL}
    };
    static const luaL_Reg funcs[] = {
        {"new", client_new},
        {"is_client", client_is},
        {"state", client_state},
        {"closed", client_closed},
        {NULL, NULL}
    };
    luaL_newmetatable(L, NOMBA_CLIENT_MT);
    luaL_setfuncs(L, meta, 0);
    lua_pushstring(L, NOMBA_CLIENT_MT);
    lua_setfield(L, -2, "__name");
    luaL_newlib(L, methods);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "__index");
    lua_setfield(L, -3, "methods");      /* module.methods */
    lua_pop(L, 1);
    luaL_setfuncs(L, funcs, 0);
#ifdef NOMBA_TEST_HOOKS
    nomba_test_hook(L, "wiped", client_test_wiped);
#endif
}
