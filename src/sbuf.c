/*
 * sbuf.c: growable byte buffers for secrets.
 *
 * Invariant: bytes that leave use are zeroed (OPENSSL_cleanse) before
 * the memory is reused for something shorter, reallocated or freed.
 * Growing never uses realloc, which could leave a copy behind in freed
 * memory: it allocates, copies, wipes and frees the old block. Buffers are
 * whole pages marked MADV_DONTDUMP, so no core dump holds a secret.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <openssl/crypto.h>
#include "nomba.h"

static size_t page_size(void)
{
    static size_t pg;
    if (pg == 0) {
        long v = sysconf(_SC_PAGESIZE);
        pg = v > 0 ? (size_t)v : 4096;
    }
    return pg;
}

/* Whole pages, kept out of core dumps (MADV_DONTDUMP): a secret never
 * shares a page with memory a dump would include. */
static char *secret_alloc(size_t cap)
{
    void *p = NULL;
    if (posix_memalign(&p, page_size(), cap) != 0)
        return NULL;
#ifdef MADV_DONTDUMP
    (void)madvise(p, cap, MADV_DONTDUMP);
#endif
    return (char *)p;
}

static void secret_release(char *p, size_t cap)
{
    OPENSSL_cleanse(p, cap);
#ifdef MADV_DODUMP
    (void)madvise(p, cap, MADV_DODUMP);   /* the heap reuses these pages for anything */
#endif
    free(p);
}

int sbuf_reserve(sbuf *b, size_t extra)
{
    size_t need, cap, pg = page_size();
    char *p;
    if (extra > ((size_t)-1) / 2 - b->n)
        return 0;
    need = b->n + extra + 1;
    if (need <= b->cap)
        return 1;
    cap = b->cap ? b->cap : pg;
    while (cap < need)
        cap *= 2;
    p = secret_alloc(cap);
    if (p == NULL)
        return 0;
    if (b->p != NULL) {
        memcpy(p, b->p, b->n);
        secret_release(b->p, b->cap);
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
    if (b->p != NULL)
        secret_release(b->p, b->cap);
    b->p = NULL;
    b->cap = 0;
}

int nomba_hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
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
