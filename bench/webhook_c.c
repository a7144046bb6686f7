/*
 * Baseline for oauth.webhook.verify: the signature check of one delivery
 * as a plain C loop on OpenSSL (HMAC-SHA256 over the signed message, the
 * base64 signature decoded, the 32 bytes compared in constant time).
 * Prints nanoseconds per check.
 *   usage: webhook_c N KEY MESSAGE SIGNATURE [fetched]
 * Plain: OpenSSL's one-shot HMAC(), as most C code calls it. "fetched":
 * the HMAC algorithm fetched once (EVP_MAC_fetch) and one EVP_MAC_CTX
 * re-keyed per check, the fastest way OpenSSL 3's API offers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/core_names.h>
#include <openssl/params.h>

int main(int argc, char **argv)
{
    long n, i;
    const char *key, *msg, *sig;
    unsigned char mac[32], raw[48];
    unsigned int ml;
    struct timespec a, b;
    volatile int ok = 0;
    if (argc < 5)
        return 2;
    n = atol(argv[1]);
    key = argv[2];
    msg = argv[3];
    sig = argv[4];
    if (argc > 5 && strcmp(argv[5], "fetched") == 0) {
        EVP_MAC *m = EVP_MAC_fetch(NULL, "HMAC", NULL);
        EVP_MAC_CTX *c = m ? EVP_MAC_CTX_new(m) : NULL;
        OSSL_PARAM p[2];
        size_t len;
        p[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
        p[1] = OSSL_PARAM_construct_end();
        if (c == NULL || !EVP_MAC_CTX_set_params(c, p))
            return 2;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (i = 0; i < n; i++) {
            EVP_MAC_init(c, (const unsigned char *)key, strlen(key), NULL);
            EVP_MAC_update(c, (const unsigned char *)msg, strlen(msg));
            EVP_MAC_final(c, mac, &len, sizeof mac);
            EVP_DecodeBlock(raw, (const unsigned char *)sig, 44);
            ok += CRYPTO_memcmp(mac, raw, 32) == 0;
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        EVP_MAC_CTX_free(c);
        EVP_MAC_free(m);
    } else {
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (i = 0; i < n; i++) {
            HMAC(EVP_sha256(), key, (int)strlen(key), (const unsigned char *)msg, strlen(msg), mac, &ml);
            EVP_DecodeBlock(raw, (const unsigned char *)sig, 44);
            ok += CRYPTO_memcmp(mac, raw, 32) == 0;
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
    }
    printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / (double)n);
    return ok == n ? 0 : 1;
}
