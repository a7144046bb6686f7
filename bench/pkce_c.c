/*
 * Baseline for oauth.pkce.pair(): the same work as a plain C loop on
 * OpenSSL (32+1 random bytes, base64url, SHA-256 with a fetched EVP_MD,
 * base64url). Prints nanoseconds per pair.
 *   usage: pkce_c N
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static size_t enc(const unsigned char *in, size_t n, char *out)
{
    size_t i, o = 0;
    for (i = 0; i + 2 < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64[v >> 18];
        out[o++] = b64[(v >> 12) & 63];
        out[o++] = b64[(v >> 6) & 63];
        out[o++] = b64[v & 63];
    }
    if (n - i == 2) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
        out[o++] = b64[v >> 18];
        out[o++] = b64[(v >> 12) & 63];
        out[o++] = b64[(v >> 6) & 63];
    } else if (n - i == 1) {
        unsigned v = (unsigned)in[i] << 16;
        out[o++] = b64[v >> 18];
        out[o++] = b64[(v >> 12) & 63];
    }
    return o;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 200000, i;
    EVP_MD *md = EVP_MD_fetch(NULL, "SHA256", NULL);
    unsigned char raw[33], dig[32];
    char v[48], c[48];
    unsigned int dl;
    struct timespec a, b;
    volatile char sink = 0;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (i = 0; i < n; i++) {
        RAND_bytes(raw, sizeof raw);
        enc(raw, sizeof raw, v);
        EVP_Digest(v, 43, dig, &dl, md, NULL);
        enc(dig, 32, c);
        sink ^= v[0] ^ c[0];
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / (double)n);
    EVP_MD_free(md);
    return sink == 1 ? 1 : 0;
}
