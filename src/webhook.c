/*
 * webhook.c: Nomba's webhook signature, in C on OpenSSL.
 *
 * A delivery is signed with HMAC-SHA256 over eight fields of the event and
 * the nomba-timestamp header, joined with ':':
 *
 *   event_type:requestId:data.merchant.userId:data.merchant.walletId:
 *   data.transaction.transactionId:data.transaction.type:
 *   data.transaction.time:data.transaction.responseCode:<timestamp>
 *
 * A missing field or null is "", a number is written as JavaScript writes
 * it (Nomba's signer), a boolean as true/false. A responseCode of the
 * string "null" is signed as "" (all of Nomba's samples do so; the Java one
 * in any letter case, so a "NULL" verifies under either reading).
 *
 * The fields are joined with ':' and data.transaction.time holds colons,
 * so a delivery could be re-cut into other fields giving the same message:
 * verify refuses a ':' in the seven fields that never hold one, a time
 * that is not an RFC 3339 timestamp, and a signed field that is an object
 * or an array (reason "bad_field"). The nomba-timestamp header is RFC 3339
 * with its offset, or Unix seconds (Nomba's older pages).
 *
 *   core.webhook_verify(key, body, headers, now, max_age)
 *       -> event | nil, reason, message
 *   core.webhook_sign(key, event, timestamp) -> base64 signature | nil
 *   core.webhook_check(key, message, signature) -> boolean
 *   core.webhook_mac(key, message)              -> base64 signature
 *
 * verify does the whole check in one call: the headers (names in any case),
 * the timestamp, the body decoded by json.c into the event table, the HMAC
 * fed field by field (no message is built), the signature decoded and
 * compared with CRYPTO_memcmp, then the time window. A signature is
 * standard base64 (44 characters, padded: Nomba's documented form) or 64
 * hex digits (seen in integrations); one of any other shape is simply
 * wrong: the HMAC is computed and compared anyway, against zeros, so the
 * time taken does not depend on what was sent.
 *
 * HMAC is RFC 2104 over OpenSSL's SHA-256, fetched once per process: the
 * one-shot HMAC() looks the algorithm up on every call, which cost more
 * than the MAC itself. The key and its pads live on the stack and are
 * wiped, the digest context is freed (and cleansed) after every call: the
 * key is never kept. fuzz/fuzz_webhook.c checks the MAC against HMAC()
 * for every input.
 */
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <locale.h>
#include <pthread.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/err.h>
#include "nomba.h"

#define MAC       32
#define BLOCK     64

static const char ALGORITHM[] = "HmacSHA256", VERSION[] = "1.0.0";

/* ---- HMAC-SHA256 -------------------------------------------------------- */

static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

static const EVP_MD *sha256(void)
{
    (void)pthread_once(&sha256_once, sha256_fetch);
    return sha256_md != NULL ? sha256_md : EVP_sha256();
}

typedef struct {
    EVP_MD_CTX *ctx;
    unsigned char opad[BLOCK];
    int ok;
} mac_t;

static void mac_begin(mac_t *m, const char *key, size_t kn)
{
    unsigned char k[BLOCK], ipad[BLOCK];
    unsigned int n = 0;
    size_t i;
    memset(k, 0, sizeof k);
    m->ctx = EVP_MD_CTX_new();
    m->ok = m->ctx != NULL;
    if (kn > BLOCK)
        m->ok = m->ok && EVP_Digest(key, kn, k, &n, sha256(), NULL) == 1;
    else
        memcpy(k, key, kn);
    for (i = 0; i < BLOCK; i++) {
        ipad[i] = (unsigned char)(k[i] ^ 0x36);
        m->opad[i] = (unsigned char)(k[i] ^ 0x5c);
    }
    m->ok = m->ok && EVP_DigestInit_ex(m->ctx, sha256(), NULL) == 1 &&
            EVP_DigestUpdate(m->ctx, ipad, BLOCK) == 1;
    OPENSSL_cleanse(k, sizeof k);
    OPENSSL_cleanse(ipad, sizeof ipad);
}

