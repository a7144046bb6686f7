/*
 * Baseline for oauth.webhook.verify: the signature check of one delivery
 * as a plain C loop on OpenSSL (HMAC-SHA256 over the signed message, the
 * base64 signature decoded, the 32 bytes compared in constant time).
 * Prints nanoseconds per check.
 *   usage: webhook_c N KEY MESSAGE SIGNATURE
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

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
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (i = 0; i < n; i++) {
        HMAC(EVP_sha256(), key, (int)strlen(key), (const unsigned char *)msg, strlen(msg), mac, &ml);
        EVP_DecodeBlock(raw, (const unsigned char *)sig, 44);
        ok += CRYPTO_memcmp(mac, raw, 32) == 0;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / (double)n);
    return ok == n ? 0 : 1;
}
