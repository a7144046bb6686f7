/*
 * nomba.h: what the C files of nomba.oauth.core share.
 *
 * Everything declared here has hidden visibility; the only exported
 * symbol of the module is luaopen_nomba_oauth_core.
 *
 * Invariants of a client (struct client):
 *   - the userdata is zeroed and given its metatable before anything
 *     can fail, so a half-built client is a valid closed one;
 *   - every secret (client secret, access token, refresh token, the
 *     request body that held one, the response that held one) lives
 *     in memory owned by the client and is wiped with OPENSSL_cleanse
 *     before it is freed or reused;
 *   - client_cleanup() serves close, __gc and __close and is safe to
 *     call any number of times;
 *   - the libcurl handle belongs to the process that created it
 *     (curl_pid); a child of fork() abandons it and makes its own.
 */
#ifndef NOMBA_H
#define NOMBA_H

#include <stddef.h>
#include <sys/types.h>
#include <curl/curl.h>
#include "compat.h"

#define NOMBA_VERSION      "0.1.0"
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

/* Slots of the client's user value table kept by C (Lua keeps its
 * own state under string keys of the same table). */
#define UV_TOKEN   1   /* access token as a Lua string (hot path) */
#define UV_BEARER  2   /* "Bearer <token>" */
#define UV_ACCOUNT 3   /* account id */

typedef struct share_box share_box;

/* A growable byte buffer that may hold a secret: always wiped. */
typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

NOMBA_HIDDEN int  sbuf_reserve(sbuf *b, size_t extra);
NOMBA_HIDDEN int  sbuf_add(sbuf *b, const char *s, size_t n);
NOMBA_HIDDEN int  sbuf_adds(sbuf *b, const char *s);
NOMBA_HIDDEN int  sbuf_add_json_string(sbuf *b, const char *s, size_t n);
NOMBA_HIDDEN void sbuf_wipe(sbuf *b);   /* zero the bytes, keep capacity */
NOMBA_HIDDEN void sbuf_free(sbuf *b);   /* zero and free */
NOMBA_HIDDEN int  sbuf_set(sbuf *b, const char *s, size_t n);
NOMBA_HIDDEN char *nomba_strndup(const char *s, size_t n);   /* malloc'd copy or NULL */
NOMBA_HIDDEN int   nomba_hexval(int ch);                     /* 0..15, or -1 */

/* Operations, as named in errors and events. */
enum nomba_op { OP_ISSUE, OP_REFRESH, OP_REVOKE, OP_AUTHORIZE, OP_EXCHANGE, OP_TOKEN, OP_WEBHOOK, OP__N };
NOMBA_HIDDEN extern const char *const nomba_op_names[];
NOMBA_HIDDEN int nomba_checkop(lua_State *L, int idx);

/* What one HTTP answer carried that the interpreter needs. */
typedef struct {
    long status;
    char date[64];          /* the Date header, or "" */
    char retry_after[64];   /* the Retry-After header, or "" */
    char content_type[96];  /* the Content-Type header, or "" */
} nomba_answer_meta;

/* A request prepared for one attempt. Its body and bearer header live
 * in client-owned buffers (reqbody, bearer_hdr), so nothing leaks if a
 * Lua error interrupts; proto_request_done() wipes them. */
typedef struct {
    char url[1024];
    int bearer;             /* bearer_hdr holds "Authorization: Bearer ..." */
} nomba_request;


enum { OVERFLOW_BODY = 1, OVERFLOW_HEADERS = 2 };
#define NB_MAX_SOCKS 4          /* sockets of one transfer (happy eyeballs: 2) */

typedef struct client {
    int closed;
    /* configuration */
    char *account_id, *client_id, *base_url;
    char *paths[OP__N];     /* path per op (issue, refresh, revoke, authorize) */
    char *body_open[OP__N]; /* cached non-secret JSON body start, per op */
    char *cafile, *capath, *pinned_pubkey, *proxy, *user_agent;
    double timeout, connect_timeout, refresh_skew;
    size_t max_response;
    int allow_http;         /* base_url is http:// on a loopback host */
    /* secrets */
    sbuf secret, access, refresh;
    sbuf reqbody, bearer_hdr, resp; /* per-request buffers, reused, wiped */
    sbuf req_secret[2];     /* the secret values the request in progress carries
                             * (a token, a verifier; a refresh's explicit bearer),
                             * redacted from its answer's messages */
    sbuf store_ikm, store_aes;      /* store_key option; the derived AES key */
    sbuf seal_pt, seal_ct;          /* sealing scratch, wiped after use */
    sbuf scratch[2];                /* an answer's new tokens, before they are kept */
    char *business_id;
    /* token clock: monotonic seconds */
    double expires_mono;    /* 0 when there is no usable token */
    double lifetime;        /* seconds the kept token was issued for */
    double expires_wall;    /* local wall clock, corrected for skew */
    unsigned int gen;       /* bumped whenever the kept token changes (LuaJIT's hot-path copy checks it) */
    /* libcurl */
    CURL *curl;             /* owned by curl_pid */
    CURLM *multi;           /* the non-blocking mode's, same owner */
    int performed;          /* the easy handle has made its own multi (curl_easy_perform) */
    int in_flight;          /* 1 + the op of a non-blocking transfer, or 0 */
    struct { int fd, what; } nb_socks[NB_MAX_SOCKS];  /* its sockets (CURL_POLL_*) */
    int nb_nsocks;
    double nb_timer;        /* when libcurl wants to run again (monotonic), or -1 */
    struct curl_slist bearer_node;  /* the bearer header in front of base_headers */
    pid_t curl_pid;
    int url_op;             /* 1 + the op whose URL the handle holds, or 0 */
    struct curl_slist *base_headers;  /* same owner */
    struct share_box *share;/* the state's share handle, when attached */
    nomba_answer_meta meta;
    int overflow;           /* OVERFLOW_BODY or OVERFLOW_HEADERS: the answer was cut */
    size_t header_bytes;    /* of the answer being read */
    char errbuf[256];       /* CURL_ERROR_SIZE */
#ifdef NOMBA_TEST_HOOKS
    int test_wiped, test_checked;   /* verdict of the last cleanup */
#endif
} client;

