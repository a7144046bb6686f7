/*
 * nomba.h: what the C files of nomba.oauth.core share.
 *
 * Everything declared here has hidden visibility; the only exported
 * symbol of the module is luaopen_nomba_oauth_core. src/README.md lists
 * every core.* entry with its arguments and its one return shape.
 *
 * The files, one concept each, and what each may call (never a file
 * above it in this list, so there are no circles):
 *   sbuf.c codec.c timeparse.c json.c url.c head.c err.c   leaves
 *   outcome.c   a failed attempt's error: one table           -> err
 *   frame.c     where an answer ends: one framing rule         -> head, outcome
 *   endpoint.c  where requests go, shared by clients alike    -> leaves
 *   token.c     the kept token: keep, drop, the hot path      -> leaves
 *   seal.c      the token sealed for a shared store           -> token
 *   attempt.c   an attempt's buffers                           -> leaves
 *   answer.c    an API answer as Lua sees it (lazy json)       -> leaves
 *   build.c     every request, built once                      -> attempt
 *   interpret.c every answer, read once                        -> token, answer
 *   proto.c     the contract's Lua side (request/answer/abandon) -> build, interpret, frame, outcome
 *   curlmem.c   libcurl's process-wide setup: wiped memory    -> leaves
 *   fds.c       descriptor hygiene: close-on-exec             -> leaves
 *   http.c      libcurl, one pool per Lua state               -> proto, token, curlmem, fds
 *   client.c    the userdata: new, close, __gc, __tostring    -> http, proto, token
 *   pkce.c webhook.c filestore.c slot.c                       -> leaves
 *   core.c      the module: luaopen, clocks, test hooks       -> every *_open
 *
 * Invariants of a client (struct client):
 *   - the userdata is zeroed and given its metatable before anything
 *     can fail, so a half-built client is a valid closed one;
 *   - every secret (client secret, access token, refresh token, the
 *     request body that held one, the response that held one) lives
 *     in memory owned by the client and is wiped with OPENSSL_cleanse
 *     before it is freed or reused;
 *   - cleanup serves close, __gc and __close and is safe to call any
 *     number of times;
 *   - libcurl's handles belong to the process that made them; a child
 *     of fork() abandons its parent's and makes its own.
 */
#ifndef NOMBA_H
#define NOMBA_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <curl/curl.h>
#include "compat.h"

#define NOMBA_VERSION      "0.2.0"
#define NOMBA_CLIENT_MT    "nomba.oauth.Client"
#define NOMBA_ERROR_MT     "nomba.oauth.Error"

#define NOMBA_HIDDEN __attribute__((visibility("hidden")))

/* Bounds on numbers from callers and from the network: every float that
 * becomes an integer is inside these first. */
#define NOMBA_MAX_TIMEOUT    300.0            /* seconds, per attempt */
#define NOMBA_MAX_LIFETIME   31622400.0       /* a token lifetime: one (leap) year */
#define NOMBA_MAX_RESPONSE   67108864.0       /* max_response_bytes: 64 MiB */
#define NOMBA_MAX_HEADERS    32768            /* bytes of answer headers */
#define NOMBA_MAX_ACCOUNT_ID 128              /* bytes of an account id */
#define NOMBA_MAX_MESSAGE    240              /* bytes of an error's or an event's message */
#define NOMBA_MAX_JSON_DEPTH 32               /* nesting of any JSON read or written (answers, events, bodies) */

/* Slots of the client's user value table kept by C (Lua keeps its
 * own state under string keys of the same table). */
#define UV_TOKEN   1   /* access token as a Lua string (hot path) */
#define UV_BEARER  2   /* "Bearer <token>" */
#define UV_ACCOUNT 3   /* account id */
#define UV_POOL    4   /* the libcurl pool the client uses (keeps it alive) */

/* A growable byte buffer that may hold a secret: always wiped. */
typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

NOMBA_HIDDEN int  sbuf_reserve(sbuf *b, size_t extra);
NOMBA_HIDDEN int  sbuf_add(sbuf *b, const char *s, size_t n);
NOMBA_HIDDEN int  sbuf_adds(sbuf *b, const char *s);
NOMBA_HIDDEN int  sbuf_add_json_string(sbuf *b, const char *s, size_t n);
NOMBA_HIDDEN void sbuf_wipe(sbuf *b);   /* zero the whole capacity, keep it */
NOMBA_HIDDEN void sbuf_free(sbuf *b);   /* zero and free */
NOMBA_HIDDEN int  sbuf_set(sbuf *b, const char *s, size_t n);
NOMBA_HIDDEN char *nomba_strndup(const char *s, size_t n);   /* malloc'd copy or NULL */