static void mac_add(mac_t *m, const void *s, size_t n)
{
    m->ok = m->ok && (n == 0 || EVP_DigestUpdate(m->ctx, s, n) == 1);
}

/* The MAC into out (zeros on failure); 1 if it was computed. */
static int mac_end(mac_t *m, unsigned char out[MAC])
{
    unsigned char inner[MAC];
    unsigned int n = 0;
    memset(out, 0, MAC);
    m->ok = m->ok && EVP_DigestFinal_ex(m->ctx, inner, &n) == 1 && n == MAC &&
            EVP_DigestInit_ex(m->ctx, sha256(), NULL) == 1 &&
            EVP_DigestUpdate(m->ctx, m->opad, BLOCK) == 1 && EVP_DigestUpdate(m->ctx, inner, MAC) == 1 &&
            EVP_DigestFinal_ex(m->ctx, out, &n) == 1 && n == MAC;
    EVP_MD_CTX_free(m->ctx);
    m->ctx = NULL;
    OPENSSL_cleanse(inner, sizeof inner);
    OPENSSL_cleanse(m->opad, sizeof m->opad);
    ERR_clear_error();
    if (!m->ok)
        memset(out, 0, MAC);
    return m->ok;
}

int webhook_mac(const char *key, size_t kn, const char *msg, size_t mn, unsigned char out[MAC])
{
    mac_t m;
    mac_begin(&m, key, kn);
    mac_add(&m, msg, mn);
    return mac_end(&m, out);
}

/* The 32 raw bytes of a signature, or 0: canonical standard base64 (44
 * characters with its one '='), or 64 hex digits. */
static int decode_sig(const char *s, size_t n, unsigned char out[MAC])
{
    size_t i;
    if (n == 44)
        return codec_b64_decode(s, n, out, MAC, 0) == MAC;
    if (n == 64) {
        for (i = 0; i < MAC; i++) {
            int hi = codec_hexval((unsigned char)s[2 * i]), lo = codec_hexval((unsigned char)s[2 * i + 1]);
            if (hi < 0 || lo < 0)
                return 0;
            out[i] = (unsigned char)(hi << 4 | lo);
        }
        return 1;
    }
    return 0;
}

/* Whether sig is the MAC finished in m, in constant time over the bytes. */
static int mac_matches(mac_t *m, const char *sig, size_t sn)
{
    unsigned char want[MAC], got[MAC];
    int shaped, ok;
    memset(got, 0, sizeof got);
    shaped = decode_sig(sig, sn, got);
    ok = mac_end(m, want);
    ok = CRYPTO_memcmp(want, got, MAC) == 0 && ok && shaped;
    OPENSSL_cleanse(want, sizeof want);
    OPENSSL_cleanse(got, sizeof got);
    return ok;
}

int webhook_check(const char *key, size_t kn, const char *msg, size_t mn, const char *sig, size_t sn)
{
    mac_t m;
    mac_begin(&m, key, kn);
    mac_add(&m, msg, mn);
    return mac_matches(&m, sig, sn);
}

/* ---- the signed fields ---------------------------------------------------- */

#define NFIELDS 8
#define F_TIME 6
#define F_CODE 7

static const char *const FIELD_NAME[NFIELDS] = {
    "event_type", "requestId", "data.merchant.userId", "data.merchant.walletId",
    "data.transaction.transactionId", "data.transaction.type", "data.transaction.time",
    "data.transaction.responseCode"
};

typedef struct {
    const char *s[NFIELDS];
    size_t n[NFIELDS];
    char num[NFIELDS][32];
    int table[NFIELDS];     /* the field is an object or an array */
    int null_case;          /* responseCode is "null" in another letter case ("NULL") */
} fields;

/* v as JavaScript's Number.prototype.toString writes it: the shortest
 * digits that read back as v, placed by ECMAScript's rules. */
