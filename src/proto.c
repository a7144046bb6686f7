/*
 * proto.c: the Nomba wire contract, without I/O, and the attempt's buffers.
 *
 * proto_build() turns an operation into a URL, a JSON body and maybe a
 * bearer header; proto_interpret() turns (status, headers, body) into a
 * result or a typed error, and keeps a new token (token_keep). Every
 * driver, libcurl in C and any Lua transport, goes through these two, so
 * the contract is written once.
 *
 * An attempt's buffers (c->at) start with attempt_begin() and end with
 * attempt_end(), which wipes everything that held a secret: the only two
 * places that do. A non-blocking attempt stays begun until its transfer
 * ends or is aborted.
 *
 * JSON is lua-cjson's, through a private instance (cjson.safe.new()) kept
 * in the registry, so other code's cjson settings never change ours. A
 * secret never becomes a Lua string on the libcurl path: cjson encodes the
 * non-secret fields, and the secret is appended in C into a client-owned
 * buffer.
 *
 *   core.request(client, op, args) -> {op, method, url, headers, body, timeout,
 *                                      connect_timeout, max_response_bytes[, proxy]} | nil, err
 *   core.answer(client, op, status, headers, body) -> result, nil, status | nil, err, status
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

/* Starts an attempt: refused while a non-blocking one is in flight. */
int attempt_begin(lua_State *L, client *c, int op)
{
    nomba_err e;
    if (c->at.in_flight) {
        err_init(&e, "config", op, "a non-blocking transfer is in flight: finish it with step() or wait()");
        return err_return(L, c, &e);
    }
    attempt_end(c);
    return 0;
}

/* Ends an attempt: every buffer that held a secret is wiped. */
void attempt_end(client *c)
{
    /* every writer of these goes through sbuf_add/sbuf_set: the bytes in
     * use are all there is to wipe */
    sbuf_clear(&c->at.body);
    sbuf_clear(&c->at.bearer_hdr);
    sbuf_clear(&c->at.resp);
    sbuf_clear(&c->at.req_secret[0]);
    sbuf_clear(&c->at.req_secret[1]);
    sbuf_clear(&c->at.scratch[0]);
    sbuf_clear(&c->at.scratch[1]);
    sbuf_clear(&c->at.head);
    memset(&c->at.meta, 0, sizeof c->at.meta);
    c->at.overflow = 0;
    c->at.header_bytes = 0;
    c->at.in_flight = 0;
    free(c->at.req_url);
    c->at.req_url = NULL;
    curl_slist_free_all(c->at.extra);
    c->at.extra = NULL;
    c->at.method = NULL;
    c->at.fresh_connect = 0;
    c->at.max_response = c->cfg.max_response;
}

/* Wipes and frees the attempt's buffers (cleanup). */
void attempt_free(client *c)
{
    int i;
    attempt_end(c);
    sbuf_free(&c->at.body);
    sbuf_free(&c->at.bearer_hdr);
    sbuf_free(&c->at.resp);
    sbuf_free(&c->at.head);
    for (i = 0; i < 2; i++) {
        sbuf_free(&c->at.req_secret[i]);
        sbuf_free(&c->at.scratch[i]);
    }
    for (i = 0; i < OP__N; i++) {
        free(c->at.body_open[i]);
        c->at.body_open[i] = NULL;
    }
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
    if (c->at.body_open[op] != NULL) {
        *n = strlen(c->at.body_open[op]);
        return c->at.body_open[op];
    }
    lua_createtable(L, 0, 6);
    switch (op) {
    case OP_ISSUE:
        set_field(L, "grant_type", "client_credentials");
        set_field(L, "client_id", c->cfg.client_id);
        break;
    case OP_REFRESH:
        set_field(L, "grant_type", "refresh_token");
        break;
    case OP_REVOKE:
        set_field(L, "clientId", c->cfg.client_id);
        break;
    case OP_AUTHORIZE:
        set_field(L, "client_id", c->cfg.client_id);
        set_field(L, "code_challenge_method", "S256");
        copy_arg(L, argidx, "code_challenge");
        copy_arg(L, argidx, "code_challenge_method");
        copy_arg(L, argidx, "redirect_uri");
        copy_arg(L, argidx, "state");
        copy_arg(L, argidx, "scope");
        break;
    default: /* OP_EXCHANGE */
        set_field(L, "grant_type", "authorization_code");
        set_field(L, "client_id", c->cfg.client_id);
        copy_arg(L, argidx, "auth_code");
        break;
    }
    if (op == OP_AUTHORIZE || op == OP_EXCHANGE) {
        *fresh = 1;
        return encode_open(L, n);
    }
    c->at.body_open[op] = encode_open(L, n);
    return c->at.body_open[op];
}

