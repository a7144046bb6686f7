/*
 * seal.c: the kept token, sealed for a shared store.
 *
 * A store (shared dict, Redis, memory) holds the client's token as
 *   "n1." base64url(nonce[12] | AES-256-GCM(ciphertext) | tag[16])
 * with the key derived by HKDF-SHA256 from the client secret (or, for a
 * PKCE client, the store_key option) and the store key as associated data,
 * so a value moved to another key, written by another client or altered by
 * one bit does not open. The plaintext is built, encrypted and wiped in C:
 * the tokens never become Lua strings on their way to or from the store.
 *
 *   core.store_id(client)            -> a stable id of (base URL, account, client_id)
 *   core.seal(client, aad)           -> sealed string, or nil when no token is kept
 *   core.adopt(client, aad, s[, force]) -> true when s opened and its token, valid
 *                                       and newer than the kept one (or any valid
 *                                       one, forced), is now kept
 *   core.token_id(access_token)      -> 16 characters naming the token, never it
 *
 * aad is the store key and the store's generation (see nomba/oauth.lua):
 * a revoke renews the generation, so an old value written back never opens.
 *
 * Plaintext layout (version 1): u8 version, f64 expires_at (the server's
 * clock as the sealing client knows it, token_server_now: a host whose wall
 * clock stepped still agrees with the others; the wall clock before any answer),
 * f64 lifetime, then three u32-length-prefixed fields: access, refresh,
 * business id.
 */
#include <string.h>
#include <stdlib.h>
#include <stdint.h>
#include <math.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include "nomba.h"

#define NONCE 12
#define TAG 16
#define PREFIX "n1."

/* base64url of n bytes, appended to out. */
static int b64_add(sbuf *out, const unsigned char *in, size_t n)
{
    if (!sbuf_reserve(out, 4 * ((n + 2) / 3)))
        return 0;
    out->n += codec_b64_encode(in, n, out->p + out->n, 1);
    out->p[out->n] = '\0';
    return 1;
}

/* Decodes canonical base64url (no padding) into out; 0 on anything else,
 * so each byte string has exactly one encoding that opens. */
static int b64_dec(sbuf *out, const char *s, size_t n)
{
    long got;
    if (!sbuf_reserve(out, n * 3 / 4 + 3))
        return 0;
    got = codec_b64_decode(s, n, (unsigned char *)out->p + out->n, out->cap - out->n, 1);
    if (got < 0)
        return 0;
    out->n += (size_t)got;
    return 1;
}

/* The client's sealing keys, made when first needed (a client that never
 * uses a store holds none); NULL when out of memory. */
static sealing *sealing_of(client *c)
{
    if (c->seal == NULL)
        c->seal = (sealing *)calloc(1, sizeof *c->seal);
    return c->seal;
}

/* The AES key, derived once per client from its secret or store_key. */
static int derive_key(client *c, const char *ikm, size_t ikmlen)
{
    EVP_PKEY_CTX *k;
    size_t outlen = 32;
    int ok;
    if (sealing_of(c) == NULL)
        return 0;
    if (c->seal->aes.n == 32)
        return 1;
    k = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
    if (k == NULL)
        return 0;
    if (!sbuf_reserve(&c->seal->aes, 32)) {
        EVP_PKEY_CTX_free(k);
        return 0;
    }
    ok = EVP_PKEY_derive_init(k) > 0 &&
         EVP_PKEY_CTX_set_hkdf_md(k, EVP_sha256()) > 0 &&
         EVP_PKEY_CTX_set1_hkdf_salt(k, (const unsigned char *)"nomba-oauth store v1", 20) > 0 &&
         EVP_PKEY_CTX_set1_hkdf_key(k, (const unsigned char *)ikm, (int)ikmlen) > 0 &&
         EVP_PKEY_CTX_add1_hkdf_info(k, (const unsigned char *)"aes-256-gcm token", 17) > 0 &&
         EVP_PKEY_derive(k, (unsigned char *)c->seal->aes.p, &outlen) > 0 && outlen == 32;
    EVP_PKEY_CTX_free(k);
    ERR_clear_error();
    c->seal->aes.n = ok ? 32 : 0;
    return ok;
}

static int key_of(lua_State *L, client *c)
{
    if (c->tok.secret.n > 0)
        return derive_key(c, c->tok.secret.p, c->tok.secret.n);
    if (c->seal != NULL && c->seal->ikm.n > 0)
        return derive_key(c, c->seal->ikm.p, c->seal->ikm.n);
    (void)L;
    return 0;
}

static int put32(sbuf *b, uint32_t v)
{
    unsigned char q[4];
    q[0] = (unsigned char)(v >> 24);
    q[1] = (unsigned char)(v >> 16);
    q[2] = (unsigned char)(v >> 8);
    q[3] = (unsigned char)v;
    return sbuf_add(b, (const char *)q, 4);
}

static int put_field(sbuf *b, const char *p, size_t n)
{
    return put32(b, (uint32_t)n) && (n == 0 || sbuf_add(b, p, n));
}

