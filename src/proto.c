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

void proto_forget_secrets(client *c)
{
    sbuf_wipe(&c->req_secret[0]);
    sbuf_wipe(&c->req_secret[1]);
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
    proto_forget_secrets(c);
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
        {
            /* Nomba's refresh needs the session's access token (an expired
             * one will do) as its bearer: the given one, else the kept one */
            size_t bn = 0;
            const char *b = arg_string(L, argidx, "access_token", &bn);
            if (b != NULL && bn > 0) {
                size_t i;
                for (i = 0; i < bn; i++)      /* it goes into a header line */
                    if ((unsigned char)b[i] <= 0x20 || (unsigned char)b[i] >= 0x7f)
                        return config_error(L, c, op, "the access_token to send as bearer has bytes "
                                            "outside visible ASCII");
                if (!sbuf_set(&c->req_secret[1], b, bn))
                    return luaL_error(L, "nomba.oauth: out of memory");
            } else if (c->access.n > 0) {
                b = c->access.p;
                bn = c->access.n;
            } else {
                return config_error(L, c, op, "a refresh needs the session's access token (an expired one "
                                    "will do) as its bearer: refresh{refresh_token = ..., access_token = ...}");
            }
            if (!sbuf_adds(&c->bearer_hdr, "Authorization: Bearer ") || !sbuf_add(&c->bearer_hdr, b, bn))
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

    if (secret != NULL && secret != c->secret.p && !sbuf_set(&c->req_secret[0], secret, secret_len))
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

/* The members an answer may carry (json.c records where each stands, in
 * the document and in its "data" object). */
enum {
    F_CODE, F_DESCRIPTION, F_MESSAGE, F_ERROR_DESCRIPTION,
    F_ACCESS_TOKEN, F_ACCESSTOKEN, F_REFRESH_TOKEN, F_REFRESHTOKEN,
    F_EXPIRESAT, F_EXPIRES_AT, F_EXPIRY, F_EXPIRES_IN, F_EXPIRESIN,
    F_BUSINESSID, F_BUSINESS_ID, F_AUTH_CODE, F_AUTHCODE, F__N
};
static const char *const field_names[F__N] = {
    "code", "description", "message", "error_description",
    "access_token", "accessToken", "refresh_token", "refreshToken",
    "expiresAt", "expires_at", "expiry", "expires_in", "expiresIn",
    "businessId", "business_id", "auth_code", "authCode"
};

typedef struct {
    json_span top[F__N], data[F__N];
    const json_span *d;     /* data's members, or the document's when it has no "data" object */
    int has_data;
} answer;

/* The first of fields [a, b] whose value has the given type, or NULL. */
static const json_span *pick(const json_span *f, int a, int b, int type)
{
    for (; a <= b; a++)
        if (f[a].type == type)
            return &f[a];
    return NULL;
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

static void swap_sbuf(sbuf *a, sbuf *b)
{
    sbuf t = *a;
    *a = *b;
    *b = t;
}

/* Unescapes a string member into dst; 1, 0 when absent, -1 out of memory. */
static int take_string(const json_span *v, sbuf *dst)
{
    if (v == NULL) {
        sbuf_wipe(dst);
        return 0;
    }
    return json_string(v, dst);
}

/* A successful token answer: keep the token, return the token table. The
 * tokens go from the answer buffer to the client's buffers without
 * becoming Lua strings on the way; only the table handed back holds them
 * as Lua strings. */
static int take_token(lua_State *L, int cidx, client *c, int op, const answer *a,
                      const nomba_answer_meta *m)
{
    const json_span *at = pick(a->d, F_ACCESS_TOKEN, F_ACCESSTOKEN, J_STRING);
    const json_span *rt = pick(a->d, F_REFRESH_TOKEN, F_REFRESHTOKEN, J_STRING);
    const json_span *biz = pick(a->d, F_BUSINESSID, F_BUSINESS_ID, J_STRING);
    const json_span *exp = pick(a->d, F_EXPIRESAT, F_EXPIRY, J_STRING);
    const json_span *in = pick(a->d, F_EXPIRES_IN, F_EXPIRESIN, J_NUMBER);
    sbuf *new_at = &c->scratch[0], *new_rt = &c->scratch[1];
    sbuf b = {NULL, 0, 0};
    double lifetime = 0, now_wall = nt_wall(), server_now = now_wall, t = 0;
    const char *why = NULL;

    if (in == NULL)
        in = pick(a->d, F_EXPIRES_IN, F_EXPIRESIN, J_STRING);
    if (at == NULL)
        return protocol_error(L, c, op, m->status, "the answer has no access_token");
    if (take_string(at, new_at) < 0 || take_string(rt, new_rt) < 0 || take_string(biz, &b) < 0) {
        sbuf_wipe(new_at);
        sbuf_wipe(new_rt);
        sbuf_free(&b);
        return luaL_error(L, "nomba.oauth: out of memory");
    }
    if (new_at->n == 0)
        why = "the answer has an empty access_token";
    else if (!visible(new_at->p, new_at->n))
        why = "the answer's access_token has bytes outside printable ASCII";
    else if (!visible(new_rt->p, new_rt->n))
        why = "the answer's refresh_token has bytes outside printable ASCII";
    else if (!printable(b.p, b.n))
        why = "the answer's businessId has bytes outside printable ASCII";
    if (why == NULL) {
        if (m->date[0] != '\0' && nt_httpdate(m->date, strlen(m->date), &t))
            server_now = t;
        if (exp != NULL) {
            sbuf e = {NULL, 0, 0};
            int ok = json_string(exp, &e) > 0 && nt_iso8601(e.p, e.n, &t);
            sbuf_free(&e);
            if (!ok)
                why = "the answer's expiresAt is not an ISO 8601 time";
            else
                lifetime = t - server_now;
        } else if (in != NULL) {
            if (!json_number(in, &lifetime))
                why = "the answer's expires_in is not a number";
        } else {
            why = "the answer has neither expiresAt nor expires_in";
        }
    }
    if (why == NULL && !(lifetime > 0))        /* NaN too */
        why = "the answer's token is already expired";
    if (why == NULL && !(lifetime <= NOMBA_MAX_LIFETIME))   /* and infinity: a token that never renews */
        why = "the answer's token lifetime is over a year";
    if (why != NULL) {
        sbuf_wipe(new_at);
        sbuf_wipe(new_rt);
        sbuf_free(&b);
        return protocol_error(L, c, op, m->status, why);
    }

    /* keep it: the new buffers become the kept ones; the old are wiped */
    swap_sbuf(&c->access, new_at);
    sbuf_wipe(new_at);
    if (rt != NULL) {
        swap_sbuf(&c->refresh, new_rt);
        sbuf_wipe(new_rt);
    }
    free(c->business_id);
    c->business_id = biz != NULL ? nomba_strndup(b.p ? b.p : "", b.n) : NULL;
    sbuf_free(&b);
    c->lifetime = lifetime;
    c->expires_mono = nt_mono() + lifetime;
    c->expires_wall = now_wall + lifetime;
    client_set_token(L, cidx, c);              /* pushes nothing; the hot path's strings */

    client_push_token(L, cidx, c);
    lua_pushnil(L);
    lua_pushinteger(L, (lua_Integer)m->status);
    return 3;
}

static int success(lua_State *L, int cidx, client *c, int op, const answer *a,
                   const nomba_answer_meta *m)
{
    switch (op) {
    case OP_ISSUE:
    case OP_REFRESH:
    case OP_EXCHANGE:
        return take_token(L, cidx, c, op, a, m);
    case OP_AUTHORIZE: {
        /* in "data" only: a top-level "code" is Nomba's status code */
        const json_span *v = a->has_data ? pick(a->data, F_AUTH_CODE, F_AUTHCODE, J_STRING) : NULL;
        sbuf code = {NULL, 0, 0};
        int ok;
        if (v == NULL && a->has_data && a->data[F_CODE].type == J_STRING)
            v = &a->data[F_CODE];
        if (v == NULL)
            return protocol_error(L, c, op, m->status, "the answer has no auth_code");
        if (json_string(v, &code) < 0) {
            sbuf_free(&code);
            return luaL_error(L, "nomba.oauth: out of memory");
        }
        ok = code.n > 0 && visible(code.p, code.n);
        if (ok)
            lua_pushlstring(L, code.p, code.n);
        sbuf_free(&code);
        if (!ok)
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

/* Nomba refused: an "api" error with its code and (cleaned) description. */
static int api_error(lua_State *L, client *c, int op, const answer *a, const nomba_answer_meta *m,
                     const char *code, size_t codelen)
{
    const json_span *msg = pick(a->top, F_DESCRIPTION, F_ERROR_DESCRIPTION, J_STRING);
    sbuf text = {NULL, 0, 0};
    long st = m->status;
    int ok2xx = st >= 200 && st < 300, r;
    nomba_err e;
    err_init(&e, "api", op, NULL);
    e.code = code;
    e.codelen = codelen;
    if (msg != NULL && json_string(msg, &text) > 0) {
        e.message = text.p;
        e.msglen = text.n;
    } else {
        e.message = "Nomba refused the request";
        e.msglen = strlen(e.message);
    }
    e.status = st;
    e.retryable = retryable_status(st);
    e.retry_after = ok2xx ? -1 : retry_after_of(m);
    r = fail(L, c, &e, st);
    sbuf_free(&text);
    return r;
}

int proto_interpret(lua_State *L, int cidx, client *c, int op,
                    const nomba_answer_meta *m, const char *body, size_t n)
{
    long st = m->status;
    int ok2xx = st >= 200 && st < 300;
    answer a;
    nomba_err e;

    luaL_checkstack(L, 20, "nomba.oauth");
    if (json_scan(body, n, field_names, F__N, a.top, a.data, &a.has_data)) {
        const json_span *code = &a.top[F_CODE];
        char num[32];
        sbuf text = {NULL, 0, 0};
        int r;
        a.d = a.has_data ? a.data : a.top;
        if (code->type == J_NUMBER) {
            /* a numeric code reads as Nomba writes it: 2 is "2", not "2.0" */
            double d = 0;
            (void)json_number(code, &d);
            if (d == floor(d) && fabs(d) < 1e15)
                (void)snprintf(num, sizeof num, "%.0f", d);
            else
                (void)snprintf(num, sizeof num, "%.14g", d);
            if (!sbuf_adds(&text, num))
                return luaL_error(L, "nomba.oauth: out of memory");
        } else if (code->type == J_STRING && json_string(code, &text) < 0) {
            sbuf_free(&text);
            return luaL_error(L, "nomba.oauth: out of memory");
        }
        if (ok2xx && (code->type != J_STRING && code->type != J_NUMBER ? 1
                      : text.n == 2 && memcmp(text.p, "00", 2) == 0)) {
            sbuf_free(&text);
            return success(L, cidx, c, op, &a, m);
        }
        if (code->type == J_STRING || code->type == J_NUMBER) {
            r = api_error(L, c, op, &a, m, text.p ? text.p : "", text.n);
            sbuf_free(&text);
            return r;
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