static size_t js_number(double v, char out[32])
{
    char e[40], digits[20];
    int k = 0, p, exp10, n, i;
    size_t o = 0;
    if (v != v)
        return (size_t)snprintf(out, 32, "NaN");
    if (isinf(v))
        return (size_t)snprintf(out, 32, v < 0 ? "-Infinity" : "Infinity");
    if (v == 0)
        return (size_t)snprintf(out, 32, "0");
    if (v == floor(v) && fabs(v) < 1e15)
        return (size_t)snprintf(out, 32, "%.0f", v);
    for (p = 1; p <= 17; p++) {
        (void)snprintf(e, sizeof e, "%.*e", p - 1, v);
        if (strtod(e, NULL) == v)
            break;
    }
    /* e is [-]d[<point>ddd]e[+-]xx whatever the locale's decimal point */
    for (i = 0; e[i] != 'e'; i++)
        if (e[i] >= '0' && e[i] <= '9' && k < (int)sizeof digits)
            digits[k++] = e[i];
    exp10 = atoi(e + i + 1);
    if (k == 0)
        digits[k++] = '0';      /* cannot happen: %e writes a digit */
    while (k > 1 && digits[k - 1] == '0')
        k--;
    n = exp10 + 1;
    if (v < 0)
        out[o++] = '-';
    if (k <= n && n <= 21) {
        for (i = 0; i < k; i++)
            out[o++] = digits[i];
        for (; i < n; i++)
            out[o++] = '0';
    } else if (0 < n && n <= 21) {
        for (i = 0; i < n; i++)
            out[o++] = digits[i];
        out[o++] = '.';
        for (; i < k; i++)
            out[o++] = digits[i];
    } else if (-6 < n && n <= 0) {
        out[o++] = '0';
        out[o++] = '.';
        for (i = 0; i < -n; i++)
            out[o++] = '0';
        for (i = 0; i < k; i++)
            out[o++] = digits[i];
    } else {
        out[o++] = digits[0];
        if (k > 1) {
            out[o++] = '.';
            for (i = 1; i < k; i++)
                out[o++] = digits[i];
        }
        o += (size_t)snprintf(out + o, 32 - o, "e%c%d", n - 1 < 0 ? '-' : '+', abs(n - 1));
    }
    out[o] = '\0';
    return o;
}

/* Field i from the value on top of the stack (popped); strings stay
 * anchored by the event table. */
static void field(lua_State *L, fields *f, int i)
{
    f->s[i] = "";
    f->n[i] = 0;
    f->table[i] = 0;
    switch (lua_type(L, -1)) {
    case LUA_TSTRING:
        f->s[i] = lua_tolstring(L, -1, &f->n[i]);
        break;
    case LUA_TTABLE:
        f->table[i] = 1;        /* signed as "", and refused by verify */
        break;
    case LUA_TNUMBER:
#if LUA_VERSION_NUM >= 503
        if (lua_isinteger(L, -1)) {
            lua_Integer v = lua_tointeger(L, -1);
            if (v > -((lua_Integer)1 << 53) && v < ((lua_Integer)1 << 53)) {
                f->n[i] = (size_t)snprintf(f->num[i], sizeof f->num[i], "%lld", (long long)v);
                f->s[i] = f->num[i];
                break;
            }
        }
#endif
        f->n[i] = js_number((double)lua_tonumber(L, -1), f->num[i]);
        f->s[i] = f->num[i];
        break;
    case LUA_TBOOLEAN:
        f->s[i] = lua_toboolean(L, -1) ? "true" : "false";
        f->n[i] = strlen(f->s[i]);
        break;
    default:
        break;
    }
    lua_pop(L, 1);
}

/* Member name of the table at idx (raw), or nil when idx is not a table. */
static void member(lua_State *L, int idx, const char *name)
{
    if (lua_type(L, idx) != LUA_TTABLE) {
        lua_pushnil(L);
        return;
    }
    lua_pushstring(L, name);
    lua_rawget(L, idx < 0 ? idx - 1 : idx);
}

