/*
 * http.c: libcurl, one pool per Lua state.
 *
 * Every client of a Lua state runs its transfers on the state's pool: one
 * multi handle (whose connection cache holds the keep-alive TLS
 * connections to Nomba, so a thousand clients talking to one host use a
 * handful of connections), a share handle for TLS sessions and DNS, and a
 * few spare easy handles. A client borrows an easy handle for one attempt
 * and gives it back: an idle client holds no handle and no descriptor.
 * The blocking driver (core.perform) and the non-blocking one (core.nb_*)
 * run the same transfer the same way, on libcurl's socket API
 * (CURLMOPT_SOCKETFUNCTION): the blocking one waits with poll(2) on the
 * transfer's own sockets, the non-blocking one hands them to the caller.
 *
 * The pool is made when the module is opened, before any client, and is
 * reference-counted by the clients attached to it, so it outlives every
 * one of them whatever order lua_close finalizes them in. It belongs to
 * the process that made it: after fork() a child abandons the parent's
 * handles (never cleans them up, never uses them) and makes its own; a
 * transfer the parent had in flight is the parent's.
 *
 * Callbacks are plain C that only copy bytes: no Lua is ever called while
 * libcurl runs, so no Lua error can cross it. TLS peer and host
 * verification are always on; nothing here can turn them off, and no
 * verbose or debug trace is ever enabled.
 *
 *   core.perform(client, op, args, timeout)  -> result, nil, status | nil, err, status
 *   core.nb_start(client, op, args, timeout) -> true | nil, err
 *   core.nb_progress(client) -> nil (nothing in flight) | false (running)
 *                               | true, result, nil, status | true, nil, err, status
 *   core.nb_wait(client, seconds)  -> nothing
 *   core.nb_sockets(client)        -> {{fd =, read =, write =}, ...}, ms
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <poll.h>
#include <math.h>
#include <pthread.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <dlfcn.h>
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <malloc.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include "nomba.h"

static const char pool_key = 'p';   /* registry key of the state's pool box */

#define POOL_SPARE 4                /* idle easy handles a pool keeps */

struct http_pool {
    int refs;                       /* the registry's box + every client attached */
    pid_t pid;                      /* the process that made the handles */
    CURLM *multi;                   /* made on first use */
    CURLSH *share;                  /* TLS sessions and DNS */
    CURL *spare[POOL_SPARE];        /* idle easy handles ... */
    unsigned long spare_owner[POOL_SPARE];  /* ... and the endpoint (its id) each was set up for */
    int nspare;
    double timer;                   /* when the multi wants to run again (monotonic), or -1 */
    unsigned long serials;          /* hands out client serials */
    int active;                     /* transfers in the multi */
};

/* The body's bytes as they came (transfer coding and all: libcurl's own
 * decoding is off), through the one framing rule (frame.c), which caps
 * and decodes them into the attempt's answer. The framing begins with the
 * first byte of the final answer's body (or at its end, when none came). */
static void begin_body(client *c)
{
    attempt *a = c->at;
    long status = a->meta.status;       /* the transfer's end: noted by finish */
    if (a->fr.in_body)
        return;
    if (a->xfer.h != NULL)
        curl_easy_getinfo(a->xfer.h, CURLINFO_RESPONSE_CODE, &status);
    (void)frame_begin_noted(&a->fr, &a->meta, status, 0);
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    client *c = (client *)ud;
    size_t n = size * nmemb;
    begin_body(c);
    if (frame_body(&c->at->fr, p, n) != OUT_NONE) {
        c->at->outcome = c->at->fr.outcome;
        return 0;                    /* makes libcurl stop: CURLE_WRITE_ERROR */
    }
    return n;
}

/* Each header line: noted by head.c (the first of each name the
 * interpreter needs), kept for an API call's headers table, and the end of
 * the block (its empty line) remembered: an answer cut before it is
 * truncated, never a success. */