/* codec.c: base64 (standard and url-safe), hex digits, header names. */
NOMBA_HIDDEN size_t codec_b64_encode(const unsigned char *in, size_t n, char *out, int url);
NOMBA_HIDDEN long   codec_b64_decode(const char *s, size_t n, unsigned char *out, size_t cap, int url);
NOMBA_HIDDEN int    codec_hexval(int ch);                    /* 0..15, or -1 */
NOMBA_HIDDEN int    codec_name_is(const char *s, size_t n, const char *lower);
NOMBA_HIDDEN int    codec_visible(const char *s, size_t n);   /* visible ASCII only: a token's bytes */
NOMBA_HIDDEN int    codec_digits(const char *s, size_t n, double max, double *out);   /* 1: digits only, <= max */

/* Operations, as named in errors and events. */
enum nomba_op { OP_ISSUE, OP_REFRESH, OP_REVOKE, OP_AUTHORIZE, OP_EXCHANGE, OP_TOKEN, OP_WEBHOOK, OP_REQUEST,
                OP__N };
#define OP_PATHS (OP_EXCHANGE + 1)   /* the token operations: each has a path and a body of its own */
NOMBA_HIDDEN extern const char *const nomba_op_names[];
NOMBA_HIDDEN int nomba_checkop(lua_State *L, int idx);

/* url.c: URLs judged on libcurl's own parse (CURLU). */
typedef struct {
    char *scheme, *host, *path, *query;   /* curl_free'd by url_free; query NULL when none */
    long port;
    int loopback;
} url_parts;
/* NULL, or why the URL is refused; a query only where allow_query */
#define URL_QUERY 1   /* url_split: a query is allowed (an API call's URL) */
#define URL_PROXY 2   /* url_split: an http:// proxy, on any host */
NOMBA_HIDDEN const char *url_split(const char *url, url_parts *p, int flags);
NOMBA_HIDDEN void url_free(url_parts *p);
NOMBA_HIDDEN int  url_on(const url_parts *base, const char *url, const char **why); /* 1 same origin, 0, -1 */
NOMBA_HIDDEN int  url_on_parts(const url_parts *base, const char *url, url_parts *u, const char **why);
NOMBA_HIDDEN void url_open(lua_State *L);

/* What one HTTP answer carried that the interpreter needs: the first line
 * of each name (head.c notes them, for every driver). */
typedef struct {
    long status;
    unsigned seen;          /* which names were noted (head.c's bits) */
    char date[64];          /* the Date header, or "" */
    char retry_after[64];   /* the Retry-After header, or "" */
    char content_type[96];  /* the Content-Type header, or "" */
    char rl_limit[24], rl_remaining[24], rl_window[24];   /* X-Rate-Limit-Limit, -Remaining, -Window */
    char content_length[24];    /* the Content-Length header, or "" */
    int chunked;            /* a Transfer-Encoding line names chunked */
} nomba_answer_meta;

/* head.c: the header block of an answer, one reader for every driver. */
NOMBA_HIDDEN int  head_field(const char *p, size_t n, const char **name, size_t *nn, const char **val, size_t *vn);
NOMBA_HIDDEN void head_reset(nomba_answer_meta *m);
NOMBA_HIDDEN void head_note(nomba_answer_meta *m, const char *p, size_t n);   /* one line */
NOMBA_HIDDEN void head_scan(nomba_answer_meta *m, const char *p, size_t n);   /* a whole block */
NOMBA_HIDDEN void head_push(lua_State *L, const char *p, size_t n);           /* the headers table */
NOMBA_HIDDEN int  head_window(const char *s, double *out);                    /* "1s", "60", "1m" */
NOMBA_HIDDEN int  head_from_table(lua_State *L, int idx, sbuf *out);         /* a Lua transport's table as lines */
NOMBA_HIDDEN long head_status(const char *p, size_t n);   /* of a status line "HTTP/d.d nnn", or 0 */
NOMBA_HIDDEN void head_open(lua_State *L);

