/*
 * sbuf.c: growable byte buffers for secrets.
 *
 * Invariant: bytes that leave use are zeroed (OPENSSL_cleanse) before
 * the memory is reused for something shorter, reallocated or freed.
 * Growing never uses realloc, which could leave a copy behind in freed
 * memory: it allocates, copies, wipes and frees the old block.
 */
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>
#include "nomba.h"

int sbuf_reserve(sbuf *b, size_t extra)
{
    size_t need, cap;
    char *p;
    if (extra > ((size_t)-1) / 2 - b->n)
        return 0;
    need = b->n + extra + 1;
    if (need <= b->cap)
        return 1;
    cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    p = malloc(cap);
    if (p == NULL)
        return 0;
    if (b->p != NULL) {
        memcpy(p, b->p, b->n);
        OPENSSL_cleanse(b->p, b->cap);
        free(b->p);
    }
    b->p = p;
    b->cap = cap;
    b->p[b->n] = '\0';
    return 1;
}

int sbuf_add(sbuf *b, const char *s, size_t n)
{
    if (!sbuf_reserve(b, n))
        return 0;
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return 1;
}

int sbuf_adds(sbuf *b, const char *s)
{
    return sbuf_add(b, s, strlen(s));
}

/* Appends s as the inside of a JSON string (RFC 8259 section 7): quote,
 * backslash and control characters escaped, every other byte as is. */
int sbuf_add_json_string(sbuf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t i;
    if (!sbuf_reserve(b, n + 2))
        return 0;
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char esc[6];
        size_t m = 0;
        if (ch == '"' || ch == '\\') {
            esc[m++] = '\\';
            esc[m++] = (char)ch;
        } else if (ch < 0x20) {
            esc[m++] = '\\';
            esc[m++] = 'u';
            esc[m++] = '0';
            esc[m++] = '0';
            esc[m++] = hex[ch >> 4];
            esc[m++] = hex[ch & 15];
        } else {
            esc[m++] = (char)ch;
        }
        if (!sbuf_add(b, esc, m))
            return 0;
    }
    return 1;
}

void sbuf_wipe(sbuf *b)
{
    if (b->p != NULL)
        OPENSSL_cleanse(b->p, b->cap);
    b->n = 0;
}

void sbuf_free(sbuf *b)
{
    sbuf_wipe(b);
    free(b->p);
    b->p = NULL;
    b->cap = 0;
}

char *nomba_strndup(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d != NULL) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

int sbuf_set(sbuf *b, const char *s, size_t n)
{
    sbuf_wipe(b);
    return sbuf_add(b, s, n);
}
