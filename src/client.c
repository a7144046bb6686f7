/*
 * client.c: the nomba.oauth.Client userdata.
 *
 * Owns the configuration, the secrets and the kept token (see nomba.h for
 * the invariants). The Lua layer (nomba/oauth.lua) validates options and
 * writes policy; this file gives it:
 *   core.new(opts, state)         -> client (state becomes the user value)
 *   core.fresh(client)            -> token, bearer, account | nil  (hot path)
 *   core.info(client)             -> table describing the token state
 *   core.perform(client, op, args, timeout) -> result | nil, err; status
 *   core.request(client, op, args)          -> {method, url, headers, body}
 *   core.answer(client, op, status, headers, body) -> result | nil, err
 *   core.state(client)            -> the user value table
 * and the methods close and invalidate, plus __gc, __close, __tostring.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <math.h>
#include <stdio.h>
#include "nomba.h"

client *client_check(lua_State *L, int idx)
{
    return (client *)luaL_checkudata(L, idx, NOMBA_CLIENT_MT);
}

static void free_str(char **s)
{
    if (*s != NULL) {
        free(*s);
        *s = NULL;
    }
}

#ifdef NOMBA_TEST_HOOKS
/* Test build: wipe every secret buffer, then check each byte of its whole
 * capacity is zero before it is freed, and remember the verdict. */
static void test_check_wiped(client *c)
{
    sbuf *bufs[14];
    int i;
    size_t k;
    bufs[0] = &c->secret;
    bufs[1] = &c->access;
    bufs[2] = &c->refresh;
    bufs[3] = &c->reqbody;
    bufs[4] = &c->bearer_hdr;
    bufs[5] = &c->resp;
    bufs[6] = &c->store_ikm;
    bufs[7] = &c->store_aes;
    bufs[8] = &c->seal_pt;
    bufs[9] = &c->seal_ct;
    bufs[10] = &c->req_secret[0];
    bufs[11] = &c->scratch[0];
    bufs[12] = &c->scratch[1];
    bufs[13] = &c->req_secret[1];
    c->test_wiped = 1;
    for (i = 0; i < 14; i++) {
        sbuf_wipe(bufs[i]);
        for (k = 0; bufs[i]->p != NULL && k < bufs[i]->cap; k++)
            if (bufs[i]->p[k] != 0)
                c->test_wiped = 0;
        if (bufs[i]->p != NULL)
            c->test_checked++;
    }
}
#endif

void client_cleanup(client *c)
{
    int i;
    http_release(c);
#ifdef NOMBA_TEST_HOOKS
    if (!c->closed)
        test_check_wiped(c);
#endif
    sbuf_free(&c->secret);
    sbuf_free(&c->access);
    sbuf_free(&c->refresh);
    sbuf_free(&c->reqbody);
    sbuf_free(&c->bearer_hdr);
    sbuf_free(&c->resp);
    sbuf_free(&c->store_ikm);
    sbuf_free(&c->store_aes);
    sbuf_free(&c->seal_pt);
    sbuf_free(&c->seal_ct);
    sbuf_free(&c->req_secret[0]);
    sbuf_free(&c->req_secret[1]);
    sbuf_free(&c->scratch[0]);
    sbuf_free(&c->scratch[1]);
    free_str(&c->account_id);
    free_str(&c->client_id);
    free_str(&c->base_url);
    free_str(&c->cafile);
    free_str(&c->capath);
    free_str(&c->pinned_pubkey);
    free_str(&c->proxy);
    free_str(&c->user_agent);
    free_str(&c->business_id);
    for (i = 0; i < OP__N; i++) {
        free_str(&c->paths[i]);
        free_str(&c->body_open[i]);
    }
    c->expires_mono = 0;
    c->lifetime = 0;
    c->gen++;
    c->closed = 1;
}

