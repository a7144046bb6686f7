/*
 * err.c: the error values (metatable "nomba.oauth.Error", exposed to Lua
 * as oauth.Error).
 *
 * An error is a plain table {kind, op, status, code, message, retryable,
 * retry_after}. Invariant: no error ever carries a secret. Messages come
 * from our own words, from libcurl's error buffer (which never holds a
 * request body or header), or from the server's `description`, which is
 * cleaned here: control bytes dropped, length capped, and any echo of the
 * client's secret, its tokens or the secret the answered request carried
 * (an explicit token, a PKCE verifier), whole or in pieces of 8 bytes or
 * more, replaced by "[redacted]".
 */
#include <string.h>
#include <stdio.h>
#include <math.h>
#include "nomba.h"

#define MSG_MAX 240

const char *const nomba_op_names[] = {
    "issue", "refresh", "revoke", "authorize", "exchange", "token", "webhook", "request", NULL
};

int nomba_checkop(lua_State *L, int idx)
{
    return luaL_checkoption(L, idx, NULL, nomba_op_names);
}

void err_init(nomba_err *e, const char *kind, int op, const char *msg)
{
    memset(e, 0, sizeof *e);
    e->kind = kind;
    e->op = op;
    e->message = msg;
    e->msglen = msg ? strlen(msg) : 0;
    e->retry_after = -1;
}

/* The longest run at p (of at most n bytes) that stands anywhere inside
 * the secret s. */
static size_t run_in(const char *p, size_t n, const sbuf *s)
{
    size_t j, best = 0;
    for (j = 0; j < s->n; j++) {
        size_t k = 0;
        while (k < n && j + k < s->n && p[k] == s->p[j + k])
            k++;
        if (k > best)
            best = k;
    }
    return best;
}

/* How many bytes at p belong to an echoed secret: a run of at least
 * ECHO_MIN bytes (or a whole short secret) found inside any secret of the
 * client or of the request being answered, so a secret echoed whole, cut
 * short or with a byte changed is still caught, piece by piece. */
#define ECHO_MIN 8
static size_t echoed(const client *c, const char *p, size_t n)
{
    const sbuf *cands[5];
    size_t best = 0;
    int k;
    if (c == NULL)
        return 0;
    cands[0] = &c->tok.secret;
    cands[1] = &c->tok.access;
    cands[2] = &c->tok.refresh;
    cands[3] = &c->at.req_secret[0];
    cands[4] = &c->at.req_secret[1];
    for (k = 0; k < 5; k++) {
        size_t need = cands[k]->n < ECHO_MIN ? cands[k]->n : ECHO_MIN, r;
        if (cands[k]->n < 4)
            continue;
        r = run_in(p, n, cands[k]);
        if (r >= need && r > best)
            best = r;
    }
    return best;
}

/* Pushes a cleaned copy of a message taken from the network: echoed
 * secrets redacted, control bytes made spaces, length capped. */
static void push_clean(lua_State *L, const client *c, const char *p, size_t n)
{
    char out[MSG_MAX + 16];
    size_t i = 0, o = 0;
    while (i < n && o < MSG_MAX) {
        size_t hit = echoed(c, p + i, n - i);
        if (hit) {
            static const char red[] = "[redacted]";
            size_t m = sizeof red - 1;
            if (o + m > MSG_MAX)
                break;
            memcpy(out + o, red, m);
            o += m;
            i += hit;
            continue;
        }
        {
            char ch = p[i++];
            if ((unsigned char)ch < 0x20 || ch == 0x7f)
                ch = ' ';
            out[o++] = ch;
        }
    }
    if (i < n) {
        out[o++] = '.';
        out[o++] = '.';
        out[o++] = '.';
    }
    lua_pushlstring(L, out, o);
}

void err_push(lua_State *L, const client *c, const nomba_err *e)
{
    lua_createtable(L, 0, 8);
    lua_pushstring(L, e->kind);
    lua_setfield(L, -2, "kind");
    lua_pushstring(L, nomba_op_names[e->op]);
    lua_setfield(L, -2, "op");
    if (e->status > 0) {
        lua_pushinteger(L, (lua_Integer)e->status);
        lua_setfield(L, -2, "status");
    }
    if (e->code != NULL) {
        push_clean(L, c, e->code, e->codelen);
        lua_setfield(L, -2, "code");
    }
    push_clean(L, c, e->message ? e->message : e->kind, e->message ? e->msglen : strlen(e->kind));
    lua_setfield(L, -2, "message");
    lua_pushboolean(L, e->retryable);
    lua_setfield(L, -2, "retryable");
    if (e->retry_after >= 0) {
        lua_pushnumber(L, e->retry_after);
        lua_setfield(L, -2, "retry_after");
    }
    luaL_getmetatable(L, NOMBA_ERROR_MT);
    lua_setmetatable(L, -2);
}

