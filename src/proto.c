/*
 * proto.c: the Nomba wire contract, without I/O.
 *
 * proto_build() turns an operation into a URL, a JSON body and maybe a
 * bearer header; proto_interpret() turns (status, headers, body) into a
 * result or a typed error and updates the kept token. Both transports,
 * libcurl in C and any Lua transport, go through these two functions, so
 * the contract is written once.
 *
 * JSON is lua-cjson's, through a private instance (cjson.safe.new()) kept
 * in the registry, so other code's cjson settings never change ours. A
 * secret never becomes a Lua string on the libcurl path: cjson encodes the
 * non-secret fields, and the secret is appended in C into a client-owned
 * buffer that is wiped after the attempt.
 */
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <stdio.h>
#include "nomba.h"

static const char json_key = 'j';   /* registry key: our cjson instance */

static void push_json_fn(lua_State *L, const char *name)
{
    lua_pushlightuserdata(L, (void *)&json_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, name);
    lua_remove(L, -2);
}

void proto_open(lua_State *L)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson.safe");
    if (lua_pcall(L, 1, 1, 0) != 0)
        luaL_error(L, "nomba.oauth.core needs lua-cjson (require 'cjson.safe' failed: %s)",
                   lua_tostring(L, -1));
    lua_getfield(L, -1, "new");
    lua_call(L, 0, 1);
    lua_getfield(L, -1, "decode_max_depth");
    lua_pushinteger(L, 32);
    lua_call(L, 1, 0);
    lua_pushlightuserdata(L, (void *)&json_key);
    lua_pushvalue(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
    lua_pop(L, 2);
}

/* Wipes the request buffers, unless a non-blocking transfer still sends
 * them (its end, or its abort, wipes them). */
void proto_request_done(client *c)
{
    if (c->in_flight)
        return;
    sbuf_wipe(&c->reqbody);
    sbuf_wipe(&c->bearer_hdr);
}

static int config_error(lua_State *L, client *c, int op, const char *msg)
{
    nomba_err e;
    err_init(&e, "config", op, msg);
    return err_return(L, c, &e);
}

/* A string field of the args table at idx, or NULL. */
static const char *arg_string(lua_State *L, int idx, const char *name, size_t *n)
{
    const char *s = NULL;
    if (!lua_istable(L, idx))
        return NULL;
    lua_getfield(L, idx, name);
    if (lua_type(L, -1) == LUA_TSTRING)
        s = lua_tolstring(L, -1, n);
    lua_pop(L, 1);   /* the string stays alive in the args table */
    return s;
}

static void set_field(lua_State *L, const char *k, const char *v)
{
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
}

static void copy_arg(lua_State *L, int argidx, const char *name)
{
    size_t n;
    const char *v = arg_string(L, argidx, name, &n);
    if (v != NULL) {
        lua_pushlstring(L, v, n);
        lua_setfield(L, -2, name);
    }
}

/* Encodes the table on top of the stack (popping it) with our cjson and
 * returns the JSON without its closing brace as a malloc'd string. */
static char *encode_open(lua_State *L, size_t *n)
{
    const char *json;
    char *out = NULL;
    push_json_fn(L, "encode");
    lua_insert(L, -2);
    lua_call(L, 1, 1);
    json = lua_tolstring(L, -1, n);
    if (json != NULL && *n >= 2 && json[*n - 1] == '}')
        out = nomba_strndup(json, --*n);
    lua_pop(L, 1);
    return out;
}

/* The non-secret part of a request body. For issue, refresh and revoke it
 * never changes for a client, so it is encoded once and kept; authorize and
 * exchange carry per-call values. The caller frees what *fresh says. */
static const char *body_open(lua_State *L, client *c, int op, int argidx, size_t *n, int *fresh)
{
    *fresh = 0;
    if (c->body_open[op] != NULL) {
        *n = strlen(c->body_open[op]);
        return c->body_open[op];
    }
    lua_createtable(L, 0, 6);
    switch (op) {
    case OP_ISSUE:
        set_field(L, "grant_type", "client_credentials");
        set_field(L, "client_id", c->client_id);
        break;
    case OP_REFRESH:
        set_field(L, "grant_type", "refresh_token");
        break;
    case OP_REVOKE:
        set_field(L, "clientId", c->client_id);
        break;
    case OP_AUTHORIZE:
        set_field(L, "client_id", c->client_id);
        set_field(L, "code_challenge_method", "S256");
        copy_arg(L, argidx, "code_challenge");
        copy_arg(L, argidx, "code_challenge_method");
        copy_arg(L, argidx, "redirect_uri");
        copy_arg(L, argidx, "state");
        copy_arg(L, argidx, "scope");
        break;
    default: /* OP_EXCHANGE */
        set_field(L, "grant_type", "authorization_code");
        set_field(L, "client_id", c->client_id);
        copy_arg(L, argidx, "auth_code");
        break;
    }
    if (op == OP_AUTHORIZE || op == OP_EXCHANGE) {
        *fresh = 1;
        return encode_open(L, n);
    }
    c->body_open[op] = encode_open(L, n);
    return c->body_open[op];
}