/* Clears the hot-path copies of the token kept in the user value. */
static void uv_clear_token(lua_State *L, int cidx)
{
    nomba_getuv(L, cidx);
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        lua_rawseti(L, -2, UV_TOKEN);
        lua_pushnil(L);
        lua_rawseti(L, -2, UV_BEARER);
    }
    lua_pop(L, 1);
}

/* After c->access changed: refresh the Lua strings of the hot path. */
void client_set_token(lua_State *L, int cidx, client *c)
{
    c->gen++;
    nomba_getuv(L, cidx);
    lua_pushlstring(L, c->access.p, c->access.n);
    lua_rawseti(L, -2, UV_TOKEN);
    lua_pushliteral(L, "Bearer ");
    lua_pushlstring(L, c->access.p, c->access.n);
    lua_concat(L, 2);
    lua_rawseti(L, -2, UV_BEARER);
    lua_pop(L, 1);
}

/* Drops the kept token: wipes it and forgets its clock. */
void client_drop_token(lua_State *L, int cidx, client *c)
{
    sbuf_wipe(&c->access);
    sbuf_wipe(&c->refresh);
    free_str(&c->business_id);
    c->expires_mono = 0;
    c->lifetime = 0;
    c->gen++;
    uv_clear_token(L, cidx);
}

/* Copies an optional string field of the options table into *dst. */
static void opt_string(lua_State *L, int t, const char *name, char **dst, int required)
{
    const char *s;
    size_t n;
    lua_getfield(L, t, name);
    if (lua_isnil(L, -1)) {
        if (required)
            luaL_error(L, "nomba.oauth: option '%s' is required", name);
        lua_pop(L, 1);
        return;
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "nomba.oauth: option '%s' must be a string", name);
    s = lua_tolstring(L, -1, &n);
    if (s == NULL || strlen(s) != n)
        luaL_error(L, "nomba.oauth: option '%s' must not contain NUL bytes", name);
    *dst = nomba_strndup(s, n);
    if (*dst == NULL)
        luaL_error(L, "nomba.oauth: out of memory");
    lua_pop(L, 1);
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

/* The base URL and every operation's URL, judged on libcurl's own parse:
 * each must go to the base URL's scheme, host and port. Plain http is
 * allowed only for a loopback host (url_split refuses anything else). */
static void check_urls(lua_State *L, client *c)
{
    url_parts base, p;
    char full[1024];
    const char *why = url_split(c->base_url, &base, 0);
    int i, same;
    if (why != NULL)
        luaL_error(L, "nomba.oauth: option 'base_url' %s", why);
    c->allow_http = strcasecmp(base.scheme, "http") == 0;
    for (i = 0; i < OP__N; i++) {
        int n;
        if (c->paths[i] == NULL)
            continue;
        n = snprintf(full, sizeof full, "%s%s", c->base_url, c->paths[i]);
        if (n < 0 || (size_t)n >= sizeof full) {
            url_free(&base);
            luaL_error(L, "nomba.oauth: option 'paths' makes a URL over %d bytes", (int)sizeof full - 1);
        }
        why = url_split(full, &p, 1);
        same = why == NULL && strcasecmp(p.scheme, base.scheme) == 0 &&
               strcasecmp(p.host, base.host) == 0 && p.port == base.port;
        if (why == NULL)
            url_free(&p);
        if (!same) {
            url_free(&base);
            luaL_error(L, "nomba.oauth: option 'paths' (%s) must stay on base_url's scheme, host and port",
                       nomba_op_names[i]);
        }
    }
    url_free(&base);
}

/* core.new(opts, state): opts already validated and completed by the Lua
 * layer (base_url and every path set); state becomes the user value. */
static int client_new(lua_State *L)
{
    static const char *const pathnames[] = {"issue", "refresh", "revoke", "authorize"};
    client *c;
    int i;
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TTABLE);
    c = (client *)nomba_newuserdata(L, sizeof *c);
    memset(c, 0, sizeof *c);
    c->closed = 1;                       /* a valid closed client until built */
    luaL_getmetatable(L, NOMBA_CLIENT_MT);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, 2);
    nomba_setuv(L, -2);

    opt_string(L, 1, "account_id", &c->account_id, 1);
    if (strlen(c->account_id) > NOMBA_MAX_ACCOUNT_ID)
        return luaL_error(L, "nomba.oauth: option 'account_id' is longer than %d bytes",
                          NOMBA_MAX_ACCOUNT_ID);
    opt_string(L, 1, "client_id", &c->client_id, 1);
    opt_string(L, 1, "base_url", &c->base_url, 1);
    opt_string(L, 1, "cafile", &c->cafile, 0);
    opt_string(L, 1, "capath", &c->capath, 0);
    opt_string(L, 1, "pinned_pubkey", &c->pinned_pubkey, 0);
    opt_string(L, 1, "proxy", &c->proxy, 0);
    opt_string(L, 1, "user_agent", &c->user_agent, 1);
    lua_getfield(L, 1, "paths");
    luaL_checktype(L, -1, LUA_TTABLE);
    for (i = 0; i < 4; i++)
        opt_string(L, lua_gettop(L), pathnames[i], &c->paths[i], 1);
    lua_pop(L, 1);
    c->paths[OP_EXCHANGE] = nomba_strndup(c->paths[OP_ISSUE], strlen(c->paths[OP_ISSUE]));
    if (c->paths[OP_EXCHANGE] == NULL)
        return luaL_error(L, "nomba.oauth: out of memory");
    check_urls(L, c);

    c->timeout = opt_number(L, 1, "timeout", 0.001, NOMBA_MAX_TIMEOUT);
    c->connect_timeout = opt_number(L, 1, "connect_timeout", 0.001, NOMBA_MAX_TIMEOUT);
    c->refresh_skew = opt_number(L, 1, "refresh_skew", 0, NOMBA_MAX_LIFETIME);
    c->max_response = (size_t)opt_number(L, 1, "max_response_bytes", 256, NOMBA_MAX_RESPONSE);

    lua_getfield(L, 1, "client_secret");
    if (!lua_isnil(L, -1)) {
        size_t n;
        const char *s = luaL_checklstring(L, -1, &n);
        if (!sbuf_set(&c->secret, s, n))
            return luaL_error(L, "nomba.oauth: out of memory");
    }
    lua_pop(L, 1);

    lua_pushstring(L, c->account_id);
    lua_rawseti(L, 2, UV_ACCOUNT);
    c->closed = 0;
    return 1;
}

