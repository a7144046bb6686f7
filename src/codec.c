/*
 * codec.c: the encodings the module needs, written once.
 *
 *   base64, standard (RFC 4648 section 4, padded) and url-safe (section 5,
 *   unpadded): webhook signatures, PKCE challenges and verifiers, sealed
 *   store values. The decoder accepts only the canonical form (the right
 *   padding, unused bits zero), so each byte string has one encoding.
 *   hex digits: webhook signatures given as hex digests.
 *   header names: compared without regard to ASCII case.
 *   header numbers: digits only, bounded (codec_digits).
 */
#include <string.h>
#include "nomba.h"

static const char alphabet[2][65] = {
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
};

/* Encodes n bytes; out needs 4 * ceil(n / 3) bytes. Returns its length. */
size_t codec_b64_encode(const unsigned char *in, size_t n, char *out, int url)
{
    const char *a = alphabet[url ? 1 : 0];
    size_t i, o = 0;
    for (i = 0; i + 2 < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = a[v >> 18];
        out[o++] = a[(v >> 12) & 63];
        out[o++] = a[(v >> 6) & 63];
        out[o++] = a[v & 63];
    }
    if (n - i == 1) {
        unsigned v = (unsigned)in[i] << 16;
        out[o++] = a[v >> 18];
        out[o++] = a[(v >> 12) & 63];
        if (!url) {
            out[o++] = '=';
            out[o++] = '=';
        }
    } else if (n - i == 2) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
        out[o++] = a[v >> 18];
        out[o++] = a[(v >> 12) & 63];
        out[o++] = a[(v >> 6) & 63];
        if (!url)
            out[o++] = '=';
    }
    return o;
}

static int value_of(unsigned char ch, int url)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == (url ? '-' : '+'))
        return 62;
    if (ch == (url ? '_' : '/'))
        return 63;
    return -1;
}

/* Decodes the canonical form into out (cap bytes): the number of bytes, or
 * -1 for a bad symbol, a bad length or padding, nonzero unused bits, or
 * more than cap bytes. */
long codec_b64_decode(const char *s, size_t n, unsigned char *out, size_t cap, int url)
{
    size_t i, o = 0, pad = 0;
    unsigned acc = 0;
    int bits = 0;
    if (!url) {
        if (n % 4 != 0)
            return -1;
        while (pad < 2 && n > 0 && s[n - 1] == '=')
            n--, pad++;
    }
    if (n % 4 == 1 || (!url && pad != (4 - n % 4) % 4))
        return -1;
    for (i = 0; i < n; i++) {
        int v = value_of((unsigned char)s[i], url);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o == cap)
                return -1;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    return acc == 0 ? (long)o : -1;
}

int codec_hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Whether the n bytes at s are the header name `lower` (written in lower
 * case), ignoring ASCII case. */
int codec_name_is(const char *s, size_t n, const char *lower)
{
    size_t i;
    for (i = 0; i < n; i++) {
        char ch = s[i];
        if (ch >= 'A' && ch <= 'Z')
            ch = (char)(ch - 'A' + 'a');
        if (lower[i] == '\0' || ch != lower[i])
            return 0;
    }
    return lower[n] == '\0';
}

/* The one reader of a number in a header (Content-Length, Retry-After's
 * seconds, rate-limit counts): optional spaces or tabs around one or more
 * decimal digits and nothing else, worth at most max. Never "1e3", "0x10",
 * "-5" or "5.5"; a long run of digits is refused as soon as it passes max. */
int codec_digits(const char *s, size_t n, double max, double *out)
{
    const char *p = s, *e = s + n;
    double v = 0;
    while (p < e && (*p == ' ' || *p == '\t'))
        p++;
    while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    if (p == e)
        return 0;
    for (; p < e; p++) {
        if (*p < '0' || *p > '9')
            return 0;
        v = v * 10 + (*p - '0');
        if (v > max)
            return 0;
    }
    *out = v;
    return 1;
}

/* Whether the n bytes at s are visible ASCII (0x21 to 0x7e): what a token,
 * a refresh token or an auth code may hold, since it goes into a header
 * line. The one check, for answers, saved tokens and given bearers. */
int codec_visible(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return 0;
    return 1;
}