int proto_build(lua_State *L, int cidx, client *c, int op, int argidx, nomba_request *rq)
{
    const char *secret_name = NULL, *secret = NULL, *open;
    size_t secret_len = 0, on, unused;
    int n, fresh, ok;

    memset(rq, 0, sizeof *rq);
    if (c->in_flight)
        return config_error(L, c, op, "a non-blocking transfer is in flight: finish it with step() or wait()");
    proto_request_done(c);
    sbuf_wipe(&c->req_secret);
    (void)cidx;
    n = snprintf(rq->url, sizeof rq->url, "%s%s", c->base_url, c->paths[op]);
    if (n < 0 || (size_t)n >= sizeof rq->url)
        return config_error(L, c, op, "base_url and path are too long");

    switch (op) {
    case OP_ISSUE:
        if (c->secret.n == 0)
            return config_error(L, c, op,
                "issue needs client_secret; this is a PKCE client: use authorize and exchange");
        secret_name = "client_secret";
        secret = c->secret.p;
        secret_len = c->secret.n;
        break;
    case OP_REFRESH:
        secret = arg_string(L, argidx, "refresh_token", &secret_len);
        if (secret == NULL && c->refresh.n > 0) {
            secret = c->refresh.p;
            secret_len = c->refresh.n;
        }
        if (secret == NULL || secret_len == 0)
            return config_error(L, c, op, "there is no refresh token to use");
        secret_name = "refresh_token";
        if (c->access.n > 0) {
            if (!sbuf_adds(&c->bearer_hdr, "Authorization: Bearer ") ||
                !sbuf_add(&c->bearer_hdr, c->access.p, c->access.n))
                return luaL_error(L, "nomba.oauth: out of memory");
            rq->bearer = 1;
        }
        break;
    case OP_REVOKE:
        secret = arg_string(L, argidx, "access_token", &secret_len);
        if (secret == NULL && c->access.n > 0) {
            secret = c->access.p;
            secret_len = c->access.n;
        }
        if (secret == NULL || secret_len == 0)
            return config_error(L, c, op, "there is no access token to revoke");
        secret_name = "access_token";
        break;
    case OP_AUTHORIZE:
        if (arg_string(L, argidx, "code_challenge", &unused) == NULL)
            return config_error(L, c, op, "code_challenge is required");
        break;
    case OP_EXCHANGE:
        secret = arg_string(L, argidx, "code_verifier", &secret_len);
        if (arg_string(L, argidx, "auth_code", &unused) == NULL || secret == NULL)
            return config_error(L, c, op, "auth_code and code_verifier are required");
        secret_name = "code_verifier";
        break;
    default:
        return config_error(L, c, op, "this operation sends no request");
    }

    if (secret != NULL && secret != c->secret.p && !sbuf_set(&c->req_secret, secret, secret_len))
        return luaL_error(L, "nomba.oauth: out of memory");
    open = body_open(L, c, op, argidx, &on, &fresh);
    if (open == NULL)
        return config_error(L, c, op, "could not encode the request");
    ok = sbuf_add(&c->reqbody, open, on);
    if (ok && secret_name != NULL)
        ok = (on <= 1 || sbuf_adds(&c->reqbody, ",")) &&
             sbuf_adds(&c->reqbody, "\"") && sbuf_adds(&c->reqbody, secret_name) &&
             sbuf_adds(&c->reqbody, "\":\"") &&
             sbuf_add_json_string(&c->reqbody, secret, secret_len) &&
             sbuf_adds(&c->reqbody, "\"");
    ok = ok && sbuf_adds(&c->reqbody, "}");
    if (fresh)
        free((void *)open);
    if (!ok)
        return luaL_error(L, "nomba.oauth: out of memory");
    return 0;
}

/* ---- interpreting answers ------------------------------------------ */

/* Pushes the first present field among names from the table at t whose
 * type is typ (LUA_TSTRING or LUA_TNUMBER); returns 1, or 0 with nothing
 * pushed. */
static int field_any(lua_State *L, int t, const char *const *names, int typ)
{
    for (; *names != NULL; names++) {
        lua_getfield(L, t, *names);
        if (lua_type(L, -1) == typ)
            return 1;
        lua_pop(L, 1);
    }
    return 0;
}

/* Token-like values from the network go into header lines: only visible
 * ASCII (no space, no control byte, nothing above 0x7e) may pass. */
static int visible(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return 0;
    return 1;
}

/* Names: printable ASCII, spaces allowed. */
static int printable(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f)
            return 0;
    return 1;
}