/* outcome.c: what a driver reports when there is no answer to interpret. */
enum nomba_outcome { OUT_NONE, OUT_RESOLVE, OUT_REFUSED, OUT_PROXY, OUT_TLS, OUT_CONFIG, OUT_SEND, OUT_TIMEOUT,
                     OUT_RESET, OUT_TRUNCATED, OUT_FRAMING, OUT_TOO_LARGE, OUT_HEADERS_TOO_LARGE, OUT_FAILED,
                     OUT_RAISED, OUT__N };
struct client;
NOMBA_HIDDEN const char *outcome_name(int o);
NOMBA_HIDDEN const char *outcome_message(int o);
NOMBA_HIDDEN int  outcome_check(lua_State *L, int idx);   /* an outcome's name: its number (unknown: OUT_FAILED) */
NOMBA_HIDDEN void outcome_push(lua_State *L, const struct client *c, int op, int o, const char *msg, size_t n,
                               long status, int sent);
NOMBA_HIDDEN int  outcome_return(lua_State *L, const struct client *c, int op, int o, const char *msg, size_t n,
                                 long status, int sent);

/* frame.c: where an answer's header block and body end. */
enum { FR_HEAD, FR_LENGTH, FR_SIZE, FR_DATA, FR_DATA_END, FR_TRAILER, FR_CLOSE, FR_DONE, FR_FAILED };
typedef struct {
    int state;              /* FR_* */
    int head_method;        /* the request was a HEAD: the answer has no body */
    int in_body;            /* frame_feed: the header block came */
    int got;                /* frame_feed: a byte came */
    int col;                /* frame_feed: bytes of the header line so far, CR aside */
    int close, extra;       /* the connection is not to be reused: Connection: close, or bytes came past the end */
    long status;
    double left;            /* FR_LENGTH, FR_DATA: bytes still to come */
    size_t max, trailer;    /* the body's cap; bytes of trailers so far */
    int outcome;            /* FR_FAILED: why (OUT_*), and its words (or NULL: the outcome's) */
    const char *why;
    sbuf head, line;        /* the header block (frame_feed); a chunk-size or trailer line */
    sbuf *body;             /* the decoded body goes here */
} frame;
NOMBA_HIDDEN void frame_init(frame *f, const char *method, size_t max, sbuf *body);
NOMBA_HIDDEN int  frame_body_begin(frame *f, long status, int chunked, int has_len, int bad_len, double len);
NOMBA_HIDDEN int  frame_begin_noted(frame *f, const nomba_answer_meta *m, long status, int decoded);
NOMBA_HIDDEN int  frame_feed(frame *f, const char *p, size_t n);   /* an answer's bytes: OUT_NONE or an outcome */
NOMBA_HIDDEN int  frame_body(frame *f, const char *p, size_t n);   /* its body's bytes (after frame_body_begin) */
NOMBA_HIDDEN int  frame_end(frame *f, int broken);                 /* the connection ended: OUT_NONE when complete */
NOMBA_HIDDEN void frame_free(frame *f);
NOMBA_HIDDEN frame *frame_test(lua_State *L, int idx);            /* a Lua frame at idx, or NULL */
NOMBA_HIDDEN void frame_open(lua_State *L);

#define NB_MAX_SOCKS 4          /* sockets of one transfer (happy eyeballs: 2) */

/* endpoint.c: where requests go and how, one immutable object per
 * process for every client configured alike (found by value, counted). */
typedef struct endpoint {
    struct endpoint *next;  /* the process's table (endpoint.c) */
    unsigned long refs, hash;
    unsigned long id;       /* never reused (a freed endpoint's address may be): the pool's handle reuse */
    char *base_url;
    char *paths[OP_PATHS];  /* path per token operation (exchange uses issue's) */
    char *urls[OP_PATHS];   /* base_url + path */
    url_parts base;         /* base_url as libcurl parses it (every URL must keep its scheme, host, port) */
    char *cafile, *capath, *pinned_pubkey, *proxy, *user_agent;
    double connect_timeout;
    int allow_http;         /* base_url is http:// on a loopback host */
    struct curl_slist *ct_tail;   /* Content-Type, then the tail: the token operations' lines */
    struct curl_slist *tail;      /* Accept, User-Agent, "Expect:": every request ends with them */
} endpoint;
/* The string option name of the options table at t, alive while the table
 * holds it, or NULL when it is not given; raises, naming the option, when
 * it is not a string or holds a NUL (core.new's one reader of them). */
