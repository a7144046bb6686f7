/*
 * interpret.c: every answer of every operation and every driver read by
 * one set of rules (proto_interpret): a result (keeping a new token with
 * token_keep) or a typed error.
 */
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <stdio.h>
#include <strings.h>
#include "nomba.h"

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
    int json = request ? answer_json_like(m, body, n) : 1;
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
                answer_push(L, c, m, head, hn, body, n, code, codelen, json);
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
                answer_attach(L, c, m, head, hn, body, n, code, codelen, json);
            sbuf_free(&text);
            lua_pushinteger(L, (lua_Integer)st);
            return 3;
        }
    }
    sbuf_free(&text);
    if (ok2xx && request) {
        answer_push(L, c, m, head, hn, body, n, NULL, 0, json);
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
            answer_attach(L, c, m, head, hn, body, n, NULL, 0, json);
        lua_pushinteger(L, (lua_Integer)st);
        return 3;
    }
}