static void fields_of(lua_State *L, int ev, fields *f)
{
    static const char *const merchant[] = {"userId", "walletId"};
    static const char *const transaction[] = {"transactionId", "type", "time", "responseCode"};
    int i;
    member(L, ev, "event_type");
    field(L, f, 0);
    member(L, ev, "requestId");
    field(L, f, 1);
    member(L, ev, "data");
    member(L, -1, "merchant");
    for (i = 0; i < 2; i++) {
        member(L, -1, merchant[i]);
        field(L, f, 2 + i);
    }
    lua_pop(L, 1);
    member(L, -1, "transaction");
    for (i = 0; i < 4; i++) {
        member(L, -1, transaction[i]);
        field(L, f, 4 + i);
    }
    lua_pop(L, 2);
    /* Nomba's signers write a responseCode "null" as "" */
    f->null_case = 0;
    if (f->n[F_CODE] == 4 && codec_name_is(f->s[F_CODE], 4, "null")) {
        if (memcmp(f->s[F_CODE], "null", 4) != 0)
            f->null_case = 1;   /* "NULL": "" for the Java sample, itself for the others */
        else
            f->n[F_CODE] = 0;
    }
}

/* Why the fields cannot be the ones Nomba signed, or NULL: a ':' where none
 * belongs, a time that is no timestamp, an object or array signed as "". */
static const char *bad_field(const fields *f, const char **which)
{
    int i;
    double t;
    for (i = 0; i < NFIELDS; i++) {
        *which = FIELD_NAME[i];
        if (f->table[i])
            return "%s is an object or an array";
        if (i != F_TIME && memchr(f->s[i], ':', f->n[i]) != NULL)
            return "%s holds a ':', the separator of the signed fields";
    }
    *which = FIELD_NAME[F_TIME];
    if (f->n[F_TIME] > 0 && !nt_rfc3339(f->s[F_TIME], f->n[F_TIME], &t))
        return "%s is not an RFC 3339 timestamp";
    return NULL;
}

static void mac_fields(mac_t *m, const fields *f, const char *ts, size_t tn)
{
    int i;
    for (i = 0; i < NFIELDS; i++) {
        mac_add(m, f->s[i], f->n[i]);
        mac_add(m, ":", 1);
    }
    mac_add(m, ts, tn);
}

/* ---- Lua entries ------------------------------------------------------------ */

/* Pushes the MAC finished in m as base64 (the signature a delivery carries). */
static int push_signature(lua_State *L, mac_t *m)
{
    unsigned char mac[MAC];
    char out[64];
    size_t n;
    if (!mac_end(m, mac))
        return luaL_error(L, "nomba.oauth: HMAC-SHA256 failed");
    n = codec_b64_encode(mac, MAC, out, 0);
    OPENSSL_cleanse(mac, sizeof mac);
    lua_pushlstring(L, out, n);
    return 1;
}

enum { H_SIGNATURE, H_SIG_VALUE, H_TIMESTAMP, H_ALGORITHM, H_VERSION, NHEADERS };
static const char *const HEADER[NHEADERS] = {
    "nomba-signature", "nomba-sig-value", "nomba-timestamp", "nomba-signature-algorithm",
    "nomba-signature-version"
};

/* A header value: a string, or the first of a list of them. */
static const char *header_value(lua_State *L, int idx, size_t *n)
{
    if (lua_type(L, idx) == LUA_TTABLE) {
        const char *s;
        lua_rawgeti(L, idx, 1);
        s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, n) : NULL;
        lua_pop(L, 1);          /* anchored by the list */
        return s;
    }
    return lua_type(L, idx) == LUA_TSTRING ? lua_tolstring(L, idx, n) : NULL;
}

static int same_name(const char *k, size_t kn, const char *name)
{
    size_t i;
    if (kn != strlen(name))
        return 0;
    for (i = 0; i < kn; i++) {
        unsigned char c = (unsigned char)k[i];
        if ((c >= 'A' && c <= 'Z' ? c + 32 : c) != (unsigned char)name[i])
            return 0;
    }
    return 1;
}

/* The five headers of the table at idx: lower-case names first (nginx's),
 * then any spelling. */