static int retryable_status(long s)
{
    return s == 408 || s == 425 || s == 429 || s >= 500;
}

static double retry_after_of(const nomba_answer_meta *m)
{
    double now = nt_wall(), ra, date;
    if (m->retry_after[0] == '\0')
        return -1;
    if (nt_httpdate(m->date, strlen(m->date), &date))
        now = date;
    if (nt_retry_after(m->retry_after, strlen(m->retry_after), now, &ra))
        return ra;
    return -1;
}

static int fail(lua_State *L, client *c, nomba_err *e, long status)
{
    lua_pushnil(L);
    err_push(L, c, e);
    if (status > 0)
        lua_pushinteger(L, (lua_Integer)status);
    else
        lua_pushnil(L);
    return 3;
}

static int protocol_error(lua_State *L, client *c, int op, long status, const char *msg)
{
    nomba_err e;
    err_init(&e, "protocol", op, msg);
    e.status = status;
    return fail(L, c, &e, status);
}

/* A successful token answer: keep the token, return the token table. */
static int take_token(lua_State *L, int cidx, client *c, int op, int data,
                      const nomba_answer_meta *m)
{
    static const char *const at_names[] = {"access_token", "accessToken", NULL};
    static const char *const rt_names[] = {"refresh_token", "refreshToken", NULL};
    static const char *const exp_names[] = {"expiresAt", "expires_at", "expiry", NULL};
    static const char *const in_names[] = {"expires_in", "expiresIn", NULL};
    static const char *const biz_names[] = {"businessId", "business_id", NULL};
    const char *at, *rt = NULL;
    size_t atn, rtn = 0;
    double lifetime, now_wall = nt_wall(), server_now = now_wall, t;
    int i_at, i_rt = 0, i_biz = 0;

    if (!field_any(L, data, at_names, LUA_TSTRING))
        return protocol_error(L, c, op, m->status, "the answer has no access_token");
    i_at = lua_gettop(L);
    at = lua_tolstring(L, i_at, &atn);
    if (atn == 0)
        return protocol_error(L, c, op, m->status, "the answer has an empty access_token");
    if (!visible(at, atn))
        return protocol_error(L, c, op, m->status, "the answer's access_token has bytes outside printable ASCII");
    if (field_any(L, data, rt_names, LUA_TSTRING)) {
        i_rt = lua_gettop(L);
        rt = lua_tolstring(L, i_rt, &rtn);
        if (!visible(rt, rtn))
            return protocol_error(L, c, op, m->status, "the answer's refresh_token has bytes outside printable ASCII");
    }
    if (field_any(L, data, biz_names, LUA_TSTRING)) {
        size_t bn;
        const char *b = lua_tolstring(L, -1, &bn);
        i_biz = lua_gettop(L);
        if (!printable(b, bn))
            return protocol_error(L, c, op, m->status, "the answer's businessId has bytes outside printable ASCII");
    }

    if (m->date[0] != '\0' && nt_httpdate(m->date, strlen(m->date), &t))
        server_now = t;
    if (field_any(L, data, exp_names, LUA_TSTRING)) {
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        if (!nt_iso8601(s, n, &t))
            return protocol_error(L, c, op, m->status, "the answer's expiresAt is not an ISO 8601 time");
        lua_pop(L, 1);
        lifetime = t - server_now;
    } else if (field_any(L, data, in_names, LUA_TNUMBER) ||
               field_any(L, data, in_names, LUA_TSTRING)) {
        int isnum = 0;
        lifetime = lua_tonumber(L, -1);
        isnum = lua_isnumber(L, -1);
        lua_pop(L, 1);
        if (!isnum)
            return protocol_error(L, c, op, m->status, "the answer's expires_in is not a number");
    } else {
        return protocol_error(L, c, op, m->status, "the answer has neither expiresAt nor expires_in");
    }
    if (!(lifetime > 0))        /* NaN too */
        return protocol_error(L, c, op, m->status, "the answer's token is already expired");
    if (!(lifetime <= NOMBA_MAX_LIFETIME))   /* and infinity: a token that never renews */
        return protocol_error(L, c, op, m->status, "the answer's token lifetime is over a year");

    if (!sbuf_set(&c->access, at, atn) || (rt != NULL && !sbuf_set(&c->refresh, rt, rtn)))
        return luaL_error(L, "nomba.oauth: out of memory");
    free(c->business_id);
    c->business_id = NULL;
    if (i_biz) {
        size_t bn;
        const char *b = lua_tolstring(L, i_biz, &bn);
        c->business_id = nomba_strndup(b, bn);
    }
    c->lifetime = lifetime;
    c->expires_mono = nt_mono() + lifetime;
    c->expires_wall = now_wall + lifetime;
    client_set_token(L, cidx, c);

    lua_createtable(L, 0, 6);
    lua_pushvalue(L, i_at);
    lua_setfield(L, -2, "access_token");
    if (i_rt) {
        lua_pushvalue(L, i_rt);
        lua_setfield(L, -2, "refresh_token");
    } else if (c->refresh.n > 0) {
        lua_pushlstring(L, c->refresh.p, c->refresh.n);
        lua_setfield(L, -2, "refresh_token");
    }
    lua_pushnumber(L, floor(c->expires_wall));
    lua_setfield(L, -2, "expires_at");
    lua_pushinteger(L, (lua_Integer)floor(lifetime));
    lua_setfield(L, -2, "expires_in");
    if (i_biz) {
        lua_pushvalue(L, i_biz);
        lua_setfield(L, -2, "business_id");
    }
    lua_pushliteral(L, "Bearer");
    lua_setfield(L, -2, "token_type");
    lua_pushnil(L);
    lua_pushinteger(L, (lua_Integer)m->status);
    return 3;
}

