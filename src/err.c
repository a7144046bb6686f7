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
 * more, replaced by "[redacted]". The same rule (echo_*) redacts the
 * headers and body of an API answer (proto.c).
 */
#include <string.h>
#include <stdio.h>
#include <stdint.h>
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

/*
 * The one redaction rule, for error messages and for API answers alike: a
 * run of at least ECHO_MIN bytes (or a whole secret shorter than that, of
 * at least 4) found inside any secret of the client or of the request
 * being answered, so a secret echoed whole, cut short or with a byte
 * changed is still caught, piece by piece. To scan a whole answer in one
 * pass, the secrets' ECHO_MIN-byte pieces are indexed first (32-bit
 * fingerprints, open addressing); a position whose piece is in the index is
 * then measured exactly.
 */
#define ECHO_MIN 8

static uint32_t piece_of(const char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return (uint32_t)((v * 0x9E3779B97F4A7C15ull) >> 32) | 1u;
}

static void index_put(echo_index *ix, uint32_t f)
{
    size_t i = f & ix->mask;
    while (ix->slot[i] != 0 && ix->slot[i] != f)
        i = (i + 1) & ix->mask;
    ix->slot[i] = f;
}

static int index_has(const echo_index *ix, uint32_t f)
{
    size_t i = f & ix->mask;
    while (ix->slot[i] != 0) {
        if (ix->slot[i] == f)
            return 1;
        i = (i + 1) & ix->mask;
    }
    return 0;
}

/* Indexes the secrets of c (none when c is NULL). The index lives in the
 * caller's frame (nothing to free, nothing lost if a push raises); secrets
 * with more pieces than it holds leave it empty, and every position is
 * then measured: slower, never weaker. */
void echo_begin(echo_index *ix, const client *c)
{
    const sbuf *cands[5];
    size_t pieces = 0, size = 16, i;
    int k;
    ix->nsec = 0;
    ix->slot = NULL;
    ix->mask = 0;
    ix->slow = 0;
    if (c == NULL)
        return;
    cands[0] = &c->tok.secret;
    cands[1] = &c->tok.access;
    cands[2] = &c->tok.refresh;
    cands[3] = &c->at.req_secret[0];
    cands[4] = &c->at.req_secret[1];
    for (k = 0; k < 5; k++) {
        if (cands[k]->n < 4)
            continue;
        ix->sec[ix->nsec++] = cands[k];
        if (cands[k]->n >= ECHO_MIN)
            pieces += cands[k]->n - ECHO_MIN + 1;
    }
    if (pieces == 0)
        return;
    while (size < pieces * 2)
        size <<= 1;
    if (size > sizeof ix->local / sizeof ix->local[0]) {
        ix->slow = 1;
        return;
    }
    ix->slot = ix->local;
    memset(ix->local, 0, size * sizeof ix->local[0]);
    ix->mask = size - 1;
    for (k = 0; k < ix->nsec; k++)
        for (i = 0; i + ECHO_MIN <= ix->sec[k]->n; i++)
            index_put(ix, piece_of(ix->sec[k]->p + i));
}

/* How many bytes at p (of n) are an echoed secret: 0 when none. */
static size_t echo_at(const echo_index *ix, const char *p, size_t n)
{
    size_t best = 0;
    int k;
    if (!ix->slow && (n < ECHO_MIN || ix->mask == 0 || !index_has(ix, piece_of(p)))) {
        /* no piece starts here: only a whole short secret can */
        for (k = 0; k < ix->nsec; k++) {
            const sbuf *s = ix->sec[k];
            if (s->n < ECHO_MIN && s->n <= n && memcmp(p, s->p, s->n) == 0 && s->n > best)
                best = s->n;
        }
        return best;
    }
    for (k = 0; k < ix->nsec; k++) {
        size_t need = ix->sec[k]->n < ECHO_MIN ? ix->sec[k]->n : ECHO_MIN;
        size_t r = run_in(p, n, ix->sec[k]);
        if (r >= need && r > best)
            best = r;
    }
    return best;
}

/* The first echo in [p, p+n): 1 with its offset and length, or 0. */
int echo_find(const echo_index *ix, const char *p, size_t n, size_t *at, size_t *len)
{
    size_t i;
    if (ix->nsec == 0)
        return 0;
    for (i = 0; i < n; i++) {
        size_t hit = echo_at(ix, p + i, n - i);
        if (hit) {
            *at = i;
            *len = hit;
            return 1;
        }
    }
    return 0;
}

static const char RED[] = "[redacted]";

/* Pushes [p, p+n) with every echoed secret replaced by "[redacted]": the
 * bytes of an API answer (no copy when nothing is echoed). */
void echo_push(lua_State *L, const echo_index *ix, const char *p, size_t n)
{
    luaL_Buffer b;
    size_t at, len;
    if (!echo_find(ix, p, n, &at, &len)) {
        lua_pushlstring(L, p, n);
        return;
    }
    luaL_buffinit(L, &b);
    do {
        luaL_addlstring(&b, p, at);
        luaL_addlstring(&b, RED, sizeof RED - 1);
        p += at + len;
        n -= at + len;
    } while (echo_find(ix, p, n, &at, &len));
    luaL_addlstring(&b, p, n);
    luaL_pushresult(&b);
}

/* Pushes a cleaned copy of a message taken from the network: echoed
 * secrets redacted, control bytes made spaces, length capped. */
static void push_clean(lua_State *L, const echo_index *ix, const char *p, size_t n)
{
    char out[MSG_MAX + 16];
    size_t i = 0, o = 0;
    while (i < n && o < MSG_MAX) {
        size_t hit = ix->nsec ? echo_at(ix, p + i, n - i) : 0;
        if (hit) {
            size_t m = sizeof RED - 1;
            if (o + m > MSG_MAX)
                break;
            memcpy(out + o, RED, m);
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
    echo_index ix;
    echo_begin(&ix, c);
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
        push_clean(L, &ix, e->code, e->codelen);
        lua_setfield(L, -2, "code");
    }
    push_clean(L, &ix, e->message ? e->message : e->kind, e->message ? e->msglen : strlen(e->kind));
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
