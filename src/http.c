/*
 * http.c: one HTTP attempt over the client's own libcurl easy handle.
 *
 * The handle is made lazily and reused, so consecutive requests ride one
 * keep-alive TLS connection. It belongs to the process that made it: after
 * fork() a child abandons the inherited handle (never cleans it up, never
 * uses it: the parent still owns the connection) and makes its own.
 *
 * All clients of one Lua state share one libcurl share handle for TLS
 * sessions and DNS, so a new client's first request resumes a session
 * instead of a full handshake (libcurl only resumes a session between
 * matching TLS settings: CA, pin, verification). The share is made when
 * the module is opened, before any client, so it is finalized after all of
 * them; it is cleaned up only when no handle is attached.
 *
 * Callbacks are plain C that only copy bytes: no Lua is ever called while
 * libcurl runs, so no Lua error can cross it. TLS peer and host
 * verification are always on; nothing here can turn them off, and no
 * verbose or debug trace is ever enabled.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <pthread.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <dlfcn.h>
#include <dirent.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <malloc.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include "nomba.h"

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static const char share_key = 's';   /* registry key of the share box */

struct share_box {
    CURLSH *sh;
    int attached;           /* easy handles of this process using it */
};

static int share__gc(lua_State *L)
{
    share_box *b = (share_box *)lua_touserdata(L, 1);
    if (b != NULL && b->sh != NULL && b->attached == 0) {
        curl_share_cleanup(b->sh);
        b->sh = NULL;
    }
    return 0;
}

