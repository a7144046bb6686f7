/*
 * curlmem.c: libcurl's process-wide setup, once: its memory wiped when it
 * is freed (its request buffers hold the client secret and bearer headers,
 * its receive buffer the answers with tokens), the module pinned in memory
 * (libcurl keeps pointers to these functions for the life of the
 * process), and this process's id, kept by a fork handler (http_me: every
 * transfer asks whether its handles are this process's).
 */
#include <string.h>
#include <unistd.h>
#include <pthread.h>
#include <dlfcn.h>
#include <stdlib.h>
#include <malloc.h>
#include <openssl/crypto.h>
#include <curl/curl.h>
#include "nomba.h"

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

/* This process's id, kept by a fork handler: getpid() is a system call,
 * and every transfer asks several times whether its handles are ours. */
static pid_t self_pid;

static void note_child(void)
{
    __atomic_store_n(&self_pid, getpid(), __ATOMIC_RELAXED);
}

pid_t http_me(void)
{
    pid_t pid = __atomic_load_n(&self_pid, __ATOMIC_RELAXED);
    return pid != 0 ? pid : getpid();
}
/* libcurl's memory, wiped when it is freed: its request buffers (which
 * hold the client secret and bearer headers) and its receive buffer (the
 * answers with tokens) leave nothing behind. This takes effect only when
 * this module initialises libcurl first in the process; a host that
 * called curl_global_init before keeps libcurl's plain allocator
 * (curl_wipes says which happened). The flag is written by every thread
 * that allocates through libcurl, hence the atomic stores. */
static int curl_wipes;

static void mark_wiping(void)
{
    __atomic_store_n(&curl_wipes, 1, __ATOMIC_RELAXED);
}

/* glibc's explicit_bzero is its vectorised memset that the compiler may
 * not drop; OpenSSL's cleanse stores a word at a time. libcurl frees its
 * 16 KiB receive buffer after every transfer, so this is the hot one. */
static void wipe(void *p, size_t n)
{
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 25))
    explicit_bzero(p, n);
#else
    OPENSSL_cleanse(p, n);
#endif
}

static void wiping_free(void *p)
{
    if (p != NULL) {
        wipe(p, malloc_usable_size(p));
        free(p);
    }
}

static void *wiping_malloc(size_t n)
{
    mark_wiping();
    return malloc(n);
}

static void *wiping_realloc(void *p, size_t n)
{
    size_t old;
    void *q;
    if (p == NULL)
        return wiping_malloc(n);
    old = malloc_usable_size(p);
    if (n != 0 && n <= old)
        return p;                   /* it fits: nothing moves, the free wipes it all */
    q = malloc(n ? n : 1);
    if (q == NULL)
        return NULL;
    memcpy(q, p, old < n ? old : n);
    wiping_free(p);
    return q;
}

static char *wiping_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = wiping_malloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

static void *wiping_calloc(size_t a, size_t b)
{
    mark_wiping();
    return calloc(a, b);
}

/* libcurl keeps pointers to the functions above for the life of the
 * process, so this module must never be unloaded (lua_close dlcloses C
 * modules): it pins itself with RTLD_NODELETE before handing them over. */
static void curl_init_once(void)
{
    Dl_info self;
    note_child();
    (void)pthread_atfork(NULL, NULL, note_child);
    if (dladdr((void *)curl_init_once, &self) != 0 && self.dli_fname != NULL)
        (void)dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
    curl_global_init_mem(CURL_GLOBAL_DEFAULT, wiping_malloc, wiping_free, wiping_realloc,
                         wiping_strdup, wiping_calloc);
}

int http_curl_wipes(void)
{
    return __atomic_load_n(&curl_wipes, __ATOMIC_RELAXED);
}

void http_global_init(void)
{
    pthread_once(&curl_once, curl_init_once);
}

