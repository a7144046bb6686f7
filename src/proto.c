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
#include <strings.h>
#include "nomba.h"

static const char json_key = 'j';   /* registry key: our cjson instance */

static void push_json_fn(lua_State *L, const char *name)
{
    lua_pushlightuserdata(L, (void *)&json_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, name);
    lua_remove(L, -2);
}

/* Starts an attempt: refused while a non-blocking one is in flight. The
 * attempt's memory is the client's only while it lasts. */
int attempt_begin(lua_State *L, client *c, int op)
{
    nomba_err e;
    if (c->at != NULL && c->at->in_flight) {
        err_init(&e, "config", op, "a non-blocking transfer is in flight: finish it with step() or wait()");
        return err_return(L, c, &e);
    }
    attempt_end(c);
    if (!attempt_ensure(c))
        return luaL_error(L, "nomba.oauth: out of memory");
    return 0;
}

/* An attempt, begun if none is: 0 when out of memory. */
int attempt_ensure(client *c)
{
    if (c->at == NULL && (c->at = (attempt *)calloc(1, sizeof *c->at)) != NULL)
        c->at->max_response = c->cfg.max_response;
    return c->at != NULL;
}

/* Ends an attempt: every buffer that held a secret is wiped and given back
 * (the secret slab keeps the memory for the next attempt of any client). */
void attempt_end(client *c)
{
    attempt *a = c->at;
    int i;
    if (a == NULL)
        return;
    sbuf_free(&a->body);
    sbuf_free(&a->bearer_hdr);
    sbuf_free(&a->resp);
    sbuf_free(&a->head);
    frame_free(&a->fr);
    for (i = 0; i < 2; i++) {
        sbuf_free(&a->req_secret[i]);
        sbuf_free(&a->scratch[i]);
    }
    free(a->req_url);
    if (a->extra_last != NULL)
        a->extra_last->next = NULL;         /* the tail is the endpoint's, not this attempt's */
    curl_slist_free_all(a->extra);
    free(a);
    c->at = NULL;
}

/* Cleanup: ends the attempt, if any, and frees the client's request caches. */
void attempt_free(client *c)
{
    int i;
    attempt_end(c);
    for (i = 0; i <= OP_REVOKE; i++) {
        free(c->body_open[i]);
        c->body_open[i] = NULL;
    }
    if (c->op_lines != NULL) {
        c->op_lines->next = NULL;        /* the endpoint's lines are not the client's */
        curl_slist_free_all(c->op_lines);
        c->op_lines = NULL;
    }
}

/* The token operations' lines: the client's accountId in front of the
 * endpoint's (Content-Type, Accept, User-Agent, "Expect:"). Made once per
 * client; 0 when out of memory. */
