/*
 * endpoint.c: where a client's requests go, and how, shared by every
 * client configured alike.
 *
 * A platform keeps a client per merchant, and all of them name the same
 * base URL, paths, CA file, proxy and user agent. That part of the
 * configuration (judged once: libcurl's parse of the base URL, every
 * operation's URL checked against it) and the header lines it makes are
 * one immutable, reference-counted object per process, found by value:
 * making the 100,000th client costs a lookup, not five URL parses and a
 * dozen copies, and its memory is a pointer.
 *
 * An endpoint never changes once published, so clients of any thread
 * read it without a lock; the lock guards only the list and the counts
 * (and is never held across fork(): the child gets it free).
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <stdio.h>
#include <pthread.h>
#include "nomba.h"

#define EP_BUCKETS 64

static pthread_mutex_t ep_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t ep_once = PTHREAD_ONCE_INIT;
static endpoint *ep_table[EP_BUCKETS];
static unsigned long ep_ids;            /* the last id given */

static void ep_prepare(void) { pthread_mutex_lock(&ep_lock); }
static void ep_after(void) { pthread_mutex_unlock(&ep_lock); }
static void ep_init(void) { (void)pthread_atfork(ep_prepare, ep_after, ep_after); }

/* The fields that make an endpoint, as the options give them (NULL: not
 * given). They stay valid in the options table while core.new runs. */
typedef struct {
    const char *base_url, *paths[OP_PATHS], *cafile, *capath, *pinned_pubkey, *proxy, *user_agent;
    double connect_timeout;
} ep_key;

static unsigned long mix(unsigned long h, const char *s)
{
    if (s == NULL)
        return (h ^ 0xffu) * 1099511628211UL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211UL;
    return h * 1099511628211UL;          /* the end of a field */
}

static unsigned long key_hash(const ep_key *k)
{
    unsigned long h = 14695981039346656037UL;
    int i;
    h = mix(h, k->base_url);
    for (i = 0; i < OP_PATHS; i++)
        h = mix(h, k->paths[i]);
    h = mix(mix(mix(h, k->cafile), k->capath), k->pinned_pubkey);
    return mix(mix(h, k->proxy), k->user_agent);
}

static int same(const char *a, const char *b)
{
    return a == NULL ? b == NULL : b != NULL && strcmp(a, b) == 0;
}

static int matches(const endpoint *e, const ep_key *k)
{
    int i;
    if (e->connect_timeout != k->connect_timeout || !same(e->base_url, k->base_url))
        return 0;
    for (i = 0; i < OP_PATHS; i++)
        if (!same(e->paths[i], k->paths[i]))
            return 0;
    return same(e->cafile, k->cafile) && same(e->capath, k->capath) &&
           same(e->pinned_pubkey, k->pinned_pubkey) && same(e->proxy, k->proxy) &&
           same(e->user_agent, k->user_agent);
}

static void ep_free(endpoint *e)
{
    int i;
    if (e == NULL)
        return;
    free(e->base_url);
    for (i = 0; i < OP_PATHS; i++) {
        free(e->paths[i]);
        free(e->urls[i]);
    }
    free(e->cafile);
    free(e->capath);
    free(e->pinned_pubkey);
    free(e->proxy);
    free(e->user_agent);
    url_free(&e->base);
    curl_slist_free_all(e->ct_tail);      /* Content-Type, then the tail */
    free(e);
}

static int copy_opt(char **dst, const char *s)
{
    if (s == NULL)
        return 1;
    return (*dst = nomba_strndup(s, strlen(s))) != NULL;
}

struct curl_slist *endpoint_line(struct curl_slist *l, const char *name, const char *value)
{
    size_t n = strlen(name) + strlen(value) + 3;
    char *line = malloc(n);
    struct curl_slist *r = NULL;
    if (line != NULL) {
        (void)snprintf(line, n, "%s: %s", name, value);
        r = curl_slist_append(l, line);
        free(line);
    }
    return r;
}

/* Builds an endpoint from k; NULL with *why (a message naming the option)
 * on a refusal or when out of memory. */