static size_t on_header(char *p, size_t size, size_t nmemb, void *ud)
{
    client *c = (client *)ud;
    size_t n = size * nmemb;
    c->at->header_bytes += n;
    if (c->at->header_bytes > NOMBA_MAX_HEADERS) {
        c->at->outcome = OUT_HEADERS_TOO_LARGE;
        return 0;                    /* makes libcurl stop: CURLE_WRITE_ERROR */
    }
    if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        /* a new response (after 1xx or a retry inside libcurl): start over */
        head_note(&c->at->meta, p, n);
        sbuf_wipe(&c->at->head);
        c->at->head_done = 0;
        return n;
    }
    if ((n == 2 && p[0] == '\r' && p[1] == '\n') || (n == 1 && p[0] == '\n')) {
        c->at->head_done = 1;
        return n;
    }
    if (c->at->method != NULL && !sbuf_add(&c->at->head, p, n))
        return 0;
    head_note(&c->at->meta, p, n);
    return n;
}

/* OpenSSL wipes each record's plaintext once libcurl has read it, so the
 * answers that carry tokens do not linger in its receive buffers. Then
 * the connection keeps its buffers (libcurl asks OpenSSL to release them
 * whenever they are empty): released, the 16 KiB receive buffer would be
 * wiped, freed and made again on every request, for nothing, since no
 * plaintext is left in it; it is wiped when the connection closes. */
static CURLcode on_ssl_ctx(CURL *h, void *ctx, void *ud)
{
    (void)h;
    (void)ud;
    if (NOMBA_SSL_CLEANSE != 0) {
        SSL_CTX_set_options((SSL_CTX *)ctx, NOMBA_SSL_CLEANSE);
        SSL_CTX_clear_mode((SSL_CTX *)ctx, SSL_MODE_RELEASE_BUFFERS);
    }
    return CURLE_OK;
}

/* The raw outcome a libcurl code reports (outcome.c makes it an error);
 * `answered`: some of the answer came. */
static int outcome_of(CURLcode rc, int answered)
{
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        return OUT_TIMEOUT;
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
        return OUT_TLS;
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
        return OUT_CONFIG;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return OUT_RESOLVE;
    case CURLE_COULDNT_CONNECT:
        return OUT_REFUSED;
#if LIBCURL_VERSION_NUM >= 0x074900
    case CURLE_PROXY:
        return OUT_PROXY;
#endif
    case CURLE_SEND_ERROR:
        return OUT_SEND;
    case CURLE_WEIRD_SERVER_REPLY:      /* e.g. a negative Content-Length, a status line that is none */
        return OUT_FRAMING;
    case CURLE_PARTIAL_FILE:
        return OUT_TRUNCATED;
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:            /* HTTP/2: a stream reset, or not closed cleanly */
        return answered ? OUT_TRUNCATED : OUT_RESET;
    default:
        return OUT_FAILED;
    }
}

/* ---- the pool -------------------------------------------------------------- */

/* libcurl tells which sockets a transfer waits on and how; each is noted
 * in the client whose transfer it is (CURLOPT_PRIVATE). No fd_set: no
 * limit at fd 1023. */
static int on_socket(CURL *e, curl_socket_t fd, int what, void *ud, void *sockp)
{
    client *c = NULL;
    int i, slot = -1;
    (void)ud;
    (void)sockp;
    if (curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&c) != CURLE_OK || c == NULL)
        return 0;                   /* libcurl's own (closing a cached connection) */
    for (i = 0; i < c->at->xfer.nsocks; i++)
        if (c->at->xfer.socks[i].fd == (int)fd)
            slot = i;
    if (what == CURL_POLL_REMOVE) {
        if (slot >= 0)
            c->at->xfer.socks[slot] = c->at->xfer.socks[--c->at->xfer.nsocks];
        return 0;
    }
    if (slot < 0) {
        if (c->at->xfer.nsocks == NB_MAX_SOCKS)
            return -1;              /* never: one transfer uses at most two */
        slot = c->at->xfer.nsocks++;
    }
    c->at->xfer.socks[slot].fd = (int)fd;
    c->at->xfer.socks[slot].what = what;
    return 0;
}

static int on_timer(CURLM *m, long ms, void *ud)
{
    http_pool *p = (http_pool *)ud;
    (void)m;
    p->timer = ms < 0 ? -1 : nt_mono() + (double)ms / 1000;
    return 0;
}

/* A child of fork() abandons its parent's handles: the parent still owns
 * them and their connections. */