/* client.c */
NOMBA_HIDDEN client *client_check(lua_State *L, int idx);
NOMBA_HIDDEN void client_cleanup(client *c);
NOMBA_HIDDEN void client_set_token(lua_State *L, int cidx, client *c);
NOMBA_HIDDEN void client_push_token(lua_State *L, int cidx, const client *c);
NOMBA_HIDDEN void client_drop_token(lua_State *L, int cidx, client *c);
NOMBA_HIDDEN void client_open(lua_State *L);

/* proto.c: building requests and interpreting answers (sans-I/O). */
NOMBA_HIDDEN int proto_build(lua_State *L, int cidx, client *c, int op, int argidx,
                             nomba_request *rq);
NOMBA_HIDDEN int proto_interpret(lua_State *L, int cidx, client *c, int op,
                                 const nomba_answer_meta *m, const char *body, size_t n);
NOMBA_HIDDEN void proto_request_done(client *c);
NOMBA_HIDDEN void proto_forget_secrets(client *c);   /* wipes req_secret once answered */
NOMBA_HIDDEN void proto_open(lua_State *L);

/* http.c: one attempt over the client's libcurl handle. */
NOMBA_HIDDEN int http_perform(lua_State *L, int cidx, client *c, int op,
                              nomba_request *rq, double timeout);
NOMBA_HIDDEN int http_start(lua_State *L, int cidx, client *c, int op,
                            nomba_request *rq, double timeout);
NOMBA_HIDDEN int http_progress(lua_State *L, int cidx, client *c);
NOMBA_HIDDEN void http_wait(client *c, double seconds);
NOMBA_HIDDEN void http_abort(client *c);
NOMBA_HIDDEN int http_sockets(lua_State *L, client *c);
NOMBA_HIDDEN void http_release(client *c);
NOMBA_HIDDEN void http_global_init(void);
NOMBA_HIDDEN int  http_curl_wipes(void);   /* libcurl frees through our wiping free */
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
NOMBA_HIDDEN void err_init(nomba_err *e, const char *kind, int op, const char *msg);
NOMBA_HIDDEN void err_push(lua_State *L, const client *c, const nomba_err *e);
NOMBA_HIDDEN int  err_return(lua_State *L, const client *c, const nomba_err *e);
NOMBA_HIDDEN int  err_simple(lua_State *L, const char *kind, int op, const char *msg);
NOMBA_HIDDEN void err_open(lua_State *L);

/* timeparse.c: pure C, no Lua (fuzzed). */
NOMBA_HIDDEN int    nt_iso8601(const char *s, size_t n, double *out);
NOMBA_HIDDEN int    nt_httpdate(const char *s, size_t n, double *out);
NOMBA_HIDDEN int    nt_retry_after(const char *s, size_t n, double now, double *out);
NOMBA_HIDDEN double nt_mono(void);
NOMBA_HIDDEN double nt_mono_coarse(void);
NOMBA_HIDDEN double nt_wall(void);

/* url.c: URLs judged on libcurl's own parse (CURLU). */
typedef struct {
    char *scheme, *host, *path;   /* curl_free'd by url_free */
    long port;
    int loopback;
} url_parts;
/* NULL, or why the URL is refused; a query only where allow_query */
NOMBA_HIDDEN const char *url_split(const char *url, url_parts *p, int allow_query);
NOMBA_HIDDEN void url_free(url_parts *p);
NOMBA_HIDDEN void url_open(lua_State *L);

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

/* filestore.c */
NOMBA_HIDDEN void filestore_open(lua_State *L);

/* webhook.c */
NOMBA_HIDDEN int  webhook_check(const char *key, size_t kn, const char *msg, size_t mn,
                                const char *sig, size_t sn);   /* 1: the signature holds */
NOMBA_HIDDEN void webhook_open(lua_State *L);

/* seal.c */
NOMBA_HIDDEN void seal_open(lua_State *L);

/* pkce.c */
NOMBA_HIDDEN int  pkce_valid_verifier(const char *s, size_t n);
NOMBA_HIDDEN void pkce_open(lua_State *L);

#endif