/* The refresh window: refresh_skew, but never more than half the token's
 * lifetime, so a short-lived sandbox token is not renewed on every call. */
static double skew_of(const client *c)
{
    double half = c->lifetime / 2;
    return c->refresh_skew < half ? c->refresh_skew : half;
}

/* core.is_client(v): whether v is a client. */
static int client_is(lua_State *L)
{
    lua_pushboolean(L, luaL_testudata(L, 1, NOMBA_CLIENT_MT) != NULL);
    return 1;
}

/* core.fresh(client[, margin]): the hot path. Returns the kept token, the
 * bearer header and the account id while more than margin (default: the
 * refresh window) seconds remain. No allocation: all three are Lua strings
 * kept in the user value. */
static int client_fresh(lua_State *L)
{
    client *c = (client *)lua_touserdata(L, 1);
    if (c == NULL || !luaL_testudata(L, 1, NOMBA_CLIENT_MT))
        return luaL_argerror(L, 1, "nomba.oauth.Client expected");
    int window = lua_isnoneornil(L, 2);
    if (c->closed || c->expires_mono <= 0 ||
        c->expires_mono - nt_mono_coarse() <= (window ? skew_of(c) : lua_tonumber(L, 2)))
        return 0;
    nomba_getuv(L, 1);
    lua_rawgeti(L, -1, UV_TOKEN);
    lua_rawgeti(L, -2, UV_BEARER);
    lua_rawgeti(L, -3, UV_ACCOUNT);
    if (!window)
        return 3;
    lua_pushnumber(L, c->expires_mono - skew_of(c));   /* fresh until, on nt_mono_coarse's clock */
    lua_pushinteger(L, (lua_Integer)c->gen);
    return 5;
}