static int client_lines(client *c)
{
    struct curl_slist *a;
    if (c->op_lines != NULL)
        return 1;
    if ((a = endpoint_line(NULL, "accountId", c->cfg.account_id)) == NULL)
        return 0;
    a->next = c->cfg.ep->ct_tail;
    c->op_lines = a;
    return 1;
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
    if (op <= OP_REVOKE && c->body_open[op] != NULL) {
        *n = strlen(c->body_open[op]);
        return c->body_open[op];
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
    c->body_open[op] = encode_open(L, n);
    return c->body_open[op];
}

/* An authorized API call (OP_REQUEST). The Lua layer checked the caller's
 * arguments and gives: method, url, lines (header lines), body, fresh,
 * max_response. Here: the URL must stay on the base URL's scheme, host and
 * port (judged by libcurl's parser), header lines carry no line breaks,
 * and the bearer is the kept access token (its only copy stays in C). */
static const char *const METHODS[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", NULL};

/* Whether the caller's lines name the header of the line t ("Name: v"). */
static int named(const struct curl_slist *l, const char *t)
{
    size_t k = strcspn(t, ":");
    for (; l != NULL; l = l->next)
        if (strncasecmp(l->data, t, k) == 0 && l->data[k] == ':')
            return 1;
    return 0;
}

/* An API call's lines end with the client's tail: linked to it, or, when
 * the caller set Accept or User-Agent itself, with copies of the rest of
 * it (a header is sent once, the caller's). 0 when out of memory. */
static int end_lines(client *c)
{
    const struct curl_slist *t;
    int own = 0;
    for (t = c->cfg.ep->tail; t != NULL; t = t->next)
        own |= named(c->at->extra, t->data);
    if (own) {
        for (t = c->cfg.ep->tail; t != NULL; t = t->next) {
            struct curl_slist *next;
            if (named(c->at->extra, t->data))
                continue;
            if ((next = curl_slist_append(c->at->extra, t->data)) == NULL)
                return 0;
            c->at->extra = next;
        }
        c->at->lines = c->at->extra;
        return 1;
    }
    if (c->at->extra == NULL) {
        c->at->lines = c->cfg.ep->tail;
        return 1;
    }
    for (c->at->extra_last = c->at->extra; c->at->extra_last->next != NULL;)
        c->at->extra_last = c->at->extra_last->next;
    c->at->extra_last->next = c->cfg.ep->tail;
    c->at->lines = c->at->extra;
    return 1;
}

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
    c->at->method = METHODS[m];
    url = arg_string(L, argidx, "url", &n);
    if (url == NULL || c->tok.access.n == 0)
        return config_error(L, c, OP_REQUEST, url == NULL ? "no URL" : "there is no access token to send");
    k = strlen(c->cfg.ep->base_url);
    if (strlen(url) != n) {
        same = 0;
    } else if (n > k && memcmp(url, c->cfg.ep->base_url, k) == 0 && url[k] == '/' &&
               strpbrk(url, "\r\n\t ") == NULL) {
        /* base_url, then a path: the authority is base_url's own (it ends
         * at the first '/' after "//"), already judged at new */
        same = 1;
    } else {
        same = url_on(&c->cfg.ep->base, url, &why) == 1;
    }
    if (!same)
        return config_error(L, c, OP_REQUEST, "the URL must stay on base_url's scheme, host and port");
    if ((c->at->req_url = nomba_strndup(url, n)) == NULL)
        return luaL_error(L, "nomba.oauth: out of memory");
    c->at->url = c->at->req_url;
    if (!client_lines(c))
        return luaL_error(L, "nomba.oauth: out of memory");
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
        next = curl_slist_append(c->at->extra, line);
        lua_pop(L, 1);
        if (next == NULL) {
            lua_pop(L, 1);
            return luaL_error(L, "nomba.oauth: out of memory");
        }
        c->at->extra = next;
    }
    lua_pop(L, 1);
    if (!end_lines(c))
        return luaL_error(L, "nomba.oauth: out of memory");
    body = arg_string(L, argidx, "body", &bn);
    if (body != NULL && !sbuf_add(&c->at->body, body, bn))
        return luaL_error(L, "nomba.oauth: out of memory");
    lua_getfield(L, argidx, "fresh");
    c->at->fresh_connect = lua_toboolean(L, -1);
    lua_getfield(L, argidx, "max_response");
    if (lua_type(L, -1) == LUA_TNUMBER) {
        double mr = lua_tonumber(L, -1);
        if (mr >= 256 && mr <= NOMBA_MAX_RESPONSE)
            c->at->max_response = (size_t)mr;
    }
    lua_pop(L, 2);
    if (!sbuf_adds(&c->at->bearer_hdr, "Authorization: Bearer ") ||
        !sbuf_add(&c->at->bearer_hdr, c->tok.access.p, c->tok.access.n))
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
    if (op >= OP_PATHS)                     /* "token", "webhook": no request of their own */
        return config_error(L, c, op, "this operation sends no request");
    c->at->url = c->cfg.ep->urls[op];
    if (c->at->url == NULL)
        return config_error(L, c, op, "this operation has no URL");
    if (!client_lines(c))
        return luaL_error(L, "nomba.oauth: out of memory");
    c->at->lines = c->op_lines;

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
                if (!codec_visible(b, bn))      /* it goes into a header line */
                    return config_error(L, c, op, "the access_token to send as bearer has bytes "
                                        "outside visible ASCII");
                if (!sbuf_set(&c->at->req_secret[1], b, bn))
                    return luaL_error(L, "nomba.oauth: out of memory");
            } else if (c->tok.access.n > 0) {
                b = c->tok.access.p;
                bn = c->tok.access.n;
            } else {
                return config_error(L, c, op, "a refresh needs the session's access token (an expired one "
                                    "will do) as its bearer: refresh{refresh_token = ..., access_token = ...}");
            }
            if (!sbuf_adds(&c->at->bearer_hdr, "Authorization: Bearer ") || !sbuf_add(&c->at->bearer_hdr, b, bn))
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

    if (secret != NULL && secret != c->tok.secret.p && !sbuf_set(&c->at->req_secret[0], secret, secret_len))
        return luaL_error(L, "nomba.oauth: out of memory");
    open = body_open(L, c, op, argidx, &on, &fresh);
    if (open == NULL)
        return config_error(L, c, op, "could not encode the request");
    ok = sbuf_add(&c->at->body, open, on);
    if (ok && secret_name != NULL)
        ok = (on <= 1 || sbuf_adds(&c->at->body, ",")) &&
             sbuf_adds(&c->at->body, "\"") && sbuf_adds(&c->at->body, secret_name) &&
             sbuf_adds(&c->at->body, "\":\"") &&
             sbuf_add_json_string(&c->at->body, secret, secret_len) &&
             sbuf_adds(&c->at->body, "\"");
    ok = ok && sbuf_adds(&c->at->body, "}");
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
    sbuf *new_at = &c->at->scratch[0], *new_rt = &c->at->scratch[1];
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
    else if (!codec_visible(new_at->p, new_at->n))
        why = "the answer's access_token has bytes outside printable ASCII";
    else if (!codec_visible(new_rt->p, new_rt->n))
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
        ok = code.n > 0 && codec_visible(code.p, code.n);
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