static endpoint *build(const ep_key *k, const char **why, char *msg, size_t msgcap)
{
    endpoint *e = calloc(1, sizeof *e);
    struct curl_slist *ct;
    int i;
    *why = "out of memory";
    if (e == NULL)
        return NULL;
    e->refs = 1;
    e->connect_timeout = k->connect_timeout;
    if (!copy_opt(&e->base_url, k->base_url) || !copy_opt(&e->cafile, k->cafile) || !copy_opt(&e->capath, k->capath) ||
        !copy_opt(&e->pinned_pubkey, k->pinned_pubkey) || !copy_opt(&e->proxy, k->proxy) ||
        !copy_opt(&e->user_agent, k->user_agent))
        goto fail;
    for (i = 0; i < OP_PATHS; i++)
        if (!copy_opt(&e->paths[i], k->paths[i]))
            goto fail;
    /* the base URL and every operation's URL, judged on libcurl's own
     * parse: each must go to the base URL's scheme, host and port; plain
     * http only to a loopback host (url_split refuses anything else) */
    if ((*why = url_split(e->base_url, &e->base, 0)) != NULL) {
        (void)snprintf(msg, msgcap, "option 'base_url' %s", *why);
        *why = msg;
        goto fail;
    }
    e->allow_http = strcasecmp(e->base.scheme, "http") == 0;
    for (i = 0; i < OP_PATHS; i++) {
        char full[1024];
        const char *bad;
        int n;
        if (e->paths[i] == NULL)
            continue;
        n = snprintf(full, sizeof full, "%s%s", e->base_url, e->paths[i]);
        if (n < 0 || (size_t)n >= sizeof full) {
            (void)snprintf(msg, msgcap, "option 'paths' makes a URL over %d bytes", (int)sizeof full - 1);
            *why = msg;
            goto fail;
        }
        if (url_on(&e->base, full, &bad) != 1) {
            (void)snprintf(msg, msgcap, "option 'paths' (%s) must stay on base_url's scheme, host and port",
                           nomba_op_names[i]);
            *why = msg;
            goto fail;
        }
        if ((e->urls[i] = nomba_strndup(full, (size_t)n)) == NULL) {
            *why = "out of memory";
            goto fail;
        }
    }
    /* the header lines every request ends with: Accept, User-Agent and
     * "Expect:" (libcurl's directive not to wait for 100-continue; a Lua
     * transport never sees a line without a value); the token operations
     * put Content-Type (and the client's accountId) in front */
    *why = "out of memory";
    if ((ct = curl_slist_append(NULL, "Content-Type: application/json")) == NULL)
        goto fail;
    e->ct_tail = ct;
    if (curl_slist_append(ct, "Accept: application/json") == NULL ||
        (e->user_agent != NULL && endpoint_line(ct, "User-Agent", e->user_agent) == NULL) ||
        curl_slist_append(ct, "Expect:") == NULL)
        goto fail;
    e->tail = ct->next;
    *why = NULL;
    return e;
fail:
    ep_free(e);
    return NULL;
}

const char *endpoint_opt(lua_State *L, int t, const char *name)
{
    const char *s;
    size_t n;
    lua_getfield(L, t, name);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return NULL;
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "nomba.oauth: option '%s' must be a string", name);
    s = lua_tolstring(L, -1, &n);
    if (strlen(s) != n)
        luaL_error(L, "nomba.oauth: option '%s' must not contain NUL bytes", name);
    lua_pop(L, 1);                       /* the string stays alive in the options table */
    return s;
}

