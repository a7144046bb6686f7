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
 * pass, every ECHO_MIN-byte piece of the secrets sets two bits of a bloom
 * filter (about 0.06% false positives for a 600-byte token); a position
 * whose piece finds both bits set is then measured exactly. The filter is
 * kept per Lua state for the client and the token generation it was made
 * for (echo_for), so the usual API call only scans.
 */
#define ECHO_MIN 8

static uint64_t piece_of(const char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v * 0x9E3779B97F4A7C15ull;
}

#define BIT1(h) ((h) >> 49)                      /* 15 bits each: ECHO_BITS */
#define BIT2(h) (((h) >> 34) & (ECHO_BITS - 1))
#define HAS(ix, b) (((ix)->bits[(b) >> 6] >> ((b) & 63)) & 1u)

static const sbuf no_secret = {NULL, 0, 0};

/* Indexes the secrets of c (none when c is NULL). */
void echo_begin(echo_index *ix, const client *c)
{
    const sbuf *cands[5];
    size_t i;
    int k;
    ix->nlong = ix->nshort = 0;
    ix->owner = NULL;
    if (c == NULL)
        return;
    cands[0] = &c->tok.secret;
    cands[1] = &c->tok.access;
    cands[2] = &c->tok.refresh;
    cands[3] = c->at != NULL ? &c->at->req_secret[0] : &no_secret;   /* between attempts: none */
    cands[4] = c->at != NULL ? &c->at->req_secret[1] : &no_secret;
    memset(ix->bits, 0, sizeof ix->bits);
    for (k = 0; k < 5; k++) {
        const sbuf *s = cands[k];
        if (s->n < 4)
            continue;
        if (s->n < ECHO_MIN) {
            ix->shorts[ix->nshort++] = s;
            continue;
        }
        ix->longs[ix->nlong++] = s;
        for (i = 0; i + ECHO_MIN <= s->n; i++) {
            uint64_t h = piece_of(s->p + i);
            ix->bits[BIT1(h) >> 6] |= 1ull << (BIT1(h) & 63);
            ix->bits[BIT2(h) >> 6] |= 1ull << (BIT2(h) & 63);
        }
    }
}

static const char cache_key = 'e';   /* registry key: the Lua state's kept index */

/* The index of c's secrets: the one kept for this Lua state when it was
 * made for c at this token generation and the request carries no secret
 * of its own; else made anew (and kept when it can be reused). */
const echo_index *echo_for(lua_State *L, const client *c)
{
    echo_index *ix;
    int reusable = c->at == NULL || (c->at->req_secret[0].n == 0 && c->at->req_secret[1].n == 0);
    lua_pushlightuserdata(L, (void *)&cache_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    ix = (echo_index *)lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (ix == NULL) {
        lua_pushlightuserdata(L, (void *)&cache_key);
        ix = (echo_index *)lua_newuserdata(L, sizeof *ix);
        ix->owner = NULL;
        lua_rawset(L, LUA_REGISTRYINDEX);   /* the userdata stays referenced: ix stays valid */
    }
    if (reusable && ix->owner == c && ix->serial == c->serial && ix->gen == c->tok.gen)
        return ix;
    echo_begin(ix, c);
    if (reusable) {
        ix->owner = c;
        ix->serial = c->serial;
        ix->gen = c->tok.gen;
    }
    return ix;
}

/* How many bytes at p (of n) are an echoed secret: 0 when none. */
static size_t echo_at(const echo_index *ix, const char *p, size_t n)
{
    size_t best = 0;
    int k;
    for (k = 0; k < ix->nshort; k++) {
        const sbuf *s = ix->shorts[k];
        if (s->n <= n && memcmp(p, s->p, s->n) == 0 && s->n > best)
            best = s->n;
    }
    if (ix->nlong > 0 && n >= ECHO_MIN) {
        uint64_t h = piece_of(p);
        if (HAS(ix, BIT1(h)) && HAS(ix, BIT2(h))) {
            for (k = 0; k < ix->nlong; k++) {
                size_t r = run_in(p, n, ix->longs[k]);
                if (r >= ECHO_MIN && r > best)
                    best = r;
            }
        }
    }
    return best;
}

/* The first echo in [p, p+n): 1 with its offset and length, or 0. */
int echo_find(const echo_index *ix, const char *p, size_t n, size_t *at, size_t *len)
{
    size_t i;
    if (ix->nlong == 0 && ix->nshort == 0)
        return 0;
    if (ix->nshort > 0) {                   /* rare: a whole short secret anywhere */
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
    /* the usual scan: a piece's two bits, tested inline, at every position */
    for (i = 0; i + ECHO_MIN <= n; i++) {
        uint64_t h = piece_of(p + i);
        if (HAS(ix, BIT1(h)) && HAS(ix, BIT2(h))) {
            size_t hit = echo_at(ix, p + i, n - i);
            if (hit) {
                *at = i;
                *len = hit;
                return 1;
            }
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
    char out[NOMBA_MAX_MESSAGE + 16];
    size_t i = 0, o = 0;
    while (i < n && o < NOMBA_MAX_MESSAGE) {
        size_t hit = echo_at(ix, p + i, n - i);
        if (hit) {
            size_t m = sizeof RED - 1;
            if (o + m > NOMBA_MAX_MESSAGE)
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
    echo_index none;
    const echo_index *ix = &none;
    none.nlong = none.nshort = 0;
    if (c != NULL)
        ix = echo_for(L, c);
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
        push_clean(L, ix, e->code, e->codelen);
        lua_setfield(L, -2, "code");
    }
    push_clean(L, ix, e->message ? e->message : e->kind, e->message ? e->msglen : strlen(e->kind));
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

/* core.error([client, ]kind, op, message[, fields]): an error made by the
 * Lua layer, with the same metatable and shape as the ones made in C, and
 * with its client, redacted by the same rule. */
static int error_new(lua_State *L)
{
    nomba_err e;
    size_t len;
    const client *c = (const client *)luaL_testudata(L, 1, NOMBA_CLIENT_MT);
    int b = c != NULL ? 1 : 0;          /* the arguments after the client */
    const char *kind = luaL_checkstring(L, b + 1);
    int op = nomba_checkop(L, b + 2);
    const char *msg = luaL_optlstring(L, b + 3, NULL, &len);
    err_init(&e, kind, op, msg);
    e.msglen = msg ? len : 0;
    if (lua_istable(L, b + 4)) {
        lua_getfield(L, b + 4, "status");
        e.status = (long)status_of(lua_tonumber(L, -1));
        lua_getfield(L, b + 4, "retryable");
        e.retryable = lua_toboolean(L, -1);
        lua_getfield(L, b + 4, "retry_after");
        if (lua_isnumber(L, -1) && lua_tonumber(L, -1) >= 0 && lua_tonumber(L, -1) <= 1e9)
            e.retry_after = lua_tonumber(L, -1);
        lua_getfield(L, b + 4, "code");
        if (lua_type(L, -1) == LUA_TSTRING)
            e.code = lua_tolstring(L, -1, &e.codelen);
    }
    err_push(L, c != NULL && !c->closed ? c : NULL, &e);
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