NOMBA_HIDDEN const char *endpoint_opt(lua_State *L, int t, const char *name);
/* The endpoint of the options table at t (checked: raises naming the option). */
NOMBA_HIDDEN const endpoint *endpoint_get(lua_State *L, int t);
NOMBA_HIDDEN void endpoint_release(const endpoint *e);
/* Appends "name: value" to l (a new list when NULL); NULL when out of memory. */
NOMBA_HIDDEN struct curl_slist *endpoint_line(struct curl_slist *l, const char *name, const char *value);
NOMBA_HIDDEN void endpoint_open(lua_State *L);

/* The configuration: fixed once core.new returns. */
typedef struct {
    char *account_id, *client_id;
    const endpoint *ep;     /* shared: never written through */
    double timeout, refresh_skew;
    size_t max_response;
} client_config;

/* The secrets and the kept token (token.c is the only writer). */
typedef struct {
    sbuf secret, access, refresh;
    char *business_id;
    double expires_mono;    /* monotonic seconds; 0 when there is no usable token */
    double lifetime;        /* seconds the kept token was issued for */
    double expires_wall;    /* local wall clock, corrected for skew */
    unsigned int gen;       /* bumped whenever the kept token changes (LuaJIT's hot-path copy checks it) */
    double anchor;          /* the server's clock minus the monotonic one (the last answer's Date) */
    int anchored;           /* anchor is known */
} token_state;

/* libcurl: the transfer of an attempt (http.c). */
typedef struct http_pool http_pool;
typedef struct {
    CURL *h;                /* an easy handle, borrowed from the pool for the transfer */
    pid_t pid;              /* the process that borrowed it */
    int done;               /* the multi handle said the transfer ended ... */
    CURLcode rc;            /* ... with this */
    struct { int fd, what; } socks[NB_MAX_SOCKS];   /* its sockets (CURL_POLL_*) */
    int nsocks;
    struct curl_slist hdr_bearer;   /* the bearer's header node, in front of the attempt's lines */
    char errbuf[256];       /* CURL_ERROR_SIZE */
} transfer;

/* One attempt: the request as built and the answer as read. proto.c owns
 * it: attempt_begin() and attempt_end() are the only places that start and
 * end one, and attempt_end() wipes every buffer that held a secret. */
typedef struct {
    const char *url;        /* the op's URL (the configuration's, or req_url) */
    sbuf body, bearer_hdr, resp;   /* bearer_hdr: "Authorization: Bearer ..." or empty */
    struct curl_slist *lines;      /* the header lines the attempt sends after the bearer (not owned) */
    /* OP_REQUEST, an authorized API call: */
    char *req_url;          /* its URL */
    const char *method;     /* its method (a static string) */
    struct curl_slist *extra, *extra_last;   /* its own lines (accountId, Content-Type, the caller's);
                                              * extra_last->next links the tail while they are in use */
    sbuf head;              /* the answer's header lines */
    int fresh_connect;      /* never on a reused connection (not idempotent) */
    size_t max_response;    /* this attempt's cap on the body */
    sbuf req_secret[2];     /* the secret values the request carries (a token, a verifier;
                             * a refresh's explicit bearer), redacted from its answer */
    sbuf scratch[2];        /* an answer's new tokens, before they are kept */
    nomba_answer_meta meta;
    frame fr;               /* libcurl: the body's framing (frame.c), begun when the header block ended */
    int head_done;          /* the answer's header block ended (its empty line came) */
    int outcome;            /* libcurl: OUT_* when our callbacks stopped the transfer */
    size_t header_bytes;    /* of the answer being read */
    int in_flight;          /* 1 + the op of a non-blocking attempt, or 0 */
    transfer xfer;          /* libcurl's part (http.c) */
} attempt;

/* Sealing for a shared store (seal.c). */
typedef struct {
    sbuf ikm, aes;          /* store_key option; the derived AES key */
} sealing;

typedef struct client {
    int closed;
    client_config cfg;
    token_state tok;
    attempt *at;            /* the attempt in progress, or NULL: an idle client holds none (proto.c) */
    struct curl_slist *op_lines;   /* made once per client: accountId, then the endpoint's ct_tail */
    char *body_open[OP_REVOKE + 1];   /* the cached non-secret start of issue's, refresh's and revoke's body */
    http_pool *pool;        /* the Lua state's libcurl pool (refcounted; http.c) */
    unsigned long serial;   /* this client, for the echo cache */
    sealing *seal;          /* made when a store first needs it, or NULL (seal.c) */
#ifdef NOMBA_TEST_HOOKS
    int test_wiped, test_checked;   /* verdict of the last cleanup */
#endif
} client;