/* An authorized API call (OP_REQUEST). The Lua layer checked the caller's
 * arguments and gives: method, url, lines (header lines), body, fresh,
 * max_response. Here: the URL must stay on the base URL's scheme, host and
 * port (judged by libcurl's parser), header lines carry no line breaks,
 * and the bearer is the kept access token (its only copy stays in C). */
static const char *const METHODS[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", NULL};

static int build_request(lua_State *L, client *c, int argidx)
{
    const char *url, *why, *body;
    size_t n, i, k, bn = 0;
    int m, same;
    if (!lua_istable(L, argidx))
        return config_error(L, c, OP_REQUEST, "no request");
    lua_getfield(L, argidx, "method");
    m = lua_type(L, -1) == LUA_TSTRING ? luaL_checkoption(L, -1, NULL, METHODS) : 0;
    lua_pop(L, 1);
    c->at.method = METHODS[m];
    url = arg_string(L, argidx, "url", &n);
    if (url == NULL || c->tok.access.n == 0)
        return config_error(L, c, OP_REQUEST, url == NULL ? "no URL" : "there is no access token to send");
    k = strlen(c->cfg.base_url);
    if (strlen(url) != n) {
        same = 0;
    } else if (n > k && memcmp(url, c->cfg.base_url, k) == 0 && url[k] == '/' &&
               strpbrk(url, "\r\n\t ") == NULL) {
        /* base_url, then a path: the authority is base_url's own (it ends
         * at the first '/' after "//"), already judged at new */
        same = 1;
    } else {
        same = url_on(&c->cfg.base, url, &why) == 1;
    }
    if (!same)
        return config_error(L, c, OP_REQUEST, "the URL must stay on base_url's scheme, host and port");
    if ((c->at.req_url = nomba_strndup(url, n)) == NULL)
        return luaL_error(L, "nomba.oauth: out of memory");
    c->at.url = c->at.req_url;
    lua_getfield(L, argidx, "lines");
    for (i = 1; lua_istable(L, -1); i++) {
        struct curl_slist *next;
        const char *line;
        size_t ln;
        lua_rawgeti(L, -1, (int)i);
        if (lua_type(L, -1) != LUA_TSTRING) {
            lua_pop(L, 1);
            break;
        }
        line = lua_tolstring(L, -1, &ln);
        if (strlen(line) != ln || strpbrk(line, "\r\n") != NULL) {
            lua_pop(L, 2);
            return config_error(L, c, OP_REQUEST, "a header line has a line break or NUL");
        }
        next = curl_slist_append(c->at.extra, line);
        lua_pop(L, 1);
        if (next == NULL) {
            lua_pop(L, 1);
            return luaL_error(L, "nomba.oauth: out of memory");
        }
        c->at.extra = next;
    }
    lua_pop(L, 1);
    {
        struct curl_slist *next = curl_slist_append(c->at.extra, "Accept: application/json");
        if (next != NULL)
            c->at.extra = next;
        next = next ? curl_slist_append(c->at.extra, "Expect:") : NULL;
        if (next == NULL)
            return luaL_error(L, "nomba.oauth: out of memory");
        c->at.extra = next;
    }
    body = arg_string(L, argidx, "body", &bn);
    if (body != NULL && !sbuf_add(&c->at.body, body, bn))
        return luaL_error(L, "nomba.oauth: out of memory");
    lua_getfield(L, argidx, "fresh");
    c->at.fresh_connect = lua_toboolean(L, -1);
    lua_getfield(L, argidx, "max_response");
    if (lua_type(L, -1) == LUA_TNUMBER) {
        double mr = lua_tonumber(L, -1);
        if (mr >= 256 && mr <= NOMBA_MAX_RESPONSE)
            c->at.max_response = (size_t)mr;
    }
    lua_pop(L, 2);
    if (!sbuf_adds(&c->at.bearer_hdr, "Authorization: Bearer ") ||
        !sbuf_add(&c->at.bearer_hdr, c->tok.access.p, c->tok.access.n))
        return luaL_error(L, "nomba.oauth: out of memory");
    return 0;
}

/* Builds the request of op into the attempt's buffers (after
 * attempt_begin): 0, or pushes nil and a config error (2). */
int proto_build(lua_State *L, client *c, int op, int argidx)
{
    const char *secret_name = NULL, *secret = NULL, *open;
    size_t secret_len = 0, on, unused;
    int fresh, ok;

    if (op == OP_REQUEST)
        return build_request(L, c, argidx);
    c->at.url = c->cfg.urls[op];
    if (c->at.url == NULL)
        return config_error(L, c, op, "this operation has no URL");

    switch (op) {
    case OP_ISSUE:
        if (c->tok.secret.n == 0)
            return config_error(L, c, op,
                "issue needs client_secret; this is a PKCE client: use authorize and exchange");
        secret_name = "client_secret";
        secret = c->tok.secret.p;
        secret_len = c->tok.secret.n;
        break;
    case OP_REFRESH:
        secret = arg_string(L, argidx, "refresh_token", &secret_len);
        if (secret == NULL && c->tok.refresh.n > 0) {
            secret = c->tok.refresh.p;
            secret_len = c->tok.refresh.n;
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
                if (!sbuf_set(&c->at.req_secret[1], b, bn))
                    return luaL_error(L, "nomba.oauth: out of memory");
            } else if (c->tok.access.n > 0) {
                b = c->tok.access.p;
                bn = c->tok.access.n;
            } else {
                return config_error(L, c, op, "a refresh needs the session's access token (an expired one "
                                    "will do) as its bearer: refresh{refresh_token = ..., access_token = ...}");
            }
            if (!sbuf_adds(&c->at.bearer_hdr, "Authorization: Bearer ") || !sbuf_add(&c->at.bearer_hdr, b, bn))
                return luaL_error(L, "nomba.oauth: out of memory");
        }
        break;
    case OP_REVOKE:
        secret = arg_string(L, argidx, "access_token", &secret_len);
        if (secret == NULL && c->tok.access.n > 0) {
            secret = c->tok.access.p;
            secret_len = c->tok.access.n;
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

    if (secret != NULL && secret != c->tok.secret.p && !sbuf_set(&c->at.req_secret[0], secret, secret_len))
        return luaL_error(L, "nomba.oauth: out of memory");
    open = body_open(L, c, op, argidx, &on, &fresh);
    if (open == NULL)
        return config_error(L, c, op, "could not encode the request");
    ok = sbuf_add(&c->at.body, open, on);
    if (ok && secret_name != NULL)
        ok = (on <= 1 || sbuf_adds(&c->at.body, ",")) &&
             sbuf_adds(&c->at.body, "\"") && sbuf_adds(&c->at.body, secret_name) &&
             sbuf_adds(&c->at.body, "\":\"") &&
             sbuf_add_json_string(&c->at.body, secret, secret_len) &&
             sbuf_adds(&c->at.body, "\"");
    ok = ok && sbuf_adds(&c->at.body, "}");
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
    sbuf *new_at = &c->at.scratch[0], *new_rt = &c->at.scratch[1];
    sbuf b = {NULL, 0, 0};
    double lifetime = 0, now_wall = nt_wall(), server_now = now_wall, t = 0;
    const char *why = NULL;
    int ok;

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
            ok = json_string(exp, &e) > 0 && nt_iso8601(e.p, e.n, &t);
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
    ok = token_keep(L, cidx, c, new_at, rt != NULL ? new_rt : NULL,
                    biz != NULL ? (b.p ? b.p : "") : NULL, b.n, lifetime, lifetime);
    sbuf_wipe(new_rt);
    sbuf_free(&b);
    if (!ok)
        return luaL_error(L, "nomba.oauth: out of memory");
    token_push(L, cidx, c);
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

/* Nomba's code written as a number reads as Nomba writes it: 2 is "2",
 * not "2.0"; 0.5 is "0.5". The one rule, for every operation (core.code_text
 * gives it to client:request). The numbers come from json.c, so finite. */
void proto_code_text(double d, char out[32])
{
    if (d == floor(d) && fabs(d) < 1e15)
        (void)snprintf(out, 32, "%.0f", d);
    else
        (void)snprintf(out, 32, "%.14g", d);
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
            double d = 0;
            (void)json_number(code, &d);
            proto_code_text(d, num);
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

/* ---- the Lua side of the contract: requests for a Lua transport ---------- */

/* core.request(client, op, args): the request a Lua transport carries. The
 * body becomes a Lua string: that is the price of a custom transport. */
static int proto_request(lua_State *L)
{
    client *c = client_check(L, 1);
    int op = nomba_checkop(L, 2);
    int r;
    if (c->closed)
        return err_simple(L, "closed", op, "the client is closed");
    lua_settop(L, 3);
    if ((r = attempt_begin(L, c, op)) != 0 || (r = proto_build(L, c, op, 3)) != 0) {
        attempt_end(c);
        return r;
    }
    lua_createtable(L, 0, 9);
    lua_pushstring(L, c->at.method != NULL ? c->at.method : "POST");
    lua_setfield(L, -2, "method");
    lua_pushstring(L, c->at.url);
    lua_setfield(L, -2, "url");
    lua_pushlstring(L, c->at.body.p ? c->at.body.p : "", c->at.body.n);
    lua_setfield(L, -2, "body");
    lua_createtable(L, 0, 5);
    lua_pushliteral(L, "application/json");
    lua_setfield(L, -2, "Accept");
    lua_pushstring(L, c->cfg.user_agent);
    lua_setfield(L, -2, "User-Agent");
    if (op == OP_REQUEST) {
        const struct curl_slist *l;
        for (l = c->at.extra; l != NULL; l = l->next) {     /* "Name: value" */
            const char *colon = strchr(l->data, ':');
            if (colon == NULL)
                continue;
            lua_pushlstring(L, l->data, (size_t)(colon - l->data));
            colon++;
            while (*colon == ' ')
                colon++;
            lua_pushstring(L, colon);
            lua_rawset(L, -3);
        }
    } else {
        lua_pushliteral(L, "application/json");
        lua_setfield(L, -2, "Content-Type");
        lua_pushstring(L, c->cfg.account_id);
        lua_setfield(L, -2, "accountId");
    }
    if (c->at.bearer_hdr.n > 0) {
        /* "Authorization: Bearer x" -> "Bearer x" */
        const char *v = c->at.bearer_hdr.p + sizeof "Authorization: " - 1;
        lua_pushlstring(L, v, c->at.bearer_hdr.n - (sizeof "Authorization: " - 1));
        lua_setfield(L, -2, "Authorization");
    }
    lua_setfield(L, -2, "headers");
    lua_pushnumber(L, c->cfg.timeout);
    lua_setfield(L, -2, "timeout");
    lua_pushnumber(L, c->cfg.connect_timeout);
    lua_setfield(L, -2, "connect_timeout");
    lua_pushinteger(L, (lua_Integer)c->at.max_response);
    lua_setfield(L, -2, "max_response_bytes");
    lua_pushstring(L, nomba_op_names[op]);
    lua_setfield(L, -2, "op");
    if (c->cfg.proxy != NULL) {
        lua_pushstring(L, c->cfg.proxy);
        lua_setfield(L, -2, "proxy");
    }
    /* the secrets stay until the answer: its messages are redacted of them */
    sbuf_wipe(&c->at.body);
    sbuf_wipe(&c->at.bearer_hdr);
    return 1;
}

/* Copies a header's value from a Lua table (any case of the name; a value
 * may be a list: its first entry). */
static void meta_header(lua_State *L, int t, const char *name, char *dst, size_t cap)
{
    dst[0] = '\0';
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        size_t kn;
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &kn) : NULL;
        if (k != NULL && codec_name_is(k, kn, name)) {
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
        lua_pop(L, 1);
    }
}

/* core.answer(client, op, status, headers, body): interprets an answer a
 * Lua transport received, exactly as the libcurl path does, and ends the
 * attempt. */
static int proto_answer(lua_State *L)
{
    client *c = client_check(L, 1);
    int op = nomba_checkop(L, 2);
    nomba_answer_meta m;
    size_t n = 0;
    const char *body;
    int r;
    if (c->closed)
        return err_simple(L, "closed", op, "the client is closed");
    memset(&m, 0, sizeof m);
    m.status = (long)luaL_checkinteger(L, 3);
    if (!lua_isnoneornil(L, 4)) {
        luaL_checktype(L, 4, LUA_TTABLE);
        meta_header(L, 4, "date", m.date, sizeof m.date);
        meta_header(L, 4, "retry-after", m.retry_after, sizeof m.retry_after);
        meta_header(L, 4, "content-type", m.content_type, sizeof m.content_type);
    }
    body = luaL_optlstring(L, 5, "", &n);
    if (n > c->cfg.max_response) {
        nomba_err e;
        err_init(&e, "protocol", op, "the answer exceeds max_response_bytes");
        e.status = m.status;
        r = err_return(L, c, &e);
    } else {
        r = proto_interpret(L, 1, c, op, &m, body, n);
    }
    if (!c->at.in_flight)
        attempt_end(c);
    return r;
}

void proto_open(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"request", proto_request},
        {"answer", proto_answer},
        {NULL, NULL}
    };
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
    luaL_setfuncs(L, funcs, 0);
}