int err_return(lua_State *L, const client *c, const nomba_err *e)
{
    lua_pushnil(L);
    err_push(L, c, e);
    return 2;
}

int err_simple(lua_State *L, const char *kind, int op, const char *msg)
{
    nomba_err e;
    err_init(&e, kind, op, msg);
    return err_return(L, NULL, &e);
}

/* An HTTP status from a table anyone may have filled: a whole number in
 * [0, 999], else 0 (no float-to-integer conversion outside its range). */
static double status_of(double d)
{
    return d >= 0 && d <= 999 ? floor(d) : 0;
}

/* tostring(err): one line, e.g.
 * nomba.oauth: issue failed: HTTP 401, Nomba code "401": Invalid client credentials */
static int error__tostring(lua_State *L)
{
    luaL_Buffer b;
    int parts = 0;
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "nomba.oauth: ");
    lua_getfield(L, 1, "op");
    if (lua_type(L, -1) == LUA_TSTRING) {
        luaL_addvalue(&b);
        luaL_addstring(&b, " failed: ");
    } else {
        lua_pop(L, 1);
    }
    lua_getfield(L, 1, "status");
    if (lua_type(L, -1) == LUA_TNUMBER) {
        char tmp[40];
        (void)snprintf(tmp, sizeof tmp, "HTTP %.0f", status_of(lua_tonumber(L, -1)));
        luaL_addstring(&b, tmp);
        parts++;
    }
    lua_pop(L, 1);
    lua_getfield(L, 1, "code");
    if (lua_type(L, -1) == LUA_TSTRING) {
        if (parts++)
            luaL_addstring(&b, ", ");
        luaL_addstring(&b, "Nomba code \"");
        luaL_addvalue(&b);
        luaL_addstring(&b, "\"");
    } else {
        lua_pop(L, 1);
    }
    if (parts == 0) {
        lua_getfield(L, 1, "kind");
        if (lua_type(L, -1) == LUA_TSTRING) {
            luaL_addvalue(&b);
            parts++;
        } else {
            lua_pop(L, 1);
        }
    }
    lua_getfield(L, 1, "message");
    if (lua_type(L, -1) == LUA_TSTRING) {
        if (parts)
            luaL_addstring(&b, ": ");
        luaL_addvalue(&b);
    } else {
        lua_pop(L, 1);
    }
    luaL_pushresult(&b);
    return 1;
}

/* core.error(kind, op, message[, fields]): an error made by the Lua layer,
 * with the same metatable and shape as the ones made in C. */
static int error_new(lua_State *L)
{
    nomba_err e;
    size_t len;
    const char *kind = luaL_checkstring(L, 1);
    int op = nomba_checkop(L, 2);
    const char *msg = luaL_optlstring(L, 3, NULL, &len);
    err_init(&e, kind, op, msg);
    e.msglen = msg ? len : 0;
    if (lua_istable(L, 4)) {
        lua_getfield(L, 4, "status");
        e.status = (long)status_of(lua_tonumber(L, -1));
        lua_getfield(L, 4, "retryable");
        e.retryable = lua_toboolean(L, -1);
        lua_getfield(L, 4, "retry_after");
        if (lua_isnumber(L, -1) && lua_tonumber(L, -1) >= 0 && lua_tonumber(L, -1) <= 1e9)
            e.retry_after = lua_tonumber(L, -1);
        lua_getfield(L, 4, "code");
        if (lua_type(L, -1) == LUA_TSTRING)
            e.code = lua_tolstring(L, -1, &e.codelen);
    }
    err_push(L, NULL, &e);
    return 1;
}

void err_open(lua_State *L)
{
    luaL_newmetatable(L, NOMBA_ERROR_MT);
    lua_pushcfunction(L, error__tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushstring(L, NOMBA_ERROR_MT);
    lua_setfield(L, -2, "__name");
    lua_setfield(L, -2, "Error");
    lua_pushcfunction(L, error_new);
    lua_setfield(L, -2, "error");
}