void http_open(lua_State *L)
{
    share_box *b = (share_box *)lua_newuserdata(L, sizeof *b);
    b->attached = 0;
    b->sh = curl_share_init();
    if (b->sh != NULL) {
        curl_share_setopt(b->sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
        curl_share_setopt(b->sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    }
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, share__gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_pushlightuserdata(L, (void *)&share_key);
    lua_insert(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
}

/* Attaches the state's share to a new handle; the client's user value keeps
 * the share alive as long as the client. */
static void attach_share(lua_State *L, int cidx, client *c, CURL *h)
{
    share_box *b;
    lua_pushlightuserdata(L, (void *)&share_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    b = (share_box *)lua_touserdata(L, -1);
    if (b == NULL || b->sh == NULL) {
        lua_pop(L, 1);
        return;
    }
    nomba_getuv(L, cidx);
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "_share");
    lua_pop(L, 2);
    curl_easy_setopt(h, CURLOPT_SHARE, b->sh);
    b->attached++;
    c->share = b;
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

static void wiping_free(void *p)
{
    if (p != NULL) {
        OPENSSL_cleanse(p, malloc_usable_size(p));
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

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    client *c = (client *)ud;
    size_t n = size * nmemb;
    if (c->resp.n + n > c->max_response) {
        c->overflow = OVERFLOW_BODY;
        return 0;                    /* makes libcurl stop: CURLE_WRITE_ERROR */
    }
    if (!sbuf_add(&c->resp, p, n))
        return 0;
    return n;
}

/* Every socket libcurl opens is close-on-exec: a child that execs never
 * inherits a connection that carried secrets. */
static int on_sockopt(void *ud, curl_socket_t fd, curlsocktype purpose)
{
    int flags = fcntl(fd, F_GETFD);
    (void)ud;
    (void)purpose;
    if (flags >= 0)
        (void)fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
    return CURL_SOCKOPT_OK;
}

/* libcurl's multi handles (the one curl_easy_perform makes inside the easy
 * handle, and ours) open a socketpair to wake themselves up, with no way to
 * ask for close-on-exec. It is found the only way there is: the AF_UNIX
 * stream sockets without FD_CLOEXEC that were not open before the handle
 * made them. */
typedef struct {
    unsigned char *open;    /* a bit per fd open at the snapshot */
    size_t n;               /* bytes of open */
} fd_snapshot;

static int each_fd(void (*f)(int fd, void *ud), void *ud)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    if (d == NULL)
        return 0;
    while ((e = readdir(d)) != NULL) {
        char *end;
        long fd = strtol(e->d_name, &end, 10);
        if (*end == '\0' && end != e->d_name && fd >= 0 && fd != dirfd(d))
            f((int)fd, ud);
    }
    closedir(d);
    return 1;
}

static void note_fd(int fd, void *ud)
{
    fd_snapshot *s = (fd_snapshot *)ud;
    size_t byte = (size_t)fd / 8;
    if (byte >= s->n) {
        size_t n = byte * 2 + 64;
        unsigned char *p = realloc(s->open, n);
        if (p == NULL)
            return;
        memset(p + s->n, 0, n - s->n);
        s->open = p;
        s->n = n;
    }
    s->open[byte] |= (unsigned char)(1u << (fd % 8));
}

static void mark_new(int fd, void *ud)
{
    const fd_snapshot *s = (const fd_snapshot *)ud;
    size_t byte = (size_t)fd / 8;
    int flags, domain = 0, type = 0;
    socklen_t len = sizeof domain;
    if (byte < s->n && (s->open[byte] & (1u << (fd % 8))))
        return;
    flags = fcntl(fd, F_GETFD);
    if (flags < 0 || (flags & FD_CLOEXEC))
        return;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0 || domain != AF_UNIX)
        return;
    len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM)
        return;
    (void)fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

static void snapshot_fds(fd_snapshot *s)
{
    s->open = NULL;
    s->n = 0;
    (void)each_fd(note_fd, s);
}

static void cloexec_new_fds(fd_snapshot *s)
{
    (void)each_fd(mark_new, s);
    free(s->open);
    s->open = NULL;
}

/* OpenSSL wipes each record's plaintext once libcurl has read it, so the
 * answers that carry tokens do not linger in its receive buffers. */
static CURLcode on_ssl_ctx(CURL *h, void *ctx, void *ud)
{
    (void)h;
    (void)ud;
#ifdef SSL_OP_CLEANSE_PLAINTEXT
    SSL_CTX_set_options((SSL_CTX *)ctx, SSL_OP_CLEANSE_PLAINTEXT);
#else
    (void)ctx;
#endif
    return CURLE_OK;
}

/* Copies the value of "Name: value\r\n" into dst when the name matches. */
static void take_header(const char *p, size_t n, const char *name, char *dst, size_t cap)
{
    size_t k = strlen(name), i;
    if (n <= k || p[k] != ':' || strncasecmp(p, name, k) != 0)
        return;
    p += k + 1;
    n -= k + 1;
    while (n > 0 && (*p == ' ' || *p == '\t'))
        p++, n--;
    while (n > 0 && (p[n - 1] == '\r' || p[n - 1] == '\n' || p[n - 1] == ' '))
        n--;
    if (n >= cap)
        n = cap - 1;
    for (i = 0; i < n; i++)
        dst[i] = p[i];
    dst[n] = '\0';
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *ud)
{
    client *c = (client *)ud;
    size_t n = size * nmemb;
    nomba_answer_meta *m = &c->meta;
    c->header_bytes += n;
    if (c->header_bytes > NOMBA_MAX_HEADERS) {
        c->overflow = OVERFLOW_HEADERS;
        return 0;                    /* makes libcurl stop: CURLE_WRITE_ERROR */
    }
    if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        /* a new response (after 1xx or a retry inside libcurl): start over */
        m->date[0] = m->retry_after[0] = m->content_type[0] = '\0';
        return n;
    }
    take_header(p, n, "date", m->date, sizeof m->date);
    take_header(p, n, "retry-after", m->retry_after, sizeof m->retry_after);
    take_header(p, n, "content-type", m->content_type, sizeof m->content_type);
    return n;
}

void http_release(client *c)
{
    if (c->curl != NULL && c->curl_pid == getpid()) {
        http_abort(c);
        if (c->multi != NULL)
            curl_multi_cleanup(c->multi);
        curl_easy_cleanup(c->curl);
        curl_slist_free_all(c->base_headers);
        if (c->share != NULL)
            c->share->attached--;
    }
    /* else inherited across fork: abandoned, the parent owns it (and the
     * share stays marked in use, so this process never cleans it up) */
    c->in_flight = 0;
    c->curl = NULL;
    c->multi = NULL;
    c->base_headers = NULL;
    c->share = NULL;
}

static struct curl_slist *add_header(struct curl_slist *l, const char *h, int *ok)
{
    struct curl_slist *n = curl_slist_append(l, h);
    if (n == NULL) {
        *ok = 0;
        return l;
    }
    return n;
}

/* Makes the handle and sets everything that stays the same per client. */
static CURL *handle_of(lua_State *L, int cidx, client *c)
{
    CURL *h;
    struct curl_slist *hdrs = NULL;
    char acct[sizeof "accountId: " + NOMBA_MAX_ACCOUNT_ID];
    int ok = 1;

    if (c->curl != NULL && c->curl_pid != getpid())
        http_release(c);             /* forked: abandon the parent's handle */
    if (c->curl != NULL)
        return c->curl;
    http_global_init();
    h = curl_easy_init();
    if (h == NULL)
        return NULL;
    (void)snprintf(acct, sizeof acct, "accountId: %s", c->account_id);
    hdrs = add_header(hdrs, "Content-Type: application/json", &ok);
    hdrs = add_header(hdrs, "Accept: application/json", &ok);
    hdrs = add_header(hdrs, acct, &ok);
    hdrs = add_header(hdrs, "Expect:", &ok);
    if (!ok) {
        curl_slist_free_all(hdrs);
        curl_easy_cleanup(h);
        return NULL;
    }
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, c->allow_http ? "http,https" : "https");
#else
    curl_easy_setopt(h, CURLOPT_PROTOCOLS,
                     (long)(c->allow_http ? CURLPROTO_HTTP | CURLPROTO_HTTPS : CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, c->user_agent);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)(c->connect_timeout * 1000));
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->errbuf);
    if (c->cafile)
        curl_easy_setopt(h, CURLOPT_CAINFO, c->cafile);
    if (c->capath)
        curl_easy_setopt(h, CURLOPT_CAPATH, c->capath);
    if (c->pinned_pubkey)
        curl_easy_setopt(h, CURLOPT_PINNEDPUBLICKEY, c->pinned_pubkey);
    /* a proxy only when the proxy option names one: "" makes libcurl
     * ignore http_proxy, https_proxy and ALL_PROXY; "env" opts in to them */
    if (c->proxy == NULL)
        curl_easy_setopt(h, CURLOPT_PROXY, "");
    else if (strcmp(c->proxy, "env") != 0)
        curl_easy_setopt(h, CURLOPT_PROXY, c->proxy);
    curl_easy_setopt(h, CURLOPT_SOCKOPTFUNCTION, on_sockopt);
    curl_easy_setopt(h, CURLOPT_SSL_CTX_FUNCTION, on_ssl_ctx);
    c->curl = h;
    c->performed = 0;
    c->url_op = 0;
    c->curl_pid = getpid();
    c->base_headers = hdrs;
    attach_share(L, cidx, c, h);
    return h;
}