static void headers_of(lua_State *L, int idx, const char *v[NHEADERS], size_t n[NHEADERS])
{
    int i;
    for (i = 0; i < NHEADERS; i++) {
        lua_getfield(L, idx, HEADER[i]);
        v[i] = header_value(L, -1, &n[i]);
        lua_pop(L, 1);          /* anchored by the headers table */
    }
    if ((v[H_SIGNATURE] != NULL || v[H_SIG_VALUE] != NULL) && v[H_TIMESTAMP] != NULL &&
        v[H_ALGORITHM] != NULL && v[H_VERSION] != NULL)
        return;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        size_t kn;
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &kn) : NULL;
        for (i = 0; k != NULL && i < NHEADERS; i++)
            if (v[i] == NULL && same_name(k, kn, HEADER[i]))
                v[i] = header_value(L, -1, &n[i]);
        lua_pop(L, 1);
    }
}

static int refuse(lua_State *L, const char *reason, const char *message, const char *what)
{
    lua_pushnil(L);
    lua_pushstring(L, reason);
    lua_pushfstring(L, message, what);
    return 3;
}

/* The nomba-timestamp: RFC 3339 with its offset, or Unix seconds. */
static int timestamp(const char *s, size_t n, double *t)
{
    if (n > 0 && n <= 11 && s[0] >= '0' && s[0] <= '9')
        return codec_digits(s, n, 99999999999.0, t);
    return nt_rfc3339(s, n, t);
}

/* Whether the signature holds over the fields with the responseCode read
 * as it is given (code = 0) or as "" (code = 1). */
static int signed_with(const char *key, size_t kn, fields *f, const char *ts, size_t tn, const char *sig,
                       size_t sn, int empty_code)
{
    mac_t m;
    size_t n = f->n[F_CODE];
    if (empty_code)
        f->n[F_CODE] = 0;
    mac_begin(&m, key, kn);
    mac_fields(&m, f, ts, tn);
    f->n[F_CODE] = n;
    return mac_matches(&m, sig, sn);
}

/* core.webhook_verify(key, body, headers, now, max_age, max_skew) */
static int webhook_verify(lua_State *L)
{
    size_t kn, bn, hn[NHEADERS], i;
    const char *key = luaL_checklstring(L, 1, &kn);
    const char *body = luaL_checklstring(L, 2, &bn);
    const char *h[NHEADERS], *why, *which;
    double now, max_age, max_skew, t;
    fields f;
    int ok;
    luaL_checktype(L, 3, LUA_TTABLE);
    now = (double)luaL_checknumber(L, 4);
    max_age = (double)luaL_checknumber(L, 5);
    max_skew = (double)luaL_checknumber(L, 6);
    lua_settop(L, 6);
    headers_of(L, 3, h, hn);
    if (h[H_SIGNATURE] == NULL) {
        h[H_SIGNATURE] = h[H_SIG_VALUE];
        hn[H_SIGNATURE] = hn[H_SIG_VALUE];
    }
    if (h[H_SIGNATURE] == NULL)
        return refuse(L, "missing_header", "no nomba-signature header", "");
    if (h[H_TIMESTAMP] == NULL)
        return refuse(L, "missing_header", "no nomba-timestamp header", "");
    if (h[H_ALGORITHM] == NULL)
        return refuse(L, "missing_header", "no nomba-signature-algorithm header", "");
    if (hn[H_ALGORITHM] != strlen(ALGORITHM) || memcmp(h[H_ALGORITHM], ALGORITHM, hn[H_ALGORITHM]) != 0)
        return refuse(L, "unknown_algorithm", "the signature algorithm is not %s", ALGORITHM);
    if (h[H_VERSION] == NULL)
        return refuse(L, "missing_header", "no nomba-signature-version header", "");
    if (hn[H_VERSION] != strlen(VERSION) || memcmp(h[H_VERSION], VERSION, hn[H_VERSION]) != 0)
        return refuse(L, "unknown_version", "the signature version is not %s", VERSION);
    if (!timestamp(h[H_TIMESTAMP], hn[H_TIMESTAMP], &t))
        return refuse(L, "missing_header", "nomba-timestamp is not an RFC 3339 time with its offset, "
                      "nor Unix seconds", "");
    for (i = 0; i < bn && (body[i] == ' ' || body[i] == '\t' || body[i] == '\n' || body[i] == '\r'); i++)
        ;
    if (i == bn || body[i] != '{' || !json_push(L, body, bn, NOMBA_MAX_JSON_DEPTH))
        return refuse(L, "bad_json", "the body is not a JSON object", "");
    fields_of(L, 7, &f);                    /* may raise (memory) before anything is held */
    if ((why = bad_field(&f, &which)) != NULL)
        return refuse(L, "bad_field", why, which);
    ok = signed_with(key, kn, &f, h[H_TIMESTAMP], hn[H_TIMESTAMP], h[H_SIGNATURE], hn[H_SIGNATURE], 0);
    if (f.null_case)                        /* the samples disagree on "NULL": either reading */
        ok |= signed_with(key, kn, &f, h[H_TIMESTAMP], hn[H_TIMESTAMP], h[H_SIGNATURE], hn[H_SIGNATURE], 1);
    if (!ok)
        return refuse(L, "bad_signature", "the signature does not match", "");
    if (now - t > max_age)
        return refuse(L, "stale", "the delivery is older than max_age", "");
    if (t - now > max_skew)
        return refuse(L, "future", "the delivery is dated in the future", "");
    return 1;
}