const endpoint *endpoint_get(lua_State *L, int t)
{
    ep_key k;
    unsigned long h;
    endpoint *e, *made;
    const char *why;
    char msg[160];
    int i, pt;
    memset(&k, 0, sizeof k);
    k.base_url = endpoint_opt(L, t, "base_url");
    k.cafile = endpoint_opt(L, t, "cafile");
    k.capath = endpoint_opt(L, t, "capath");
    k.pinned_pubkey = endpoint_opt(L, t, "pinned_pubkey");
    k.proxy = endpoint_opt(L, t, "proxy");
    k.user_agent = endpoint_opt(L, t, "user_agent");
    if (k.base_url == NULL)
        luaL_error(L, "nomba.oauth: option 'base_url' is required");
    lua_getfield(L, t, "connect_timeout");
    k.connect_timeout = lua_tonumber(L, -1);
    lua_pop(L, 1);
    if (!(k.connect_timeout >= 0.001 && k.connect_timeout <= NOMBA_MAX_TIMEOUT))
        luaL_error(L, "nomba.oauth: option 'connect_timeout' is out of range");
    lua_getfield(L, t, "paths");
    luaL_checktype(L, -1, LUA_TTABLE);
    pt = lua_gettop(L);
    for (i = 0; i < OP_PATHS; i++)       /* every op the paths table names; exchange uses issue's */
        k.paths[i] = endpoint_opt(L, pt, nomba_op_names[i]);
    if (k.paths[OP_ISSUE] == NULL)
        luaL_error(L, "nomba.oauth: option 'paths' has no issue path");
    k.paths[OP_EXCHANGE] = k.paths[OP_ISSUE];
    h = key_hash(&k);

    pthread_once(&ep_once, ep_init);
    pthread_mutex_lock(&ep_lock);
    for (e = ep_table[h % EP_BUCKETS]; e != NULL; e = e->next)
        if (e->hash == h && matches(e, &k))
            break;
    if (e != NULL)
        e->refs++;
    pthread_mutex_unlock(&ep_lock);
    if (e != NULL) {
        lua_pop(L, 1);
        return e;
    }
    made = build(&k, &why, msg, sizeof msg);
    if (made == NULL)
        luaL_error(L, "nomba.oauth: %s", why);   /* nothing to free: build freed its half */
    made->hash = h;
    pthread_mutex_lock(&ep_lock);
    for (e = ep_table[h % EP_BUCKETS]; e != NULL; e = e->next)   /* another thread's, made meanwhile */
        if (e->hash == h && matches(e, &k))
            break;
    if (e != NULL) {
        e->refs++;
    } else {
        made->id = ++ep_ids;
        made->next = ep_table[h % EP_BUCKETS];
        ep_table[h % EP_BUCKETS] = made;
        e = made;
        made = NULL;
    }
    pthread_mutex_unlock(&ep_lock);
    ep_free(made);
    lua_pop(L, 1);
    return e;
}

void endpoint_release(const endpoint *ce)
{
    endpoint *e = NULL, **at;
    if (ce == NULL)
        return;
    pthread_once(&ep_once, ep_init);
    pthread_mutex_lock(&ep_lock);
    for (at = &ep_table[ce->hash % EP_BUCKETS]; *at != NULL; at = &(*at)->next)
        if (*at == ce) {
            if (--(*at)->refs == 0) {
                e = *at;                /* the last client: out of the table, then freed */
                *at = e->next;
            }
            break;
        }
    pthread_mutex_unlock(&ep_lock);
    ep_free(e);
}

#ifdef NOMBA_TEST_HOOKS
/* core._test.endpoints(): how many endpoints the process holds, and the
 * references to them. */
static int endpoint_test_count(lua_State *L)
{
    int i, n = 0;
    unsigned long refs = 0;
    const endpoint *e;
    pthread_once(&ep_once, ep_init);
    pthread_mutex_lock(&ep_lock);
    for (i = 0; i < EP_BUCKETS; i++)
        for (e = ep_table[i]; e != NULL; e = e->next) {
            n++;
            refs += e->refs;
        }
    pthread_mutex_unlock(&ep_lock);
    lua_pushinteger(L, n);
    lua_pushinteger(L, (lua_Integer)refs);
    return 2;
}
#endif

void endpoint_open(lua_State *L)
{
#ifdef NOMBA_TEST_HOOKS
    nomba_test_hook(L, "endpoints", endpoint_test_count);
#else
    (void)L;
#endif
}