/* What kind of failure a libcurl code is. */
static const char *kind_of(CURLcode rc, int *retryable)
{
    *retryable = 0;
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        *retryable = 1;
        return "timeout";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_USE_SSL_FAILED:
        return "tls";
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
        return "config";
    case CURLE_PARTIAL_FILE:
        *retryable = 1;
        return "protocol";
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        *retryable = 1;
        return "transport";
    default:
        return "transport";
    }
}

/* Points the handle at one request. The bearer header, when there is one,
 * is a list node in the client in front of the shared headers, so its only
 * copy stays in bearer_hdr, wiped after the attempt. */
static CURL *setup(lua_State *L, int cidx, client *c, int op, nomba_request *rq, double timeout)
{
    CURL *h = handle_of(L, cidx, c);
    struct curl_slist *hdrs;
    if (h == NULL)
        return NULL;
    hdrs = c->base_headers;
    if (rq->bearer) {
        c->bearer_node.data = c->bearer_hdr.p;
        c->bearer_node.next = hdrs;
        hdrs = &c->bearer_node;
    }
    memset(&c->meta, 0, sizeof c->meta);
    sbuf_wipe(&c->resp);
    c->overflow = 0;
    c->header_bytes = 0;
    c->errbuf[0] = '\0';
    if (c->url_op != op + 1) {          /* the URL of an op never changes */
        curl_easy_setopt(h, CURLOPT_URL, rq->url);
        c->url_op = op + 1;
    }
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, c->reqbody.p);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)c->reqbody.n);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)(timeout * 1000 > 1 ? timeout * 1000 : 1));
    return h;
}

/* After a transfer: wipes what held secrets and pushes the result, or
 * nil and the typed error, then the HTTP status (3 values). */
