/*
 * webhook.c: Nomba's webhook signature, in C on OpenSSL.
 *
 * A delivery is signed with HMAC-SHA256 over eight payload fields and the
 * timestamp joined with ':' (the Lua layer, nomba/oauth/webhook.lua, builds
 * that message from the verified JSON). Here:
 *
 *   core.webhook_verify(key, message, signature) -> boolean
 *   core.webhook_sign(key, message)              -> base64 signature
 *
 * verify accepts the signature as standard base64 (44 characters, padded:
 * Nomba's documented form) or as 64 hex digits (seen in integrations),
 * decodes it to 32 raw bytes and compares those with CRYPTO_memcmp. A
 * signature of any other shape is simply wrong: the HMAC is computed and
 * compared anyway, against zeros, so the time taken does not depend on
 * what was sent. The key is used once and never kept; the MAC buffers are
 * wiped.
 */
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/err.h>
#include "nomba.h"

#define MAC 32

static int hmac(const char *key, size_t kn, const char *msg, size_t mn, unsigned char out[MAC])
{
    unsigned int n = 0;
    int ok = HMAC(EVP_sha256(), key, (int)kn, (const unsigned char *)msg, mn, out, &n) != NULL &&
             n == MAC;
    ERR_clear_error();
    return ok;
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

int webhook_check(const char *key, size_t kn, const char *msg, size_t mn, const char *sig, size_t sn)
{
    unsigned char want[MAC], got[MAC];
    int shaped, ok;
    memset(got, 0, sizeof got);
    shaped = decode_sig(sig, sn, got);
    ok = hmac(key, kn, msg, mn, want);
    ok = CRYPTO_memcmp(want, got, MAC) == 0 && ok && shaped;
    OPENSSL_cleanse(want, sizeof want);
    OPENSSL_cleanse(got, sizeof got);
    return ok;
}

static int webhook_verify(lua_State *L)
{
    size_t kn, mn, sn;
    const char *key = luaL_checklstring(L, 1, &kn);
    const char *msg = luaL_checklstring(L, 2, &mn);
    const char *sig = luaL_checklstring(L, 3, &sn);
    lua_pushboolean(L, webhook_check(key, kn, msg, mn, sig, sn));
    return 1;
}

static int webhook_sign(lua_State *L)
{
    size_t kn, mn;
    const char *key = luaL_checklstring(L, 1, &kn);
    const char *msg = luaL_checklstring(L, 2, &mn);
    unsigned char mac[MAC];
    char out[64];
    size_t n;
    if (!hmac(key, kn, msg, mn, mac))
        return luaL_error(L, "nomba.oauth: HMAC-SHA256 failed");
    n = codec_b64_encode(mac, MAC, out, 0);
    OPENSSL_cleanse(mac, sizeof mac);
    lua_pushlstring(L, out, n);
    return 1;
}

void webhook_open(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"webhook_verify", webhook_verify},
        {"webhook_sign", webhook_sign},
        {NULL, NULL}
    };
    luaL_setfuncs(L, funcs, 0);
}