/* The client at idx, or a raised argument error (every file's bindings use
 * it: here, so no file calls up into client.c). */
static inline client *client_check(lua_State *L, int idx)
{
    return (client *)luaL_checkudata(L, idx, NOMBA_CLIENT_MT);
}

#ifdef NOMBA_TEST_HOOKS
/* Test build: adds f to core._test (of the module table on top of the
 * stack) as name. */
static inline void nomba_test_hook(lua_State *L, const char *name, lua_CFunction f)
{
    lua_getfield(L, -1, "_test");
    lua_pushcfunction(L, f);
    lua_setfield(L, -2, name);
    lua_pop(L, 1);
}
#endif

/* client.c: the userdata's life. */
NOMBA_HIDDEN void client_open(lua_State *L);

/* token.c: the kept token; the only code that changes it. */
NOMBA_HIDDEN int  token_keep(lua_State *L, int cidx, client *c, sbuf *access, sbuf *refresh,
                             const char *biz, size_t bizlen, double lifetime, double left);
NOMBA_HIDDEN void token_drop(lua_State *L, int cidx, client *c);
NOMBA_HIDDEN void token_push(lua_State *L, int cidx, const client *c);
NOMBA_HIDDEN void token_forget(client *c);   /* wipes and frees every secret (cleanup) */
NOMBA_HIDDEN void token_anchor(client *c, double server_date);   /* an answer's Date */
NOMBA_HIDDEN double token_server_now(const client *c);           /* the server's clock, as known */
NOMBA_HIDDEN void token_open(lua_State *L);

/* attempt.c: an attempt's buffers. */
NOMBA_HIDDEN int  attempt_begin(lua_State *L, client *c, int op);   /* 0, or pushes nil, err */
NOMBA_HIDDEN int  attempt_ensure(client *c);   /* an attempt, begun if none is; 0 when out of memory */
NOMBA_HIDDEN void attempt_end(client *c);
NOMBA_HIDDEN void attempt_free(client *c);
/* build.c: every request. */
NOMBA_HIDDEN int  proto_build(lua_State *L, client *c, int op, int argidx);  /* 0, or pushes nil, err */
NOMBA_HIDDEN void build_open(lua_State *L);
/* answer.c: an API answer as Lua sees it. */
NOMBA_HIDDEN int  answer_json_like(const nomba_answer_meta *m, const char *body, size_t n);
NOMBA_HIDDEN void answer_push(lua_State *L, const client *c, const nomba_answer_meta *m, const char *head, size_t hn,
                              const char *body, size_t n, const char *code, size_t codelen, int json);
NOMBA_HIDDEN void answer_attach(lua_State *L, const client *c, const nomba_answer_meta *m, const char *head,
                                size_t hn, const char *body, size_t n, const char *code, size_t codelen, int json);
NOMBA_HIDDEN void answer_open(lua_State *L);
/* interpret.c: every answer. */
NOMBA_HIDDEN int  proto_interpret(lua_State *L, int cidx, client *c, int op, const nomba_answer_meta *m,
                                  const char *head, size_t hn, const char *body, size_t n);
/* proto.c: the contract's Lua side. */
NOMBA_HIDDEN void proto_open(lua_State *L);

/* curlmem.c: libcurl's process-wide setup. */
NOMBA_HIDDEN void http_global_init(void);
NOMBA_HIDDEN int  http_curl_wipes(void);   /* libcurl frees through our wiping free */
NOMBA_HIDDEN pid_t http_me(void);          /* this process's id (kept by a fork handler) */

/* fds.c: descriptor hygiene. */
typedef struct {
    unsigned char *open;    /* a bit per fd open at the snapshot */
    size_t n;               /* bytes of open */
} fd_snapshot;

NOMBA_HIDDEN int  fds_sockopt(void *ud, curl_socket_t fd, curlsocktype purpose);   /* CURLOPT_SOCKOPTFUNCTION */
NOMBA_HIDDEN void fds_snapshot(fd_snapshot *s);       /* the descriptors open now */
NOMBA_HIDDEN void fds_cloexec_new(fd_snapshot *s);    /* close-on-exec for AF_UNIX streams opened since; frees s */