/* AES-256-GCM over in, with aad; enc=1 seals, 0 opens (tag checked). */
static int gcm(int enc, const unsigned char *key, const unsigned char *nonce,
               const unsigned char *aad, size_t aadlen, const unsigned char *in, size_t n,
               unsigned char *out, unsigned char *tag)
{
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    int len = 0, ok;
    if (x == NULL)
        return 0;
    ok = EVP_CipherInit_ex(x, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) == 1 &&
         EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_IVLEN, NONCE, NULL) == 1 &&
         EVP_CipherInit_ex(x, NULL, NULL, key, nonce, enc) == 1 &&
         EVP_CipherUpdate(x, NULL, &len, aad, (int)aadlen) == 1 &&
         EVP_CipherUpdate(x, out, &len, in, (int)n) == 1;
    if (ok && !enc)
        ok = EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_TAG, TAG, tag) == 1;
    ok = ok && EVP_CipherFinal_ex(x, out + len, &len) == 1;
    if (ok && enc)
        ok = EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_GET_TAG, TAG, tag) == 1;
    EVP_CIPHER_CTX_free(x);
    ERR_clear_error();
    return ok;
}

/* core.seal(client, store_key) */
static int seal_token(lua_State *L)
{
    client *c = client_check(L, 1);
    size_t aadlen, n;
    const char *aad = luaL_checklstring(L, 2, &aadlen);
    unsigned char nonce[NONCE], tag[TAG];
    unsigned char version = 1;
    sbuf pt_ = {NULL, 0, 0}, ct_ = {NULL, 0, 0};   /* freed (wiped) on every path */
    sbuf *pt = &pt_, *ct = &ct_;
    int ok;
    if (c->closed || c->tok.access.n == 0 || c->tok.expires_mono <= 0 || !key_of(L, c))
        return 0;
    sbuf_wipe(pt);
    sbuf_wipe(ct);
    {
        double left = c->tok.expires_mono - nt_mono();
        double at = token_server_now(c) + left;     /* on the server's clock: see token_anchor */
        ok = sbuf_add(pt, (const char *)&version, 1) &&
             sbuf_add(pt, (const char *)&at, sizeof at) &&
             sbuf_add(pt, (const char *)&c->tok.lifetime, sizeof c->tok.lifetime) &&
             put_field(pt, c->tok.access.p, c->tok.access.n) &&
             put_field(pt, c->tok.refresh.p, c->tok.refresh.n) &&
             put_field(pt, c->tok.business_id, c->tok.business_id ? strlen(c->tok.business_id) : 0);
    }
    n = pt->n;
    ok = ok && RAND_bytes(nonce, NONCE) == 1 && sbuf_reserve(ct, n + 16) &&
         gcm(1, (const unsigned char *)c->seal->aes.p, nonce, (const unsigned char *)aad, aadlen,
             (const unsigned char *)pt->p, n, (unsigned char *)ct->p, tag);
    sbuf_free(pt);
    if (!ok) {
        sbuf_free(ct);
        ERR_clear_error();
        return 0;
    }
    ct->n = n;
    {
        sbuf out = {NULL, 0, 0};
        sbuf raw = {NULL, 0, 0};
        ok = sbuf_add(&raw, (const char *)nonce, NONCE) && sbuf_add(&raw, ct->p, n) &&
             sbuf_add(&raw, (const char *)tag, TAG) && sbuf_adds(&out, PREFIX) &&
             b64_add(&out, (const unsigned char *)raw.p, raw.n);
        sbuf_free(&raw);
        sbuf_free(ct);
        if (ok)
            lua_pushlstring(L, out.p, out.n);   /* ciphertext only: not a secret */
        sbuf_free(&out);
        return ok ? 1 : 0;
    }
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* core.adopt(client, store_key, sealed[, force]) */
static int adopt_token(lua_State *L)
{
    client *c = client_check(L, 1);
    size_t aadlen, sn, n;
    const char *aad = luaL_checklstring(L, 2, &aadlen);
    const char *s = luaL_optlstring(L, 3, NULL, &sn);
    int force = lua_toboolean(L, 4);
    sbuf raw_ = {NULL, 0, 0}, pt_ = {NULL, 0, 0};  /* freed (wiped) at done */
    sbuf *raw = &raw_, *pt = &pt_;
    const unsigned char *p, *e, *f[3];
    uint32_t flen[3];
    double at, lifetime, left;
    int i, ok = 0;
    sbuf s0 = {NULL, 0, 0}, s1 = {NULL, 0, 0};

    lua_pushboolean(L, 0);
    if (c->closed || s == NULL || sn < sizeof PREFIX || memcmp(s, PREFIX, sizeof PREFIX - 1) != 0 ||
        !key_of(L, c))
        return 1;
    sbuf_wipe(raw);
    sbuf_wipe(pt);
    if (!b64_dec(raw, s + sizeof PREFIX - 1, sn - (sizeof PREFIX - 1)) || raw->n < NONCE + TAG + 17)
        goto done;
    n = raw->n - NONCE - TAG;
    if (!sbuf_reserve(pt, n + 16) ||
        !gcm(0, (const unsigned char *)c->seal->aes.p, (const unsigned char *)raw->p,
             (const unsigned char *)aad, aadlen, (const unsigned char *)raw->p + NONCE, n,
             (unsigned char *)pt->p, (unsigned char *)raw->p + NONCE + n))
        goto done;
    pt->n = n;
    p = (const unsigned char *)pt->p;
    e = p + n;
    if (*p++ != 1)
        goto done;
    memcpy(&at, p, sizeof at);
    p += sizeof at;
    memcpy(&lifetime, p, sizeof lifetime);
    p += sizeof lifetime;
    for (i = 0; i < 3; i++) {
        if (e - p < 4)
            goto done;
        flen[i] = get32(p);
        p += 4;
        if ((size_t)(e - p) < flen[i])
            goto done;
        f[i] = p;
        p += flen[i];
    }
    if (!isfinite(at) || !isfinite(lifetime))
        goto done;
    left = at - token_server_now(c);
    /* only a valid token that outlives the kept one replaces it (any valid
     * one when forced), and never the very token this client invalidated
     * (after a 401 elsewhere) */
    if (p != e || flen[0] == 0 || !(left > 0) || !(lifetime > 0) ||
        left > NOMBA_MAX_LIFETIME || lifetime > NOMBA_MAX_LIFETIME ||
        (!force && c->tok.expires_mono > 0 && nt_mono() + left <= c->tok.expires_mono + 0.5) ||
        (c->tok.expires_mono <= 0 && c->tok.access.n == flen[0] &&
         memcmp(c->tok.access.p, f[0], flen[0]) == 0))
        goto done;
    if (!sbuf_set(&s0, (const char *)f[0], flen[0]) || !sbuf_set(&s1, (const char *)f[1], flen[1]) ||
        !token_keep(L, 1, c, &s0, &s1, flen[2] ? (const char *)f[2] : NULL, flen[2], lifetime, left))
        goto done;
    ok = 1;
done:
    sbuf_free(raw);
    sbuf_free(pt);
    sbuf_free(&s0);                     /* token_keep swapped them with the kept ones */
    sbuf_free(&s1);
    lua_pushboolean(L, ok);
    return 1;
}

/* core.set_store_key(client, key): the key material of a PKCE client. */
static int set_store_key(lua_State *L)
{
    client *c = client_check(L, 1);
    size_t n;
    const char *k = luaL_checklstring(L, 2, &n);
    if (sealing_of(c) == NULL || !sbuf_set(&c->seal->ikm, k, n))
        return luaL_error(L, "nomba.oauth: out of memory");
    sbuf_wipe(&c->seal->aes);
    return 0;
}

/* core.store_id(client): base64url(SHA-256(base_url NUL account NUL client_id)),
 * 22 characters: the same for every process that talks for this client. */
static int store_id(lua_State *L)
{
    client *c = client_check(L, 1);
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_MD_CTX *x;
    sbuf out = {NULL, 0, 0};
    if (c->closed)
        return 0;
    x = EVP_MD_CTX_new();
    if (x == NULL || EVP_DigestInit_ex(x, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(x, c->cfg.ep->base_url, strlen(c->cfg.ep->base_url) + 1) != 1 ||
        EVP_DigestUpdate(x, c->cfg.account_id, strlen(c->cfg.account_id) + 1) != 1 ||
        EVP_DigestUpdate(x, c->cfg.client_id, strlen(c->cfg.client_id)) != 1 ||
        EVP_DigestFinal_ex(x, md, &mdlen) != 1) {
        EVP_MD_CTX_free(x);
        ERR_clear_error();
        return luaL_error(L, "nomba.oauth: SHA-256 failed");
    }
    EVP_MD_CTX_free(x);
    if (!b64_add(&out, md, 16)) {
        sbuf_free(&out);
        return luaL_error(L, "nomba.oauth: out of memory");
    }
    lua_pushlstring(L, out.p, out.n);
    sbuf_free(&out);
    return 1;
}

/* core.token_id(access_token): base64url of the first 12 bytes of the
 * token's SHA-256, 16 characters: the same in every process that holds the
 * token, and never the token (the 401 rule's marks in a store name it). */
static int token_id(lua_State *L)
{
    size_t n;
    const char *t = luaL_checklstring(L, 1, &n);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    char out[16];
    if (EVP_Digest(t, n, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32) {
        ERR_clear_error();
        return luaL_error(L, "nomba.oauth: SHA-256 failed");
    }
    lua_pushlstring(L, out, codec_b64_encode(md, 12, out, 1));
    return 1;
}

void seal_open(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"seal", seal_token},
        {"adopt", adopt_token},
        {"set_store_key", set_store_key},
        {"store_id", store_id},
        {"token_id", token_id},
        {NULL, NULL}
    };
    luaL_setfuncs(L, funcs, 0);
}
