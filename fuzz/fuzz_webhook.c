/*
 * libFuzzer harness: the webhook signature check (webhook.c). Input: byte
 * 0 is the key length, then the key, then the message up to a '\n', then
 * the signature. Whatever the input, webhook_check never crashes, and it
 * says yes only when the signature really is base64 or hex of
 * HMAC-SHA256(key, message), recomputed here with OpenSSL's one-shot HMAC.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <stdio.h>
#include <strings.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include "nomba.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t kn, rest;
    const char *key, *msg, *nl, *sig;
    size_t mn, sn;
    unsigned char mac[32];
    unsigned int maclen = 0;
    char b64[64], hex[65];
    int i;
    if (size < 1)
        return 0;
    kn = data[0];
    if (size < 1 + kn)
        return 0;
    key = (const char *)data + 1;
    msg = key + kn;
    rest = size - 1 - kn;
    nl = memchr(msg, '\n', rest);
    mn = nl ? (size_t)(nl - msg) : rest;
    sig = nl ? nl + 1 : msg + rest;
    sn = rest - mn - (nl ? 1 : 0);
    if (!webhook_check(key, kn, msg, mn, sig, sn))
        return 0;
    if (HMAC(EVP_sha256(), key, (int)kn, (const unsigned char *)msg, mn, mac, &maclen) == NULL)
        __builtin_trap();
    EVP_EncodeBlock((unsigned char *)b64, mac, 32);
    for (i = 0; i < 32; i++)
        (void)snprintf(hex + 2 * i, 3, "%02x", mac[i]);
    if (!(sn == 44 && memcmp(sig, b64, 44) == 0) &&
        !(sn == 64 && strncasecmp(sig, hex, 64) == 0))
        __builtin_trap();      /* verified without the right signature */
    return 0;
}