static int finish(lua_State *L, int cidx, client *c, int op, CURL *h, CURLcode rc)
{
    long status = 0;
    nomba_err e;
    int r;
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, c->base_headers);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, NULL);
    proto_request_done(c);
    c->bearer_node.data = NULL;
    c->bearer_node.next = NULL;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    c->meta.status = status;

    if (rc != CURLE_OK) {
        const char *msg = c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc);
        int retryable;
        const char *kind = kind_of(rc, &retryable);
        if (c->overflow == OVERFLOW_BODY) {
            kind = "protocol";
            retryable = 0;
            msg = "the answer exceeds max_response_bytes";
        } else if (c->overflow == OVERFLOW_HEADERS ||
                   (rc == CURLE_OUT_OF_MEMORY && c->header_bytes > 0)) {
            /* libcurl refuses one header line over 100 KiB as "out of memory" */
            kind = "protocol";
            retryable = 0;
            msg = "the answer's headers are too large";
        }
        sbuf_wipe(&c->resp);
        proto_forget_secrets(c);
        err_init(&e, kind, op, msg);
        e.retryable = retryable;
        e.status = status > 0 ? status : 0;
        lua_pushnil(L);
        err_push(L, c, &e);
        if (status > 0)
            lua_pushinteger(L, (lua_Integer)status);
        else
            lua_pushnil(L);
        return 3;
    }
    r = proto_interpret(L, cidx, c, op, &c->meta, c->resp.p ? c->resp.p : "", c->resp.n);
    sbuf_wipe(&c->resp);
    proto_forget_secrets(c);
    return r;
}

int http_perform(lua_State *L, int cidx, client *c, int op, nomba_request *rq, double timeout)
{
    CURL *h = setup(L, cidx, c, op, rq, timeout);
    CURLcode rc;
    if (h == NULL)
        return luaL_error(L, "nomba.oauth: cannot create a libcurl handle (out of memory)");
    if (!c->performed) {            /* the first perform makes the handle's own multi */
        fd_snapshot before;
        snapshot_fds(&before);
        rc = curl_easy_perform(h);
        cloexec_new_fds(&before);
        c->performed = 1;
    } else {
        rc = curl_easy_perform(h);
    }
    return finish(L, cidx, c, op, h, rc);
}

/* ---- the non-blocking mode (curl_multi, socket API) ---------------------- */

/* libcurl tells which sockets the transfer waits on and how (no fd_set, so
 * no limit at fd 1023); sockets() lists them for an event loop. */
static int on_socket(CURL *e, curl_socket_t fd, int what, void *ud, void *sockp)
{
    client *c = (client *)ud;
    int i, slot = -1;
    (void)e;
    (void)sockp;
    for (i = 0; i < c->nb_nsocks; i++)
        if (c->nb_socks[i].fd == (int)fd)
            slot = i;
    if (what == CURL_POLL_REMOVE) {
        if (slot >= 0)
            c->nb_socks[slot] = c->nb_socks[--c->nb_nsocks];
        return 0;
    }
    if (slot < 0) {
        if (c->nb_nsocks == NB_MAX_SOCKS)
            return -1;              /* never: one transfer uses at most two */
        slot = c->nb_nsocks++;
    }
    c->nb_socks[slot].fd = (int)fd;
    c->nb_socks[slot].what = what;
    return 0;
}

static int on_timer(CURLM *m, long ms, void *ud)
{
    client *c = (client *)ud;
    (void)m;
    c->nb_timer = ms < 0 ? -1 : nt_mono() + (double)ms / 1000;
    return 0;
}

/* Whether the transfer in flight was started by another process (this is a
 * child of fork): then it is the parent's, and this process must not touch
 * its handles. The child forgets it; its own copies of the buffers are
 * wiped. */
static int stolen(client *c)
{
    if (!c->in_flight || c->curl_pid == getpid())
        return 0;
    http_release(c);
    c->bearer_node.data = NULL;
    c->bearer_node.next = NULL;
    proto_request_done(c);
    sbuf_wipe(&c->resp);
    c->nb_nsocks = 0;
    return 1;
}

static CURLM *multi_of(client *c)
{
    if (c->multi == NULL) {
        fd_snapshot before;
        snapshot_fds(&before);
        c->multi = curl_multi_init();
        cloexec_new_fds(&before);
        if (c->multi == NULL)
            return NULL;
        curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
        curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
        curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_timer);
        curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    }
    return c->multi;
}

/* Starts a transfer without waiting; 0, or pushes nil and an error (2). */
int http_start(lua_State *L, int cidx, client *c, int op, nomba_request *rq, double timeout)
{
    CURL *h = setup(L, cidx, c, op, rq, timeout);
    int running = 0;
    if (h == NULL)
        return luaL_error(L, "nomba.oauth: cannot create a libcurl handle (out of memory)");
    if (multi_of(c) == NULL)
        return luaL_error(L, "nomba.oauth: cannot create a libcurl multi handle");
    c->nb_nsocks = 0;
    c->nb_timer = -1;
    if (curl_multi_add_handle(c->multi, h) != CURLM_OK)
        return luaL_error(L, "nomba.oauth: curl_multi_add_handle failed");
    c->in_flight = op + 1;
    (void)curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);   /* never blocks */
    return 0;
}