/* ---- API answers (OP_REQUEST) -------------------------------------------- */

static const char answer_key = 'a';   /* registry key: the metatable of an API answer */

/* Whether an API answer's body is read as JSON: a JSON content type, or a
 * body that starts like an object or an array. */
static int json_like(const nomba_answer_meta *m, const char *body, size_t n)
{
    size_t i;
    if (n == 0)
        return 0;
    for (i = 0; m->content_type[i] != '\0'; i++)
        if (codec_name_is(m->content_type + i, 4, "json"))
            return 1;
    for (i = 0; i < n && (body[i] == ' ' || (body[i] >= '\t' && body[i] <= '\r')); i++)
        ;
    return i < n && (body[i] == '{' || body[i] == '[');
}

/* A rate-limit count: digits only, at most 9 of them. */
static int count_of(const char *s, double *out)
{
    return s[0] != '\0' && codec_digits(s, strlen(s), 999999999.0, out);
}

/* Pushes an API call's answer, the result of client:request (or the
 * `response` of its error): {status, headers (lower-case names, repeats
 * joined), body, code, rate_limit = {limit, remaining, window}}, its
 * headers and body redacted of any echoed secret. json and data are decoded
 * on their first read (most calls read neither). */
static void push_answer(lua_State *L, const client *c, const nomba_answer_meta *m, const char *head, size_t hn,
                        const char *body, size_t n, const char *code, size_t codelen, int json)
{
    const echo_index *ix = echo_for(L, c);
    size_t at, len;
    double limit = 0, remaining = 0, window = 0;
    int has_limit, has_remaining;
    lua_createtable(L, 0, 7);
    lua_pushinteger(L, (lua_Integer)m->status);
    lua_setfield(L, -2, "status");
    if (echo_find(ix, head, hn, &at, &len)) {
        size_t k;
        const char *h;
        echo_push(L, ix, head, hn);
        h = lua_tolstring(L, -1, &k);
        head_push(L, h, k);
        lua_remove(L, -2);
    } else {
        head_push(L, head, hn);
    }
    lua_setfield(L, -2, "headers");
    echo_push(L, ix, body, n);
    lua_setfield(L, -2, "body");
    if (code != NULL) {
        lua_pushlstring(L, code, codelen);
        lua_setfield(L, -2, "code");
    }
    has_limit = count_of(m->rl_limit, &limit);
    has_remaining = count_of(m->rl_remaining, &remaining);
    if (has_limit || has_remaining) {
        lua_createtable(L, 0, 3);
        if (has_limit) {
            lua_pushinteger(L, (lua_Integer)limit);
            lua_setfield(L, -2, "limit");
        }
        if (has_remaining) {
            lua_pushinteger(L, (lua_Integer)remaining);
            lua_setfield(L, -2, "remaining");
        }
        if (m->rl_window[0] != '\0' && head_window(m->rl_window, &window)) {
            if (window == floor(window) && window < 1e15)
                lua_pushinteger(L, (lua_Integer)window);
            else
                lua_pushnumber(L, window);
            lua_setfield(L, -2, "window");
        }
        lua_setfield(L, -2, "rate_limit");
    }
    if (json) {
        lua_pushlightuserdata(L, (void *)&answer_key);
        lua_rawget(L, LUA_REGISTRYINDEX);
        lua_setmetatable(L, -2);
    }
}