/* http.c: libcurl, one pool per Lua state. */
NOMBA_HIDDEN void http_attach(lua_State *L, int cidx, client *c);
NOMBA_HIDDEN void http_release(client *c);
NOMBA_HIDDEN void http_open(lua_State *L);

/* err.c */
typedef struct {
    const char *kind;
    int op;
    long status;            /* 0: none */
    const char *code;       /* NULL: none */
    size_t codelen;
    const char *message;
    size_t msglen;
    int retryable;
    double retry_after;     /* < 0: none */
} nomba_err;
/* The secrets an answer must not echo (err.c): their 8-byte pieces in a
 * bloom filter of ECHO_BITS bits, two per piece; kept per Lua state for the
 * client (serial) and token generation it was made for. */
struct client;
#define ECHO_BITS 32768
typedef struct {
    const sbuf *longs[5], *shorts[5];   /* secrets of 8 bytes or more; of 4 to 7 */
    int nlong, nshort;
    const struct client *owner;         /* the cache: whose secrets, at which generation */
    unsigned long serial;
    unsigned gen;
    uint64_t bits[ECHO_BITS / 64];
} echo_index;
NOMBA_HIDDEN void echo_begin(echo_index *ix, const struct client *c);
NOMBA_HIDDEN const echo_index *echo_for(lua_State *L, const struct client *c);
NOMBA_HIDDEN int  echo_find(const echo_index *ix, const char *p, size_t n, size_t *at, size_t *len);
NOMBA_HIDDEN void echo_push(lua_State *L, const echo_index *ix, const char *p, size_t n);
NOMBA_HIDDEN void err_init(nomba_err *e, const char *kind, int op, const char *msg);
NOMBA_HIDDEN void err_push(lua_State *L, const client *c, const nomba_err *e);
NOMBA_HIDDEN int  err_return(lua_State *L, const client *c, const nomba_err *e);
NOMBA_HIDDEN int  err_simple(lua_State *L, const char *kind, int op, const char *msg);
NOMBA_HIDDEN void err_open(lua_State *L);

/* timeparse.c: pure C, no Lua (fuzzed). */
NOMBA_HIDDEN int    nt_iso8601(const char *s, size_t n, double *out);
NOMBA_HIDDEN int    nt_rfc3339(const char *s, size_t n, double *out);   /* strict: seconds and an offset */
NOMBA_HIDDEN int    nt_httpdate(const char *s, size_t n, double *out);
NOMBA_HIDDEN int    nt_retry_after(const char *s, size_t n, double now, double *out);
NOMBA_HIDDEN double nt_mono(void);
NOMBA_HIDDEN double nt_mono_coarse(void);
NOMBA_HIDDEN double nt_wall(void);

/* json.c: a strict JSON reader that records where wanted members stand. */
enum { J_NONE, J_STRING, J_NUMBER, J_OBJECT, J_OTHER };
typedef struct {
    const char *p;          /* J_STRING: the inside, still escaped; J_NUMBER: its text */
    size_t n;
    int type;
} json_span;
NOMBA_HIDDEN int json_scan(const char *p, size_t n, const char *const *names, int nnames,
                           json_span *top, json_span *data, int *has_data);
NOMBA_HIDDEN int json_string(const json_span *s, sbuf *out);   /* 1, 0 not a string, -1 OOM */
NOMBA_HIDDEN int json_number(const json_span *s, double *out);  /* a number, or a string of one */
NOMBA_HIDDEN int json_push(lua_State *L, const char *p, size_t n, int max_depth); /* 1 pushed, 0 not JSON */

/* filestore.c */
NOMBA_HIDDEN void filestore_open(lua_State *L);

/* webhook.c */
NOMBA_HIDDEN int  webhook_mac(const char *key, size_t kn, const char *msg, size_t mn, unsigned char out[32]);
NOMBA_HIDDEN int  webhook_check(const char *key, size_t kn, const char *msg, size_t mn,
                                const char *sig, size_t sn);   /* 1: the signature holds */
NOMBA_HIDDEN void webhook_open(lua_State *L);

/* seal.c */
NOMBA_HIDDEN void seal_open(lua_State *L);

/* slot.c */
NOMBA_HIDDEN void slot_open(lua_State *L);

/* pkce.c */
NOMBA_HIDDEN int  pkce_valid_verifier(const char *s, size_t n);
NOMBA_HIDDEN void pkce_open(lua_State *L);

#endif