/* Advances the transfer without blocking: pushes false while it runs, or
 * true and its three results once it is done. */
int http_progress(lua_State *L, int cidx, client *c)
{
    int running = 0, left = 0, op, r, i, n;
    int fds[NB_MAX_SOCKS];
    CURLMsg *m;
    CURLcode rc = CURLE_OK;
    int done = 0;
    if (c->in_flight && c->curl_pid != getpid()) {
        nomba_err e;
        op = c->in_flight - 1;
        (void)stolen(c);
        err_init(&e, "transport", op, "the transfer in flight belongs to the parent process (fork)");
        e.retryable = 1;
        lua_pushboolean(L, 1);
        lua_pushnil(L);
        err_push(L, c, &e);
        lua_pushnil(L);
        return 4;
    }
    if (!c->in_flight || c->multi == NULL) {
        lua_pushnil(L);
        return 1;
    }
    /* libcurl checks each socket itself (mask 0), then runs due timers */
    n = c->nb_nsocks;
    for (i = 0; i < n; i++)
        fds[i] = c->nb_socks[i].fd;
    for (i = 0; i < n; i++)
        (void)curl_multi_socket_action(c->multi, (curl_socket_t)fds[i], 0, &running);
    (void)curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    while ((m = curl_multi_info_read(c->multi, &left)) != NULL) {
        if (m->msg == CURLMSG_DONE && m->easy_handle == c->curl) {
            rc = m->data.result;
            done = 1;
        }
    }
    if (!done) {
        lua_pushboolean(L, 0);
        return 1;
    }
    curl_multi_remove_handle(c->multi, c->curl);
    op = c->in_flight - 1;
    c->in_flight = 0;
    c->nb_nsocks = 0;
    r = finish(L, cidx, c, op, c->curl, rc);    /* its results are the top r values */
    lua_pushboolean(L, 1);
    lua_insert(L, -(r + 1));
    return r + 1;
}

/* Blocks up to `seconds` until the transfer's sockets have something. */
void http_wait(client *c, double seconds)
{
    int n = 0;
    if (stolen(c) || !c->in_flight || c->multi == NULL || !(seconds > 0))
        return;
    if (seconds > NOMBA_MAX_TIMEOUT)
        seconds = NOMBA_MAX_TIMEOUT;
    (void)curl_multi_poll(c->multi, NULL, 0, (int)(seconds * 1000), &n);
}

/* Drops a transfer in flight and wipes what it held. */
void http_abort(client *c)
{
    if (!c->in_flight)
        return;
    if (c->multi != NULL && c->curl != NULL && c->curl_pid == getpid()) {
        curl_multi_remove_handle(c->multi, c->curl);
        curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, c->base_headers);
        curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, NULL);
    }
    c->in_flight = 0;
    c->nb_nsocks = 0;
    c->bearer_node.data = NULL;
    c->bearer_node.next = NULL;
    proto_request_done(c);
    sbuf_wipe(&c->resp);
    proto_forget_secrets(c);
}

/* The sockets an event loop should watch: {{fd =, read =, write =}, ...},
 * and the milliseconds until step() is due anyway (-1: no timer). */
int http_sockets(lua_State *L, client *c)
{
    int i;
    long ms = -1;
    lua_newtable(L);
    if (!stolen(c) && c->in_flight) {
        for (i = 0; i < c->nb_nsocks; i++) {
            int what = c->nb_socks[i].what;
            lua_createtable(L, 0, 3);
            lua_pushinteger(L, c->nb_socks[i].fd);
            lua_setfield(L, -2, "fd");
            lua_pushboolean(L, what == CURL_POLL_IN || what == CURL_POLL_INOUT);
            lua_setfield(L, -2, "read");
            lua_pushboolean(L, what == CURL_POLL_OUT || what == CURL_POLL_INOUT);
            lua_setfield(L, -2, "write");
            lua_rawseti(L, -2, i + 1);
        }
        if (c->nb_timer >= 0) {
            double left = (c->nb_timer - nt_mono()) * 1000;
            ms = left <= 0 ? 0 : left >= NOMBA_MAX_TIMEOUT * 1000 ? (long)(NOMBA_MAX_TIMEOUT * 1000)
                                                                  : (long)left + 1;
        }
    }
    lua_pushinteger(L, ms);
    return 2;
}