/* core.genp(client): the address of the client's token generation, for the
 * LuaJIT hot path's FFI check (valid while the client lives). */
static int client_genp(lua_State *L)
{
    client *c = client_check(L, 1);
    lua_pushlightuserdata(L, (void *)&c->gen);
    return 1;
}

/* core.remaining(client): seconds the kept token is still valid, or 0. */
static int client_remaining(lua_State *L)
{
    client *c = client_check(L, 1);
    double left = !c->closed && c->expires_mono > 0 ? c->expires_mono - nt_mono() : 0;
    lua_pushnumber(L, left > 0 ? left : 0);
    return 1;
}

/* core.has(client, what): whether the client holds a "secret", a "refresh"
 * token or an "access" token. */
static int client_has(lua_State *L)
{
    static const char *const what[] = {"secret", "refresh", "access", NULL};
    client *c = client_check(L, 1);
    const sbuf *b[3];
    b[0] = &c->secret;
    b[1] = &c->refresh;
    b[2] = &c->access;
    lua_pushboolean(L, !c->closed && b[luaL_checkoption(L, 2, NULL, what)]->n > 0);
    return 1;
}

/* core.closed(client) */
static int client_closed(lua_State *L)
{
    lua_pushboolean(L, client_check(L, 1)->closed);
    return 1;
}

#if LUA_VERSION_NUM >= 503
/*
 * The hot path as methods written in C (Lua 5.3 and 5.4). Upvalues: 1 the
 * client metatable (a cheaper check than luaL_testudata's registry lookup),
 * 2 the Lua slow path, 3 and 4 the keys "Authorization" and "accountId".
 * When the kept token is not fresh, the call continues into the Lua slow
 * path with lua_callk, so a yielding transport or store still works.
 */