static void pool_adopt_process(http_pool *p)
{
    if (p->pid == http_me())
        return;
    p->multi = NULL;
    p->share = NULL;
    p->nspare = 0;
    p->timer = -1;
    p->pid = http_me();
}

static void pool_unref(http_pool *p)
{
    int i;
    if (--p->refs > 0)
        return;
    if (p->pid == http_me()) {
        for (i = 0; i < p->nspare; i++)
            curl_easy_cleanup(p->spare[i]);
        if (p->multi != NULL)
            curl_multi_cleanup(p->multi);
        if (p->share != NULL)
            curl_share_cleanup(p->share);
    }
    free(p);
}

static int pool__gc(lua_State *L)
{
    http_pool **box = (http_pool **)lua_touserdata(L, 1);
    if (box != NULL && *box != NULL) {
        pool_unref(*box);
        *box = NULL;
    }
    return 0;
}

/* The multi handle and the share, made on first use. */
static int pool_ready(http_pool *p)
{
    pool_adopt_process(p);
    if (p->multi != NULL)
        return 1;
    if (p->share == NULL && (p->share = curl_share_init()) != NULL) {
        curl_share_setopt(p->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
        curl_share_setopt(p->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    }
    {
        fd_snapshot before;         /* the multi's wake-up socketpair: close-on-exec */
        fds_snapshot(&before);
        p->multi = curl_multi_init();
        fds_cloexec_new(&before);
    }
    if (p->multi == NULL)
        return 0;
    curl_multi_setopt(p->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(p->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(p->multi, CURLMOPT_TIMERDATA, p);
    p->timer = -1;
    return 1;
}

/* Sets up an easy handle for a client: everything that stays the same
 * between its attempts. */
static void configure(CURL *h, http_pool *p, client *c)
{
    nomba_set_protocols(h, c->cfg.ep->allow_http);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(h, CURLOPT_UPLOAD_BUFFERSIZE, 16384L);
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)(c->cfg.ep->connect_timeout * 1000));
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_HTTP_TRANSFER_DECODING, 0L);   /* chunks are frame.c's to read */
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    if (c->cfg.ep->cafile)
        curl_easy_setopt(h, CURLOPT_CAINFO, c->cfg.ep->cafile);
    if (c->cfg.ep->capath)
        curl_easy_setopt(h, CURLOPT_CAPATH, c->cfg.ep->capath);
    if (c->cfg.ep->pinned_pubkey)
        curl_easy_setopt(h, CURLOPT_PINNEDPUBLICKEY, c->cfg.ep->pinned_pubkey);
    /* a proxy only when the proxy option names one: "" makes libcurl
     * ignore http_proxy, https_proxy and ALL_PROXY; "env" opts in to them */
    if (c->cfg.ep->proxy == NULL)
        curl_easy_setopt(h, CURLOPT_PROXY, "");
    else if (strcmp(c->cfg.ep->proxy, "env") != 0)
        curl_easy_setopt(h, CURLOPT_PROXY, c->cfg.ep->proxy);
    curl_easy_setopt(h, CURLOPT_SOCKOPTFUNCTION, fds_sockopt);
    curl_easy_setopt(h, CURLOPT_SSL_CTX_FUNCTION, on_ssl_ctx);
    if (p->share != NULL)
        curl_easy_setopt(h, CURLOPT_SHARE, p->share);
}

/* An easy handle for the client's attempt: a spare one set up for its
 * endpoint already (any client's of the same configuration: a platform's
 * tenants share them), else any spare one set up afresh, else a new one. */
static CURL *borrow(http_pool *p, client *c)
{
    int i, pick = -1;
    CURL *h;
    for (i = 0; i < p->nspare; i++)
        if (p->spare_owner[i] == c->cfg.ep->id)
            pick = i;
    if (pick >= 0) {
        h = p->spare[pick];
        p->spare[pick] = p->spare[--p->nspare];
        p->spare_owner[pick] = p->spare_owner[p->nspare];
        return h;
    }
    if (p->nspare > 0) {
        h = p->spare[--p->nspare];
        curl_easy_reset(h);
    } else if ((h = curl_easy_init()) == NULL) {
        return NULL;
    }
    configure(h, p, c);
    return h;
}

/* Gives the handle back: nothing in it points at the client any more. */
static void give_back(http_pool *p, client *c, CURL *h)
{
    curl_easy_setopt(h, CURLOPT_PRIVATE, NULL);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, NULL);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, NULL);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, NULL);
    if (p->nspare < POOL_SPARE && p->pid == http_me()) {
        p->spare[p->nspare] = h;
        p->spare_owner[p->nspare++] = c->cfg.ep->id;
    } else {
        curl_easy_cleanup(h);
    }
}