static int success(lua_State *L, int cidx, client *c, int op, int doc,
                   const nomba_answer_meta *m)
{
    int data = doc;
    lua_getfield(L, doc, "data");
    if (lua_istable(L, -1))
        data = lua_gettop(L);
    else
        lua_pop(L, 1);
    switch (op) {
    case OP_ISSUE:
    case OP_REFRESH:
    case OP_EXCHANGE:
        return take_token(L, cidx, c, op, data, m);
    case OP_AUTHORIZE: {
        static const char *const names[] = {"auth_code", "authCode", "code", NULL};
        size_t n;
        const char *code;
        if (!field_any(L, data, names, LUA_TSTRING) || data == doc)
            return protocol_error(L, c, op, m->status, "the answer has no auth_code");
        code = lua_tolstring(L, -1, &n);
        if (n == 0 || !visible(code, n))
            return protocol_error(L, c, op, m->status, "the answer's auth_code has bytes outside printable ASCII");
        lua_pushnil(L);
        lua_pushinteger(L, (lua_Integer)m->status);
        return 3;
    }
    default: /* OP_REVOKE */
        lua_pushboolean(L, 1);
        lua_pushnil(L);
        lua_pushinteger(L, (lua_Integer)m->status);
        return 3;
    }
}

int proto_interpret(lua_State *L, int cidx, client *c, int op,
                    const nomba_answer_meta *m, const char *body, size_t n)
{
    long st = m->status;
    int ok2xx = st >= 200 && st < 300, doc;
    nomba_err e;

    luaL_checkstack(L, 20, "nomba.oauth");
    push_json_fn(L, "decode");
    lua_pushlstring(L, body, n);
    lua_call(L, 1, 1);
    doc = lua_gettop(L);

    if (lua_istable(L, doc)) {
        const char *code = NULL;
        size_t codelen = 0;
        lua_getfield(L, doc, "code");
        if (lua_type(L, -1) == LUA_TNUMBER) {
            /* a numeric code reads as Nomba writes it: 2 is "2", not "2.0" */
            double d = lua_tonumber(L, -1);
            char num[32];
            if (d == floor(d) && fabs(d) < 1e15)
                (void)snprintf(num, sizeof num, "%.0f", d);
            else
                (void)snprintf(num, sizeof num, "%.14g", d);
            lua_pushstring(L, num);
        }
        if (lua_type(L, -1) == LUA_TSTRING)
            code = lua_tolstring(L, -1, &codelen);
        if (ok2xx && (code == NULL || (codelen == 2 && memcmp(code, "00", 2) == 0)))
            return success(L, cidx, c, op, doc, m);
        if (code != NULL) {
            static const char *const msg_names[] = {"description", "message", "error_description", NULL};
            err_init(&e, "api", op, NULL);
            e.code = code;
            e.codelen = codelen;
            if (field_any(L, doc, msg_names, LUA_TSTRING))
                e.message = lua_tolstring(L, -1, &e.msglen);
            else
                e.message = "Nomba refused the request", e.msglen = strlen(e.message);
            e.status = st;
            e.retryable = retryable_status(st);
            e.retry_after = ok2xx ? -1 : retry_after_of(m);
            return fail(L, c, &e, st);
        }
    }
    if (ok2xx)
        return protocol_error(L, c, op, st, n == 0 ? "the answer is empty"
                                            : "the answer is not a Nomba JSON body");
    {
        char msg[160];
        const char *ct = m->content_type[0] ? m->content_type : "no content type";
        if (n == 0)
            err_init(&e, "http", op, "empty answer");
        else {
            (void)snprintf(msg, sizeof msg, "unexpected answer (%.60s)", ct);
            err_init(&e, "http", op, msg);
        }
        e.status = st;
        e.retryable = retryable_status(st);
        e.retry_after = retry_after_of(m);
        return fail(L, c, &e, st);
    }
}