static int fresh_client(lua_State *L, client **out)
{
    client *c = (client *)lua_touserdata(L, 1);
    int ok = c != NULL && lua_getmetatable(L, 1) && lua_rawequal(L, -1, lua_upvalueindex(1));
    *out = c;
    return ok && !c->closed && c->expires_mono > 0 &&
           c->expires_mono - nt_mono_coarse() > skew_of(c);
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

static int client_token_fast(lua_State *L)
{
    int nargs = lua_gettop(L);
    client *c;
    if (fresh_client(L, &c)) {
        nomba_getuv(L, 1);
        lua_rawgeti(L, -1, UV_TOKEN);
        return 1;
    }
    return slow_path(L, nargs);
}

static int client_headers_fast(lua_State *L)
{
    int nargs = lua_gettop(L);
    client *c;
    if (fresh_client(L, &c)) {
        nomba_getuv(L, 1);
        lua_createtable(L, 0, 2);
        lua_pushvalue(L, lua_upvalueindex(3));
        lua_rawgeti(L, -3, UV_BEARER);
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
static int client_install_fast(lua_State *L)
{
#if LUA_VERSION_NUM >= 503
    luaL_checktype(L, 1, LUA_TFUNCTION);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    luaL_getmetatable(L, NOMBA_CLIENT_MT);
    lua_getfield(L, -1, "__index");               /* the methods */
    luaL_getmetatable(L, NOMBA_CLIENT_MT);
    lua_pushvalue(L, 1);
    lua_pushcclosure(L, client_token_fast, 2);
    lua_setfield(L, -2, "token");
    luaL_getmetatable(L, NOMBA_CLIENT_MT);
    lua_pushvalue(L, 2);
    lua_pushliteral(L, "Authorization");
    lua_pushliteral(L, "accountId");
    lua_pushcclosure(L, client_headers_fast, 4);
    lua_setfield(L, -2, "headers");
    lua_pushboolean(L, 1);
#else
    lua_pushboolean(L, 0);
#endif
    return 1;
}

/* core.info(client): the token state the Lua policy needs. */
static int client_info(lua_State *L)
{
    client *c = client_check(L, 1);
    double left = c->expires_mono > 0 ? c->expires_mono - nt_mono() : 0;
    lua_createtable(L, 0, 8);
    lua_pushboolean(L, c->closed);
    lua_setfield(L, -2, "closed");
    lua_pushboolean(L, left > 0);
    lua_setfield(L, -2, "valid");
    lua_pushnumber(L, left > 0 ? left : 0);
    lua_setfield(L, -2, "remaining");
    lua_pushnumber(L, c->lifetime);
    lua_setfield(L, -2, "lifetime");
    lua_pushnumber(L, skew_of(c));
    lua_setfield(L, -2, "skew");
    lua_pushboolean(L, c->refresh.n > 0);
    lua_setfield(L, -2, "has_refresh");
    lua_pushboolean(L, c->access.n > 0);
    lua_setfield(L, -2, "has_access");
    lua_pushboolean(L, c->secret.n > 0);
    lua_setfield(L, -2, "has_secret");
    if (c->in_flight) {
        lua_pushstring(L, nomba_op_names[c->in_flight - 1]);
        lua_setfield(L, -2, "in_flight");
    }
    return 1;
}

static int client_state(lua_State *L)
{
    client_check(L, 1);
    nomba_getuv(L, 1);
    return 1;
}

static int closed_error(lua_State *L, int op)
{
    return err_simple(L, "closed", op, "the client is closed");
}

/* One attempt over libcurl: core.perform(client, op, args, timeout) waits
 * for it and returns the result, or nil and an error, then the HTTP status
 * or nil; core.nb_start(...) starts it on the client's curl_multi handle
 * and returns true at once (or nil, err). */
static int send_request(lua_State *L, int nonblocking)
{
    client *c = client_check(L, 1);
    int op = nomba_checkop(L, 2);
    double timeout = luaL_optnumber(L, 4, c->timeout);
    nomba_request rq;
    int r;
    if (c->closed)
        return closed_error(L, op);
    lua_settop(L, 4);
    r = proto_build(L, 1, c, op, 3, &rq);
    if (r == 0 && !nonblocking)
        r = http_perform(L, 1, c, op, &rq, timeout);
    else if (r == 0 && (r = http_start(L, 1, c, op, &rq, timeout)) == 0) {
        lua_pushboolean(L, 1);
        return 1;                   /* the body stays until the transfer ends */
    }
    proto_request_done(c);
    return r;
}

static int client_perform(lua_State *L)
{
    return send_request(L, 0);
}

static int client_nb_start(lua_State *L)
{
    return send_request(L, 1);
}

/* core.nb_progress(client): nil when nothing is in flight, false while the
 * transfer runs, or true, result, err, status once it is done. Never blocks. */
static int client_nb_progress(lua_State *L)
{
    client *c = client_check(L, 1);
    if (c->closed) {
        lua_pushnil(L);
        return 1;
    }
    return http_progress(L, 1, c);
}

/* core.nb_wait(client, seconds): blocks until the transfer can progress. */
static int client_nb_wait(lua_State *L)
{
    client *c = client_check(L, 1);
    if (!c->closed)
        http_wait(c, luaL_checknumber(L, 2));
    return 0;
}

static int client_nb_abort(lua_State *L)
{
    client *c = client_check(L, 1);
    if (!c->closed)
        http_abort(c);
    return 0;
}

static int client_nb_sockets(lua_State *L)
{
    client *c = client_check(L, 1);
    if (c->closed) {
        lua_newtable(L);
        lua_pushinteger(L, -1);
        return 2;
    }
    return http_sockets(L, c);
}

/* core.request(client, op, args): the request a Lua transport carries. The
 * body becomes a Lua string: that is the price of a custom transport. */
static int client_request(lua_State *L)
{
    client *c = client_check(L, 1);
    int op = nomba_checkop(L, 2);
    nomba_request rq;
    int r;
    if (c->closed)
        return closed_error(L, op);
    lua_settop(L, 3);
    r = proto_build(L, 1, c, op, 3, &rq);
    if (r != 0) {
        proto_request_done(c);
        return r;
    }
    lua_createtable(L, 0, 8);
    lua_pushliteral(L, "POST");
    lua_setfield(L, -2, "method");
    lua_pushstring(L, rq.url);
    lua_setfield(L, -2, "url");
    lua_pushlstring(L, c->reqbody.p, c->reqbody.n);
    lua_setfield(L, -2, "body");
    lua_createtable(L, 0, 4);
    lua_pushliteral(L, "application/json");
    lua_setfield(L, -2, "Content-Type");
    lua_pushliteral(L, "application/json");
    lua_setfield(L, -2, "Accept");
    lua_pushstring(L, c->account_id);
    lua_setfield(L, -2, "accountId");
    lua_pushstring(L, c->user_agent);
    lua_setfield(L, -2, "User-Agent");
    if (rq.bearer) {
        /* "Authorization: Bearer x" -> "Bearer x" */
        const char *v = c->bearer_hdr.p + sizeof "Authorization: " - 1;
        lua_pushstring(L, v);
        lua_setfield(L, -2, "Authorization");
    }
    lua_setfield(L, -2, "headers");
    lua_pushnumber(L, c->timeout);
    lua_setfield(L, -2, "timeout");
    lua_pushnumber(L, c->connect_timeout);
    lua_setfield(L, -2, "connect_timeout");
    lua_pushinteger(L, (lua_Integer)c->max_response);
    lua_setfield(L, -2, "max_response_bytes");
    lua_pushstring(L, nomba_op_names[op]);
    lua_setfield(L, -2, "op");
    if (c->proxy != NULL) {
        lua_pushstring(L, c->proxy);
        lua_setfield(L, -2, "proxy");
    }
    proto_request_done(c);
    return 1;
}

/* Copies a header value (case-insensitive name) from a Lua table. */
static void meta_header(lua_State *L, int t, const char *name, char *dst, size_t cap)
{
    dst[0] = '\0';
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        if (lua_type(L, -2) == LUA_TSTRING) {
            const char *k = lua_tostring(L, -2);
            size_t i;
            int eq = 1;
            for (i = 0; name[i] != '\0' || k[i] != '\0'; i++) {
                char a = k[i], b = name[i];
                if (a >= 'A' && a <= 'Z')
                    a = (char)(a - 'A' + 'a');
                if (a != b) {
                    eq = 0;
                    break;
                }
            }
            if (eq) {
                if (lua_istable(L, -1))
                    lua_rawgeti(L, -1, 1);
                else
                    lua_pushvalue(L, -1);
                if (lua_type(L, -1) == LUA_TSTRING) {
                    size_t n;
                    const char *v = lua_tolstring(L, -1, &n);
                    if (n >= cap)
                        n = cap - 1;
                    memcpy(dst, v, n);
                    dst[n] = '\0';
                }
                lua_pop(L, 3);
                return;
            }
        }
        lua_pop(L, 1);
    }
}

/* core.answer(client, op, status, headers, body): interprets an answer a
 * Lua transport received, exactly as the libcurl path does. */
static int client_answer(lua_State *L)
{
    client *c = client_check(L, 1);
    int op = nomba_checkop(L, 2);
    nomba_answer_meta m;
    size_t n = 0;
    const char *body;
    int r;
    if (c->closed)
        return closed_error(L, op);
    memset(&m, 0, sizeof m);
    m.status = (long)luaL_checkinteger(L, 3);
    if (!lua_isnoneornil(L, 4)) {
        luaL_checktype(L, 4, LUA_TTABLE);
        meta_header(L, 4, "date", m.date, sizeof m.date);
        meta_header(L, 4, "retry-after", m.retry_after, sizeof m.retry_after);
        meta_header(L, 4, "content-type", m.content_type, sizeof m.content_type);
    }
    body = luaL_optlstring(L, 5, "", &n);
    if (n > c->max_response) {
        nomba_err e;
        err_init(&e, "protocol", op, "the answer exceeds max_response_bytes");
        e.status = m.status;
        return err_return(L, c, &e);
    }
    r = proto_interpret(L, 1, c, op, &m, body, n);
    proto_forget_secrets(c);
    return r;
}

/* A token field of a saved table: a string of visible ASCII, or NULL when
 * absent; raises naming the option otherwise. */
static const char *seed_string(lua_State *L, const char *field, size_t *n, int required)
{
    const char *s;
    size_t i;
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
    for (i = 0; i < *n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            luaL_error(L, "nomba.oauth.new: option 'token' has a %s outside visible ASCII", field);
    lua_pop(L, 1);   /* the string stays alive in the table */
    return *n ? s : NULL;
}

/* core.seed(client, token): starts from a saved token table (the shape
 * issue() returns). An expired one is kept for its refresh: its access
 * token is the bearer the refresh needs. */
static int client_seed(lua_State *L)
{
    client *c = client_check(L, 1);
    size_t an = 0, rn = 0;
    const char *at, *rt;
    double at_wall, left, lifetime;
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
    lua_pop(L, 2);
    left = at_wall - nt_wall();
    if (!(left <= NOMBA_MAX_LIFETIME))
        return luaL_error(L, "nomba.oauth.new: option 'token' expires more than a year from now");
    if (!(lifetime > 0 && lifetime <= NOMBA_MAX_LIFETIME))
        lifetime = left > 0 ? left : 0;
    if (c->closed)
        return 0;
    if (!sbuf_set(&c->access, at, an) || (rt != NULL && !sbuf_set(&c->refresh, rt, rn)))
        return luaL_error(L, "nomba.oauth: out of memory");
    lua_getfield(L, 2, "business_id");
    free(c->business_id);
    c->business_id = lua_type(L, -1) == LUA_TSTRING ? nomba_strndup(lua_tostring(L, -1),
                                                                    lua_rawlen(L, -1)) : NULL;
    lua_pop(L, 1);
    c->lifetime = lifetime;
    c->expires_wall = at_wall;
    c->expires_mono = left > 0 ? nt_mono() + left : 0;
    if (left > 0)
        client_set_token(L, 1, c);
    return 0;
}

/* Pushes the kept token as a token table (the shape issue() returns). The
 * access token is the hot path's Lua string when there is one: no second
 * copy. */
void client_push_token(lua_State *L, int cidx, const client *c)
{
    lua_createtable(L, 0, 6);
    nomba_getuv(L, cidx);
    lua_rawgeti(L, -1, UV_TOKEN);
    lua_remove(L, -2);
    if (lua_type(L, -1) != LUA_TSTRING) {
        lua_pop(L, 1);
        lua_pushlstring(L, c->access.p, c->access.n);
    }
    lua_setfield(L, -2, "access_token");
    if (c->refresh.n > 0) {
        lua_pushlstring(L, c->refresh.p, c->refresh.n);
        lua_setfield(L, -2, "refresh_token");
    }
    lua_pushnumber(L, floor(c->expires_wall));
    lua_setfield(L, -2, "expires_at");
    lua_pushinteger(L, (lua_Integer)floor(c->lifetime));
    lua_setfield(L, -2, "expires_in");
    if (c->business_id != NULL) {
        lua_pushstring(L, c->business_id);
        lua_setfield(L, -2, "business_id");
    }
    lua_pushliteral(L, "Bearer");
    lua_setfield(L, -2, "token_type");
}

/* core.kept(client): the kept token as a token table (for on_token), or
 * nothing when none is kept. */
static int client_kept(lua_State *L)
{
    client *c = client_check(L, 1);
    if (c->closed || c->access.n == 0)
        return 0;
    client_push_token(L, 1, c);
    return 1;
}

/* client:invalidate(): never hand out the kept access token again. Its
 * bytes stay (wiped on close) because a refresh sends it as the bearer. */
static int client_invalidate(lua_State *L)
{
    client *c = client_check(L, 1);
    c->expires_mono = 0;
    c->gen++;
    uv_clear_token(L, 1);
    return 0;
}

/* core.drop(client[, access_token]): after a successful revoke, forget the
 * kept token when it is the one revoked (or when none was named); returns
 * whether it did. */
static int client_drop(lua_State *L)
{
    client *c = client_check(L, 1);
    size_t n = 0;
    const char *t = luaL_optlstring(L, 2, NULL, &n);
    int dropped = 0;
    if (!c->closed && c->access.n > 0 &&
        (t == NULL || (n == c->access.n && memcmp(t, c->access.p, n) == 0))) {
        client_drop_token(L, 1, c);
        dropped = 1;
    }
    lua_pushboolean(L, dropped);
    return 1;
}

static int client_close(lua_State *L)
{
    client *c = client_check(L, 1);
    client_cleanup(c);
    uv_clear_token(L, 1);
    return 0;
}

static int client__gc(lua_State *L)
{
    client *c = (client *)luaL_testudata(L, 1, NOMBA_CLIENT_MT);
    if (c != NULL)
        client_cleanup(c);
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
    if (c->expires_mono > 0) {
        double left = c->expires_mono - nt_mono();
        if (left > 0) {
            lua_pushfstring(L, "valid for %ds", (int)(left < NOMBA_MAX_LIFETIME ? left + 0.5 : NOMBA_MAX_LIFETIME));
            state = lua_tostring(L, -1);
        } else {
            state = "expired";
        }
    } else if (c->access.n > 0) {
        state = "invalidated";
    }
    lua_pushfstring(L, "nomba.oauth.Client (account %s, client %s, %s, token %s): %p",
                    c->account_id, c->client_id, c->base_url, state, (void *)c);
    return 1;
}

#ifdef NOMBA_TEST_HOOKS
/* core._test_wiped(client): after close, whether every secret buffer was
 * all zeros just before it was freed, and how many buffers were checked.
 * Compiled only into the test build. */
static int client_test_wiped(lua_State *L)
{
    client *c = client_check(L, 1);
    lua_pushboolean(L, c->closed && c->test_wiped);
    lua_pushinteger(L, c->test_checked);
    return 2;
}
#endif

void client_open(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"close", client_close},
        {"invalidate", client_invalidate},
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
        {"fresh", client_fresh},
        {"genp", client_genp},
        {"remaining", client_remaining},
        {"has", client_has},
        {"closed", client_closed},
        {"is_client", client_is},
        {"install_fast_paths", client_install_fast},
        {"info", client_info},
        {"state", client_state},
        {"perform", client_perform},
        {"request", client_request},
        {"answer", client_answer},
        {"drop", client_drop},
        {"seed", client_seed},
        {"kept", client_kept},
        {"nb_start", client_nb_start},
        {"nb_progress", client_nb_progress},
        {"nb_wait", client_nb_wait},
        {"nb_abort", client_nb_abort},
        {"nb_sockets", client_nb_sockets},
#ifdef NOMBA_TEST_HOOKS
        {"_test_wiped", client_test_wiped},
#endif
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
}