/* The method and body: the token operations POST; an API call uses its
 * method, and one that is not idempotent never rides a reused connection
 * (libcurl re-sends a request once when a reused connection turns out
 * closed, which must never happen to a payment). */
static void set_method(CURL *h, client *c)
{
    const char *m = c->at->method;
    int get = m != NULL && (strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0 ||
                            ((strcmp(m, "DELETE") == 0 || strcmp(m, "OPTIONS") == 0) && c->at->body.n == 0));
    if (get) {
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, c->at->body.p ? c->at->body.p : "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)c->at->body.n);
    }
    /* after HTTPGET, which turns it off: a HEAD's answer has no body */
    curl_easy_setopt(h, CURLOPT_NOBODY, (long)(m != NULL && strcmp(m, "HEAD") == 0));
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST,
                     m != NULL && strcmp(m, "GET") != 0 && strcmp(m, "POST") != 0 && strcmp(m, "HEAD") != 0
                         ? m : NULL);
    curl_easy_setopt(h, CURLOPT_FRESH_CONNECT, (long)c->at->fresh_connect);
}

/* Starts the client's attempt (built by proto_build) on the pool's multi
 * handle; 0 when it could not (out of memory). */
static int start(client *c, double timeout)
{
    http_pool *p = c->pool;
    struct curl_slist *hdrs;
    CURL *h;
    int running;
    if (!pool_ready(p) || (h = borrow(p, c)) == NULL)
        return 0;
    hdrs = c->at->lines;                     /* proto.c's, for every operation */
    if (c->at->bearer_hdr.n > 0) {
        /* the bearer's only copy stays in the attempt's buffer */
        c->at->xfer.hdr_bearer.data = c->at->bearer_hdr.p;
        c->at->xfer.hdr_bearer.next = hdrs;
        hdrs = &c->at->xfer.hdr_bearer;
    }
    c->at->xfer.errbuf[0] = '\0';
    frame_free(&c->at->fr);
    frame_init(&c->at->fr, c->at->method, c->at->max_response, &c->at->resp);
    c->at->outcome = OUT_NONE;
    c->at->head_done = 0;
    c->at->header_bytes = 0;
    curl_easy_setopt(h, CURLOPT_PRIVATE, (char *)c);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->at->xfer.errbuf);
    curl_easy_setopt(h, CURLOPT_URL, c->at->url);
    set_method(h, c);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)(timeout * 1000 > 1 ? timeout * 1000 : 1));
    c->at->xfer.h = h;
    c->at->xfer.pid = http_me();
    c->at->xfer.done = 0;
    c->at->xfer.nsocks = 0;
    if (curl_multi_add_handle(p->multi, h) != CURLM_OK) {
        c->at->xfer.h = NULL;
        give_back(p, c, h);
        return 0;
    }
    p->active++;
    (void)curl_multi_socket_action(p->multi, CURL_SOCKET_TIMEOUT, 0, &running);   /* never blocks */
    return 1;
}

/* Notes every transfer of the pool that ended. */
static void collect(http_pool *p)
{
    CURLMsg *m;
    int left = 0;
    while ((m = curl_multi_info_read(p->multi, &left)) != NULL) {
        client *x = NULL;
        if (m->msg != CURLMSG_DONE)
            continue;
        if (curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x) == CURLE_OK && x != NULL &&
            x->at != NULL) {
            x->at->xfer.done = 1;
            x->at->xfer.rc = m->data.result;
        }
    }
}

/* Advances the client's transfer without blocking: its sockets (libcurl
 * checks each one itself), then the pool's due timers. */
