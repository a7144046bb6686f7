/*
 * sbuf.c: growable byte buffers for secrets.
 *
 * Invariant: bytes that leave use are zeroed (OPENSSL_cleanse) before
 * the memory is reused for something shorter, reallocated or freed.
 * Growing never uses realloc, which could leave a copy behind in freed
 * memory: it allocates, copies, wipes and frees the old block. Buffers live
 * in pages marked MADV_DONTDUMP, so no core dump holds a secret.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>
#include <sys/mman.h>
#include <openssl/crypto.h>
#include "nomba.h"

/*
 * Secret memory is kept out of core dumps (MADV_DONTDUMP), which works on
 * whole pages. Small buffers (64 B to 2 KiB, in 12 sizes: 64-byte steps to
 * 512, so a 390-byte JWT takes 448 bytes, then 768, 1 KiB, 1.5 KiB, 2 KiB;
 * a buffer's first size fits what it is made for) are carved from
 * 64 KiB regions of such pages and kept on a free list per size once
 * released (wiped first), so an idle client's secret costs 64 bytes, not a
 * page. Larger buffers take whole pages of their own. The regions are never
 * returned to the system. Under AddressSanitizer every buffer is a plain
 * malloc, so ASan still sees every overflow.
 */
#define SLAB_MAX 2048
#define SLAB_CLASSES 12
#define SLAB_REGION 65536
static const size_t slab_sizes[SLAB_CLASSES] = {64, 128, 192, 256, 320, 384, 448, 512, 768, 1024, 1536, 2048};

/* The size class of a buffer of cap bytes (cap <= SLAB_MAX). */
static int slab_class(size_t cap)
{
    int k = 0;
    while (slab_sizes[k] < cap)
        k++;
    return k;
}

/* The capacity a buffer of at least n bytes gets: its size class, or n
 * itself above the largest. */
static size_t size_for(size_t n)
{
    return n <= SLAB_MAX ? slab_sizes[slab_class(n)] : n;
}

#if defined(__SANITIZE_ADDRESS__)
#define NOMBA_NO_SLAB 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NOMBA_NO_SLAB 1
#endif
#endif

#ifndef NOMBA_NO_SLAB
/* Cached on first use; threads that race to fill it store the same value. */
static size_t page_size(void)
{
    static size_t cached;
    size_t pg = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (pg == 0) {
        long v = sysconf(_SC_PAGESIZE);
        pg = v > 0 ? (size_t)v : 4096;
        __atomic_store_n(&cached, pg, __ATOMIC_RELAXED);
    }
    return pg;
}

static pthread_mutex_t slab_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t slab_once = PTHREAD_ONCE_INIT;
static void *slab_free[SLAB_CLASSES];
static char *slab_next;
static size_t slab_left;

/* fork() from another thread must not leave the lock held in the child */
static void slab_prepare(void) { pthread_mutex_lock(&slab_lock); }
static void slab_release_lock(void) { pthread_mutex_unlock(&slab_lock); }
static void slab_init(void) { (void)pthread_atfork(slab_prepare, slab_release_lock, slab_release_lock); }

static char *slab_get(size_t cap)
{
    int k = slab_class(cap);
    char *p = NULL;
    pthread_once(&slab_once, slab_init);
    pthread_mutex_lock(&slab_lock);
    if (slab_free[k] != NULL) {
        void *next;
        p = (char *)slab_free[k];
        memcpy(&next, p, sizeof next);
        slab_free[k] = next;
        memset(p, 0, sizeof next);
    } else {
        if (slab_left < cap) {
            void *r = mmap(NULL, SLAB_REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (r != MAP_FAILED) {
#ifdef MADV_DONTDUMP
                (void)madvise(r, SLAB_REGION, MADV_DONTDUMP);
#endif
                slab_next = (char *)r;
                slab_left = SLAB_REGION;
            }
        }
        if (slab_left >= cap) {
            p = slab_next;
            slab_next += cap;
            slab_left -= cap;
        }
    }
    pthread_mutex_unlock(&slab_lock);
    return p;
}

static void slab_put(char *p, size_t cap)
{
    int k = slab_class(cap);
    void *next;
    pthread_mutex_lock(&slab_lock);
    next = slab_free[k];
    memcpy(p, &next, sizeof next);
    slab_free[k] = p;
    pthread_mutex_unlock(&slab_lock);
}
#endif

static char *secret_alloc(size_t cap)
{
#ifdef NOMBA_NO_SLAB
    return (char *)malloc(cap);
#else
    void *p = NULL;
    if (cap <= SLAB_MAX)
        return slab_get(cap);
    if (posix_memalign(&p, page_size(), cap) != 0)
        return NULL;
#ifdef MADV_DONTDUMP
    (void)madvise(p, cap, MADV_DONTDUMP);
#endif
    return (char *)p;
#endif
}

static void secret_release(char *p, size_t cap)
{
    OPENSSL_cleanse(p, cap);
#ifdef NOMBA_NO_SLAB
    free(p);
#else
    if (cap <= SLAB_MAX) {
        slab_put(p, cap);
        return;
    }
#ifdef MADV_DODUMP
    (void)madvise(p, cap, MADV_DODUMP);   /* the heap reuses these pages for anything */
#endif
    free(p);
#endif
}

int sbuf_reserve(sbuf *b, size_t extra)
{
    size_t need, cap;
    char *p;
    if (extra > ((size_t)-1) / 2 - b->n)
        return 0;
    need = b->n + extra + 1;
    if (need <= b->cap)
        return 1;
    cap = b->cap * 2;                   /* growing doubles; a first size fits */
    cap = size_for(cap > need ? cap : need);
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