/* Decodes an API answer's body into its json and data, and makes it a
 * plain table. */
static void answer_decode(lua_State *L, int idx)
{
    size_t n;
    const char *body;
    lua_pushnil(L);
    lua_setmetatable(L, idx);
    lua_pushliteral(L, "body");
    lua_rawget(L, idx);
    body = lua_tolstring(L, -1, &n);
    if (body != NULL && json_push(L, body, n, 32)) {
        lua_pushliteral(L, "json");
        lua_pushvalue(L, -2);
        lua_rawset(L, idx);
        if (lua_istable(L, -1)) {
            lua_pushliteral(L, "data");
            lua_pushliteral(L, "data");
            lua_rawget(L, -3);
            lua_rawset(L, idx);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* __index of an API answer: json and data, decoded on their first read. */
static int answer__index(lua_State *L)
{
    size_t n;
    const char *k = lua_type(L, 2) == LUA_TSTRING ? lua_tolstring(L, 2, &n) : NULL;
    if (k == NULL || !((n == 4 && memcmp(k, "json", 4) == 0) || (n == 4 && memcmp(k, "data", 4) == 0)))
        return 0;
    answer_decode(L, 1);
    lua_pushvalue(L, 2);
    lua_rawget(L, 1);
    return 1;
}

/* __pairs (Lua 5.2+): decoded first, then the plain table's next. */
static int answer__pairs(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    answer_decode(L, 1);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* The error on top of the stack is an API call's: it carries the answer
 * (`response`) and may have reached Nomba (`maybe_sent`). */
static void attach_answer(lua_State *L, const client *c, const nomba_answer_meta *m, const char *head, size_t hn,
                          const char *body, size_t n, const char *code, size_t codelen, int json)
{
    push_answer(L, c, m, head, hn, body, n, code, codelen, json);
    lua_setfield(L, -2, "response");
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "maybe_sent");
}

/* ---- the verdict, for every operation ------------------------------------ */

/* Nomba refused: an "api" error with its code and (cleaned) description. */
static int api_error(lua_State *L, client *c, int op, const answer *a, const nomba_answer_meta *m,
                     const char *code, size_t codelen)
{
    const json_span *msg = pick(a->top, F_DESCRIPTION, F_ERROR_DESCRIPTION, J_STRING);
    sbuf text = {NULL, 0, 0};
    long st = m->status;
    int ok2xx = st >= 200 && st < 300;
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
    lua_pushnil(L);
    err_push(L, c, &e);
    sbuf_free(&text);
    return 2;
}

/* Nomba's code written as a number reads as Nomba writes it: 2 is "2",
 * not "2.0"; 0.5 is "0.5". The one rule, for every operation. The numbers
 * come from json.c, so finite. */
static void code_text(double d, char out[32])
{
    if (d == floor(d) && fabs(d) < 1e15)
        (void)snprintf(out, 32, "%.0f", d);
    else
        (void)snprintf(out, 32, "%.14g", d);
}

/*
 * The answer of op: (status, header block, body) to a result or a typed
 * error, the same for every driver. The rules, once:
 *   - a 2xx is a success only when its Nomba code, if it has one, is "00";
 *   - a code (a string, or a number written as Nomba writes it) makes an
 *     "api" error, its message Nomba's description (or error_description,
 *     or message); no code makes an "http" error;
 *   - retryable: 408, 425, 429 and 5xx; Retry-After (its first value)
 *     measured against the server's Date;
 *   - a token answer must be JSON; an API answer need not be, and is
 *     handed back whole (headers and body redacted of echoed secrets).
 * Pushes result, nil, status or nil, err, status.
 */
int proto_interpret(lua_State *L, int cidx, client *c, int op, const nomba_answer_meta *m,
                    const char *head, size_t hn, const char *body, size_t n)
{
    long st = m->status;
    int ok2xx = st >= 200 && st < 300, request = op == OP_REQUEST;
    int json = request ? json_like(m, body, n) : 1;
    answer a;
    nomba_err e;
    char num[32];
    sbuf text = {NULL, 0, 0};
    const char *code = NULL;
    size_t codelen = 0;

    luaL_checkstack(L, 24, "nomba.oauth");
    {
        double date;
        if (m->date[0] != '\0' && nt_httpdate(m->date, strlen(m->date), &date))
            token_anchor(c, date);
    }
    if (json && json_scan(body, n, field_names, F__N, a.top, a.data, &a.has_data)) {
        const json_span *cs = &a.top[F_CODE];
        a.d = a.has_data ? a.data : a.top;
        if (cs->type == J_NUMBER) {
            double d = 0;
            (void)json_number(cs, &d);
            code_text(d, num);
            if (!sbuf_adds(&text, num))
                return luaL_error(L, "nomba.oauth: out of memory");
        } else if (cs->type == J_STRING && json_string(cs, &text) < 0) {
            sbuf_free(&text);
            return luaL_error(L, "nomba.oauth: out of memory");
        }
        if (cs->type == J_STRING || cs->type == J_NUMBER) {
            code = text.p ? text.p : "";
            codelen = text.n;
        }
        if (ok2xx && (code == NULL || (codelen == 2 && memcmp(code, "00", 2) == 0))) {
            int r;
            if (!request) {
                r = success(L, cidx, c, op, &a, m);
            } else {
                push_answer(L, c, m, head, hn, body, n, code, codelen, json);
                lua_pushnil(L);
                lua_pushinteger(L, (lua_Integer)st);
                r = 3;
            }
            sbuf_free(&text);
            return r;
        }
        if (code != NULL) {
            (void)api_error(L, c, op, &a, m, code, codelen);
            if (request)
                attach_answer(L, c, m, head, hn, body, n, code, codelen, json);
            sbuf_free(&text);
            lua_pushinteger(L, (lua_Integer)st);
            return 3;
        }
    }
    sbuf_free(&text);
    if (ok2xx && request) {
        push_answer(L, c, m, head, hn, body, n, NULL, 0, json);
        lua_pushnil(L);
        lua_pushinteger(L, (lua_Integer)st);
        return 3;
    }
    if (ok2xx)
        return protocol_error(L, c, op, st, n == 0 ? "the answer is empty" : "the answer is not a Nomba JSON body");
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
        lua_pushnil(L);
        err_push(L, c, &e);
        if (request)
            attach_answer(L, c, m, head, hn, body, n, NULL, 0, json);
        lua_pushinteger(L, (lua_Integer)st);
        return 3;
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
    lua_pushstring(L, c->at->method != NULL ? c->at->method : "POST");
    lua_setfield(L, -2, "method");
    lua_pushstring(L, c->at->url);
    lua_setfield(L, -2, "url");
    lua_pushlstring(L, c->at->body.p ? c->at->body.p : "", c->at->body.n);
    lua_setfield(L, -2, "body");
    lua_createtable(L, 0, 6);
    {
        const struct curl_slist *l;
        for (l = c->at->lines; l != NULL; l = l->next) {
            const char *name, *val;
            size_t nn, vn;
            if (!head_field(l->data, strlen(l->data), &name, &nn, &val, &vn) || vn == 0)
                continue;           /* "Expect:" is libcurl's, not a header */
            lua_pushlstring(L, name, nn);
            lua_pushlstring(L, val, vn);
            lua_rawset(L, -3);
        }
    }
    if (c->at->bearer_hdr.n > 0) {
        /* "Authorization: Bearer x" -> "Bearer x" */
        const char *v = c->at->bearer_hdr.p + sizeof "Authorization: " - 1;
        lua_pushlstring(L, v, c->at->bearer_hdr.n - (sizeof "Authorization: " - 1));
        lua_setfield(L, -2, "Authorization");
    }
    lua_setfield(L, -2, "headers");
    lua_pushnumber(L, c->cfg.timeout);
    lua_setfield(L, -2, "timeout");
    lua_pushnumber(L, c->cfg.ep->connect_timeout);
    lua_setfield(L, -2, "connect_timeout");
    lua_pushinteger(L, (lua_Integer)c->at->max_response);
    lua_setfield(L, -2, "max_response_bytes");
    lua_pushstring(L, nomba_op_names[op]);
    lua_setfield(L, -2, "op");
    if (c->cfg.ep->proxy != NULL) {
        lua_pushstring(L, c->cfg.ep->proxy);
        lua_setfield(L, -2, "proxy");
    }
    /* the secrets stay until the answer: its messages are redacted of them */
    sbuf_wipe(&c->at->body);
    sbuf_wipe(&c->at->bearer_hdr);
    return 1;
}

/* core.answer(client, op, frame) or core.answer(client, op, status, headers,
 * body): interprets an answer a Lua transport received, exactly as the
 * libcurl path does, and ends the attempt.
 *   - a frame (core.frame: the cosocket transport, or a transport's raw
 *     bytes) was framed by frame.c as it was read;
 *   - else `headers` is the raw header block (a string, up to and
 *     including its empty line) or a table (any case of the names; a list
 *     value is one line per entry), and `body` the decoded body: the same
 *     rule judges whether it is whole (a block cut before its empty line,
 *     a body shorter than its Content-Length, bodiless answers). */
static int proto_answer(lua_State *L)
{
    client *c = client_check(L, 1);
    int op = nomba_checkop(L, 2);
    frame *given = frame_test(L, 3), own;
    sbuf lines = {NULL, 0, 0}, body = {NULL, 0, 0};
    const char *head = "";
    size_t hn = 0;
    long status;
    int r, o = OUT_NONE;
    if (c->closed)
        return err_simple(L, "closed", op, "the client is closed");
    if (!attempt_ensure(c))             /* an answer to no request still gets the same reading */
        return luaL_error(L, "nomba.oauth: out of memory");
    memset(&c->at->meta, 0, sizeof c->at->meta);
    if (given == NULL && lua_type(L, 3) == LUA_TUSERDATA) {
        static const char none[] = "the transport returned no HTTP answer";
        r = outcome_return(L, c, op, OUT_FRAMING, none, sizeof none - 1, 0, 1);
        if (c->at != NULL && !c->at->in_flight)
            attempt_end(c);
        return r;
    }
    if (given != NULL) {
        status = given->status;
        head = given->head.p ? given->head.p : "";
        hn = given->head.n;
        head_scan(&c->at->meta, head, hn);
        if (given->state != FR_DONE && given->state != FR_CLOSE)
            o = frame_end(given, 1);
    } else {
        size_t n = 0;
        const char *b;
        lua_Integer st = luaL_checkinteger(L, 3);
        status = (long)st;
        b = luaL_optlstring(L, 5, "", &n);
        if (lua_type(L, 4) == LUA_TSTRING) {
            head = lua_tolstring(L, 4, &hn);
        } else if (!lua_isnoneornil(L, 4)) {
            luaL_checktype(L, 4, LUA_TTABLE);
            if (!head_from_table(L, 4, &lines)) {
                sbuf_free(&lines);
                return luaL_error(L, "nomba.oauth: out of memory");
            }
            head = lines.p ? lines.p : "";
            hn = lines.n;
        }
        head_scan(&c->at->meta, head, hn);
        frame_init(&own, c->at->method, c->at->max_response, &body);
        if (lua_type(L, 4) == LUA_TSTRING && !(hn >= 2 && head[hn - 1] == '\n' &&
                                               (head[hn - 2] == '\n' || (hn >= 3 && head[hn - 2] == '\r' &&
                                                                           head[hn - 3] == '\n')))) {
            own.state = FR_FAILED;
            own.outcome = o = OUT_TRUNCATED;
            own.why = "the answer is truncated (in its headers)";
        } else {
            /* the transport removed any transfer coding: a Content-Length still says how much was due */
            double len = 0;
            int has = c->at->meta.content_length[0] != '\0' && !c->at->meta.chunked;
            int bad = has && !codec_digits(c->at->meta.content_length, strlen(c->at->meta.content_length),
                                           999999999999999.0, &len);
            if ((o = frame_body_begin(&own, status, 0, has, bad, len)) == OUT_NONE &&
                (o = frame_body(&own, b, n)) == OUT_NONE)
                o = frame_end(&own, 0);
        }
        given = &own;
    }
    c->at->meta.status = status;
    if (o != OUT_NONE)
        r = outcome_return(L, c, op, o, given->why, given->why ? strlen(given->why) : 0, status, 1);
    else
        r = proto_interpret(L, 1, c, op, &c->at->meta, head, hn, given->body->p ? given->body->p : "",
                            given->body->n);
    if (given == &own)
        frame_free(&own);
    else
        sbuf_wipe(given->body);
    sbuf_free(&body);
    sbuf_free(&lines);
    if (c->at != NULL && !c->at->in_flight)
        attempt_end(c);
    return r;
}

/* core.abandon(client, op, outcome, message, sent, status): the attempt a
 * Lua transport carried ended without an answer. Ends it (wiping what it
 * held) and returns nil, the error outcome.c makes of it (its message
 * redacted of the client's secrets), and the status, if one came. */
static int proto_abandon(lua_State *L)
{
    client *c = client_check(L, 1);
    int op = nomba_checkop(L, 2);
    int o = outcome_check(L, 3);
    size_t n = 0;
    const char *msg = luaL_optlstring(L, 4, NULL, &n);
    int sent = !(lua_type(L, 5) == LUA_TBOOLEAN && !lua_toboolean(L, 5));
    lua_Number status = luaL_optnumber(L, 6, 0);
    int r = outcome_return(L, c, op, o, msg, n, status >= 100 && status <= 999 ? (long)status : 0, sent);
    if (c->at != NULL && !c->at->in_flight)
        attempt_end(c);
    return r;
}

void proto_open(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"request", proto_request},
        {"answer", proto_answer},
        {"abandon", proto_abandon},
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
    /* the metatable of an API answer, until its json is first read */
    lua_pushlightuserdata(L, (void *)&answer_key);
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, answer__index);
    lua_setfield(L, -2, "__index");
    lua_getglobal(L, "next");
    lua_pushcclosure(L, answer__pairs, 1);
    lua_setfield(L, -2, "__pairs");
    lua_rawset(L, LUA_REGISTRYINDEX);
}