/* core.webhook_sign(key, event, timestamp): event a table or JSON text. */
static int webhook_sign(lua_State *L)
{
    size_t kn, tn;
    const char *key = luaL_checklstring(L, 1, &kn);
    const char *ts = luaL_checklstring(L, 3, &tn);
    fields f;
    mac_t m;
    lua_settop(L, 3);
    if (lua_type(L, 2) == LUA_TSTRING) {
        size_t bn;
        const char *body = lua_tolstring(L, 2, &bn);
        if (!json_push(L, body, bn, NOMBA_MAX_JSON_DEPTH) || lua_type(L, -1) != LUA_TTABLE)
            return 0;
        lua_replace(L, 2);
    }
    if (lua_type(L, 2) != LUA_TTABLE)
        return 0;
    fields_of(L, 2, &f);
    mac_begin(&m, key, kn);
    mac_fields(&m, &f, ts, tn);
    return push_signature(L, &m);
}

/* core.webhook_timestamp(s): the seconds a nomba-timestamp stands for, or
 * nil when verify would refuse it (the CLI's --timestamp check). */
static int webhook_timestamp_l(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    double t;
    if (!timestamp(s, n, &t))
        return 0;
    lua_pushnumber(L, t);
    return 1;
}

static int webhook_check_l(lua_State *L)
{
    size_t kn, mn, sn;
    const char *key = luaL_checklstring(L, 1, &kn);
    const char *msg = luaL_checklstring(L, 2, &mn);
    const char *sig = luaL_checklstring(L, 3, &sn);
    lua_pushboolean(L, webhook_check(key, kn, msg, mn, sig, sn));
    return 1;
}

static int webhook_mac_l(lua_State *L)
{
    size_t kn, mn;
    const char *key = luaL_checklstring(L, 1, &kn);
    const char *msg = luaL_checklstring(L, 2, &mn);
    mac_t m;
    mac_begin(&m, key, kn);
    mac_add(&m, msg, mn);
    return push_signature(L, &m);
}

void webhook_open(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"webhook_verify", webhook_verify},
        {"webhook_sign", webhook_sign},
        {"webhook_timestamp", webhook_timestamp_l},
        {"webhook_check", webhook_check_l},
        {"webhook_mac", webhook_mac_l},
        {NULL, NULL}
    };
    luaL_setfuncs(L, funcs, 0);
    lua_pushstring(L, ALGORITHM);
    lua_setfield(L, -2, "WEBHOOK_ALGORITHM");
    lua_pushstring(L, VERSION);
    lua_setfield(L, -2, "WEBHOOK_VERSION");
}