static void advance(client *c)
{
    http_pool *p = c->pool;
    int i, n = c->at->xfer.nsocks, running = 0;
    int fds[NB_MAX_SOCKS];
    for (i = 0; i < n; i++)
        fds[i] = c->at->xfer.socks[i].fd;
    for (i = 0; i < n && !c->at->xfer.done; i++)
        (void)curl_multi_socket_action(p->multi, (curl_socket_t)fds[i], 0, &running);
    (void)curl_multi_socket_action(p->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    collect(p);
}

/* Waits up to `seconds` for one of the client's sockets or the pool's
 * timer, then acts on what is ready (and on due timers); never longer. */
static void wait_for(client *c, double seconds)
{
    http_pool *p = c->pool;
    struct pollfd fds[NB_MAX_SOCKS];
    int i, n = c->at->xfer.nsocks, r, running = 0;
    double until = nt_mono() + seconds;
    long ms;
    if (p->timer >= 0 && p->timer < until)
        until = p->timer;
    ms = (long)ceil((until - nt_mono()) * 1000);
    if (ms < 0)
        ms = 0;
    for (i = 0; i < n; i++) {
        int what = c->at->xfer.socks[i].what;
        fds[i].fd = c->at->xfer.socks[i].fd;
        fds[i].events = (short)((what == CURL_POLL_IN || what == CURL_POLL_INOUT ? POLLIN : 0) |
                                (what == CURL_POLL_OUT || what == CURL_POLL_INOUT ? POLLOUT : 0));
        fds[i].revents = 0;
    }
    r = poll(fds, (nfds_t)n, (int)ms);
    for (i = 0; r > 0 && i < n; i++) {
        int mask = (fds[i].revents & POLLIN ? CURL_CSELECT_IN : 0) |
                   (fds[i].revents & POLLOUT ? CURL_CSELECT_OUT : 0) |
                   (fds[i].revents & (POLLERR | POLLHUP | POLLNVAL) ? CURL_CSELECT_ERR : 0);
        if (mask != 0)
            (void)curl_multi_socket_action(p->multi, (curl_socket_t)fds[i].fd, mask, &running);
    }
    if (r <= 0 || (p->timer >= 0 && p->timer <= nt_mono()))
        (void)curl_multi_socket_action(p->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    collect(p);
}

/* Ends the client's transfer: the handle leaves the multi and goes back. */
static void stop(client *c)
{
    http_pool *p = c->pool;
    CURL *h = c->at != NULL ? c->at->xfer.h : NULL;
    if (h == NULL)
        return;
    c->at->xfer.h = NULL;
    if (c->at->xfer.pid == http_me() && p->pid == http_me() && p->multi != NULL) {
        curl_multi_remove_handle(p->multi, h);
        p->active--;
        give_back(p, c, h);
    }
    /* else the parent's (fork): abandoned */
    c->at->xfer.nsocks = 0;
    c->at->xfer.done = 0;
    c->at->xfer.hdr_bearer.data = NULL;
    c->at->xfer.hdr_bearer.next = NULL;
}

/* Whether the transfer in flight was started by another process (this is a
 * child of fork): the child forgets it, and wipes its own copies. */
static int stolen(client *c)
{
    if (c->at == NULL || c->at->xfer.h == NULL || c->at->xfer.pid == http_me())
        return 0;
    stop(c);
    attempt_end(c);
    return 1;
}

/* After a transfer: pushes the result, or nil and the typed error, then
 * the HTTP status (3 values), and ends the attempt. */
static int finish(lua_State *L, int cidx, client *c, int op, CURLcode rc)
{
    long status = 0;
    int r, o = OUT_NONE;
    const char *msg = NULL;
    long sent_bytes = 0;
    if (c->at->xfer.h != NULL) {
        curl_easy_getinfo(c->at->xfer.h, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(c->at->xfer.h, CURLINFO_REQUEST_SIZE, &sent_bytes);
    }
    stop(c);
    c->at->meta.status = status;
    if (rc == CURLE_OK && !c->at->head_done) {
        /* libcurl ends an answer cut inside its header block "OK" */
        o = OUT_TRUNCATED;
        msg = "the answer is truncated (in its headers)";
    } else if (rc == CURLE_OK) {
        begin_body(c);
        if ((o = frame_end(&c->at->fr, 0)) != OUT_NONE)
            msg = c->at->fr.why;
    } else if (c->at->outcome != OUT_NONE) {
        /* our callbacks stopped it: the framing, or the header block's cap */
        o = c->at->outcome;
        msg = c->at->outcome == c->at->fr.outcome ? c->at->fr.why : NULL;
    } else if (rc == CURLE_OUT_OF_MEMORY && c->at->header_bytes > 0) {
        o = OUT_HEADERS_TOO_LARGE;       /* libcurl refuses one header line over 100 KiB as "out of memory" */
    } else {
        o = outcome_of(rc, c->at->header_bytes > 0);
        msg = c->at->xfer.errbuf[0] ? c->at->xfer.errbuf : curl_easy_strerror(rc);
        if (o == OUT_TRUNCATED && c->at->head_done)
            msg = "the answer is truncated (in its body)";
    }
    if (o != OUT_NONE) {
        r = outcome_return(L, c, op, o, msg, msg ? strlen(msg) : 0, status, sent_bytes > 0);
        attempt_end(c);
        return r;
    }
    r = proto_interpret(L, cidx, c, op, &c->at->meta, c->at->head.p ? c->at->head.p : "", c->at->head.n,
                        c->at->resp.p ? c->at->resp.p : "", c->at->resp.n);
    attempt_end(c);
    return r;
}

/* Leaves the pool (cleanup): a transfer in flight is dropped. */
void http_release(client *c)
{
    if (c->pool == NULL)
        return;
    stop(c);
    pool_unref(c->pool);
    c->pool = NULL;
}

/* ---- bindings -------------------------------------------------------------- */

static int closed_error(lua_State *L, int op)
{
    return err_simple(L, "closed", op, "the client is closed");
}

/* Begins, builds and starts the attempt of op (argument 2) on the pool:
 * 0, or the count of what it pushed (nil and an error). */
static int launch(lua_State *L, client *c, int *op)
{
    double timeout;
    int r;
    *op = nomba_checkop(L, 2);
    timeout = luaL_optnumber(L, 4, c->cfg.timeout);
    if (c->closed)
        return closed_error(L, *op);
    lua_settop(L, 4);
    (void)stolen(c);
    if ((r = attempt_begin(L, c, *op)) != 0 || (r = proto_build(L, c, *op, 3)) != 0) {
        if (c->at != NULL && !c->at->in_flight)
            attempt_end(c);
        return r;
    }
    if (!start(c, timeout)) {
        attempt_end(c);
        return luaL_error(L, "nomba.oauth: cannot start a libcurl transfer (out of memory)");
    }
    return 0;
}

static int http_perform(lua_State *L)
{
    client *c = client_check(L, 1);
    int op, r = launch(L, c, &op);
    if (r != 0)
        return r;
    while (!c->at->xfer.done)
        wait_for(c, 1.0);
    return finish(L, 1, c, op, c->at->xfer.rc);
}

static int http_nb_start(lua_State *L)
{
    client *c = client_check(L, 1);
    int op, r = launch(L, c, &op);
    if (r != 0)
        return r;
    c->at->in_flight = op + 1;       /* the attempt stays begun until the transfer ends */
    lua_pushboolean(L, 1);
    return 1;
}

static int http_nb_progress(lua_State *L)
{
    client *c = client_check(L, 1);
    int op, r;
    if (c->closed || c->at == NULL || !c->at->in_flight) {
        lua_pushnil(L);
        return 1;
    }
    op = c->at->in_flight - 1;
    if (stolen(c)) {
        nomba_err e;
        err_init(&e, "transport", op, "the transfer in flight belongs to the parent process (fork)");
        e.retryable = 1;
        lua_pushboolean(L, 1);
        lua_pushnil(L);
        err_push(L, c, &e);
        lua_pushnil(L);
        return 4;
    }
    if (!c->at->xfer.done)
        advance(c);
    if (!c->at->xfer.done) {
        lua_pushboolean(L, 0);
        return 1;
    }
    c->at->in_flight = 0;
    r = finish(L, 1, c, op, c->at->xfer.rc);
    lua_pushboolean(L, 1);
    lua_insert(L, -(r + 1));
    return r + 1;
}

static int http_nb_wait(lua_State *L)
{
    client *c = client_check(L, 1);
    double seconds = luaL_checknumber(L, 2);
    if (c->closed || stolen(c) || c->at == NULL || c->at->xfer.h == NULL || c->at->xfer.done ||
        !(seconds > 0))
        return 0;
    wait_for(c, seconds > NOMBA_MAX_TIMEOUT ? NOMBA_MAX_TIMEOUT : seconds);
    return 0;
}

static int http_nb_sockets(lua_State *L)
{
    client *c = client_check(L, 1);
    long ms = -1;
    int i;
    lua_newtable(L);
    if (!c->closed && !stolen(c) && c->at != NULL && c->at->xfer.h != NULL) {
        for (i = 0; i < c->at->xfer.nsocks; i++) {
            int what = c->at->xfer.socks[i].what;
            lua_createtable(L, 0, 3);
            lua_pushinteger(L, c->at->xfer.socks[i].fd);
            lua_setfield(L, -2, "fd");
            lua_pushboolean(L, what == CURL_POLL_IN || what == CURL_POLL_INOUT);
            lua_setfield(L, -2, "read");
            lua_pushboolean(L, what == CURL_POLL_OUT || what == CURL_POLL_INOUT);
            lua_setfield(L, -2, "write");
            lua_rawseti(L, -2, i + 1);
        }
        if (c->at->xfer.done) {
            ms = 0;
        } else if (c->pool->timer >= 0) {
            double left = (c->pool->timer - nt_mono()) * 1000;
            ms = left <= 0 ? 0 : left >= NOMBA_MAX_TIMEOUT * 1000 ? (long)(NOMBA_MAX_TIMEOUT * 1000)
                                                                  : (long)left + 1;
        }
    }
    lua_pushinteger(L, ms);
    return 2;
}

#ifdef NOMBA_TEST_HOOKS
/* core._test.close_idle(): closes the pool's idle connections (a new multi
 * handle) when no transfer is in flight; whether it did. For specs that
 * need a client's first request on a fresh connection. */
static int http_test_close_idle(lua_State *L)
{
    http_pool **box;
    http_pool *p;
    int i;
    lua_pushlightuserdata(L, (void *)&pool_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    box = (http_pool **)lua_touserdata(L, -1);
    p = box != NULL ? *box : NULL;
    if (p == NULL || p->active > 0 || p->pid != http_me()) {
        lua_pushboolean(L, 0);
        lua_pushinteger(L, p != NULL ? p->active : -1);
        return 2;
    }
    for (i = 0; i < p->nspare; i++)
        curl_easy_cleanup(p->spare[i]);
    p->nspare = 0;
    if (p->multi != NULL)
        curl_multi_cleanup(p->multi);
    p->multi = NULL;
    p->timer = -1;
    lua_pushboolean(L, 1);
    return 1;
}
#endif

/* Attaches a new client to the state's pool (core.new calls it). */
void http_attach(lua_State *L, int cidx, client *c)
{
    http_pool **box;
    lua_pushlightuserdata(L, (void *)&pool_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    box = (http_pool **)lua_touserdata(L, -1);
    if (box == NULL || *box == NULL) {
        luaL_error(L, "nomba.oauth: the libcurl pool is gone");
        return;
    }
    nomba_getuv(L, cidx);
    lua_pushvalue(L, -2);
    lua_rawseti(L, -2, UV_POOL);
    lua_pop(L, 2);
    c->pool = *box;
    c->pool->refs++;
    c->serial = ++c->pool->serials;
}

/* Makes the state's pool (before any client) and adds the bindings to the
 * module table on top of the stack. */
void http_open(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"perform", http_perform},
        {"nb_start", http_nb_start},
        {"nb_progress", http_nb_progress},
        {"nb_wait", http_nb_wait},
        {"nb_sockets", http_nb_sockets},
        {NULL, NULL}
    };
    http_pool *p = (http_pool *)calloc(1, sizeof *p);
    http_pool **box;
    if (p == NULL) {
        luaL_error(L, "nomba.oauth: out of memory");
        return;
    }
    p->refs = 1;
    p->pid = http_me();
    p->timer = -1;
    box = (http_pool **)lua_newuserdata(L, sizeof(http_pool *));
    *box = p;
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, pool__gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_pushlightuserdata(L, (void *)&pool_key);
    lua_insert(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
    luaL_setfuncs(L, funcs, 0);
#ifdef NOMBA_TEST_HOOKS
    nomba_test_hook(L, "close_idle", http_test_close_idle);
#endif
}
