/*
 * core.c: luaopen_nomba_oauth_core, the only exported symbol.
 *
 * The module table carries _VERSION, the client functions (client.c), the
 * error metatable (err.c), the PKCE helpers (pkce.c) and two clock helpers
 * the Lua policy needs: now() on the monotonic clock and sleep(seconds).
 */
#include <errno.h>
#include <math.h>
#include <time.h>
#include <sys/mman.h>
#include <openssl/ssl.h>
#include "nomba.h"

/* core.now(): monotonic seconds (fractions), for deadlines and backoff. */
static int core_now(lua_State *L)
{
    lua_pushnumber(L, nt_mono());
    return 1;
}

/* core.time(): wall-clock seconds (fractions). */
static int core_time(lua_State *L)
{
    lua_pushnumber(L, nt_wall());
    return 1;
}

/* core.sleep(seconds): blocks the calling thread (never used under
 * OpenResty, where the Lua layer uses ngx.sleep). */
static int core_sleep(lua_State *L)
{
    double s = luaL_checknumber(L, 1);
    struct timespec ts, rem;
    if (!(s > 0))
        return 0;
    if (s > 3600)
        s = 3600;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - floor(s)) * 1e9);
    while (nanosleep(&ts, &rem) != 0 && errno == EINTR)
        ts = rem;
    return 0;
}

/* core.hygiene(): which of the memory measures are in force in this
 * process (the README says what each covers). */
static int core_hygiene(lua_State *L)
{
    lua_createtable(L, 0, 3);
    lua_pushboolean(L, http_curl_wipes());
    lua_setfield(L, -2, "curl_frees_wiped");
    lua_pushboolean(L, NOMBA_SSL_CLEANSE != 0);
    lua_setfield(L, -2, "tls_plaintext_cleansed");
#ifdef MADV_DONTDUMP
    lua_pushboolean(L, 1);
#else
    lua_pushboolean(L, 0);
#endif
    lua_setfield(L, -2, "secrets_out_of_core_dumps");
    return 1;
}

/* core.json_decode(s[, max_depth]): the value of a JSON text (strict RFC
 * 8259; objects and arrays as tables, null as NULL == cjson.null), or nil. */
static int core_json_decode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    int depth = (int)luaL_optinteger(L, 2, NOMBA_MAX_JSON_DEPTH);
    luaL_argcheck(L, depth >= 1 && depth <= 1000, 2, "max_depth must be 1 to 1000");
    return json_push(L, s, n, depth);
}

/* core.visible(s): whether s is not empty and all visible ASCII: what a
 * token may hold (codec_visible, the check of answers and saved tokens). */
static int core_visible(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    lua_pushboolean(L, n > 0 && codec_visible(s, n));
    return 1;
}

/* core.spaceless(s): whether s is not empty and holds no space and no
 * control byte (0 to 32, 127): what a path or a token may hold. */
static int core_spaceless(lua_State *L)
{
    size_t n, i;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
    for (i = 0; i < n && s[i] > 32 && s[i] != 127; i++)
        ;
    lua_pushboolean(L, n > 0 && i == n);
    return 1;
}

#ifdef NOMBA_TEST_HOOKS

/* core._test.parse_time(s): ISO 8601 or HTTP-date to Unix seconds, or nil. */
static int core_parse_time(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    double t;
    if (nt_iso8601(s, n, &t) || nt_httpdate(s, n, &t)) {
        lua_pushnumber(L, t);
        return 1;
    }
    return 0;
}

/* core._test.retry_after(value[, now]): the seconds a Retry-After header asks
 * for (RFC 9110: digits, or an HTTP-date), or nil; the rule the token
 * operations use, for client:request too. */
static int core_retry_after(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    double t;
    if (nt_retry_after(s, n, luaL_optnumber(L, 2, nt_wall()), &t)) {
        lua_pushnumber(L, t);
        return 1;
    }
    return 0;
}

#include <string.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include <sys/wait.h>
#include <sys/resource.h>
/* Test build only: fork(), _exit() and waitpid() for the specs that check
 * what a child of fork may and may not touch, and a raised fd limit. */
static int test_fork(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)fork());
    return 1;
}

static int test_exit(lua_State *L)
{
    _exit((int)luaL_checkinteger(L, 1));
    return 0;
}

static int test_wait(lua_State *L)
{
    int st = 0;
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    if (waitpid(pid, &st, 0) != pid)
        return 0;
    lua_pushinteger(L, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    return 1;
}

/* A Lua allocator that wipes what it frees, around the state's own: the
 * memory-scan spec installs it so that the Lua strings a caller holds (the
 * secret it passed, the tokens it received) do not linger once collected,
 * and what the scan finds is what the library itself leaves behind. */
typedef struct {
    lua_Alloc f;
    void *ud;
} wipe_alloc;
static wipe_alloc wiping;

static void *wiping_lua_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    wipe_alloc *w = (wipe_alloc *)ud;
    void *q;
    if (ptr == NULL)
        return w->f(w->ud, NULL, osize, nsize);
    if (nsize <= osize) {
        OPENSSL_cleanse((char *)ptr + nsize, osize - nsize);
        return w->f(w->ud, ptr, osize, nsize);
    }
    q = w->f(w->ud, NULL, 0, nsize);
    if (q == NULL)
        return NULL;
    memcpy(q, ptr, osize);
    OPENSSL_cleanse(ptr, osize);
    (void)w->f(w->ud, ptr, osize, 0);
    return q;
}

/* The state must never be closed afterwards (lua_close unloads this module
 * before its last frees): the memory-scan tool leaves with os.exit. */
static int test_wiping_alloc(lua_State *L)
{
    if (wiping.f == NULL) {
        wiping.f = lua_getallocf(L, &wiping.ud);
        lua_setallocf(L, wiping_lua_alloc, &wiping);
    }
    return 0;
}

static int test_nofile(lua_State *L)
{
    struct rlimit r;
    rlim_t want = (rlim_t)luaL_checkinteger(L, 1);
    if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < want) {
        r.rlim_cur = want < r.rlim_max ? want : r.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &r);
    }
    (void)getrlimit(RLIMIT_NOFILE, &r);
    lua_pushinteger(L, (lua_Integer)r.rlim_cur);
    return 1;
}
#endif

__attribute__((visibility("default"))) int luaopen_nomba_oauth_core(lua_State *L);

int luaopen_nomba_oauth_core(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"now", core_now},
        {"time", core_time},
        {"sleep", core_sleep},
        {"json_decode", core_json_decode},
        {"spaceless", core_spaceless},
        {"visible", core_visible},
        {"hygiene", core_hygiene},
        {NULL, NULL}
    };
#ifdef NOMBA_TEST_HOOKS
    static const luaL_Reg test[] = {
        {"fork", test_fork},
        {"exit", test_exit},
        {"wait", test_wait},
        {"nofile", test_nofile},
        {"wiping_alloc", test_wiping_alloc},
        {"parse_time", core_parse_time},
        {"retry_after", core_retry_after},
        {NULL, NULL}
    };
#endif
    http_global_init();
    luaL_newlib(L, funcs);
#ifdef NOMBA_TEST_HOOKS
    luaL_newlib(L, test);               /* core._test: only in the test build */
    lua_setfield(L, -2, "_test");
#endif
    lua_pushliteral(L, "nomba.oauth " NOMBA_VERSION);
    lua_setfield(L, -2, "_VERSION");
    lua_createtable(L, 0, 7);           /* core.LIMITS: nomba.h's bounds, for the Lua layer */
    lua_pushnumber(L, NOMBA_MAX_TIMEOUT);
    lua_setfield(L, -2, "timeout");
    lua_pushnumber(L, NOMBA_MAX_LIFETIME);
    lua_setfield(L, -2, "lifetime");
    lua_pushinteger(L, (lua_Integer)NOMBA_MAX_RESPONSE);
    lua_setfield(L, -2, "response");
    lua_pushinteger(L, NOMBA_MAX_HEADERS);
    lua_setfield(L, -2, "headers");
    lua_pushinteger(L, NOMBA_MAX_ACCOUNT_ID);
    lua_setfield(L, -2, "account_id");
    lua_pushinteger(L, NOMBA_MAX_MESSAGE);
    lua_setfield(L, -2, "message");
    lua_pushinteger(L, NOMBA_MAX_JSON_DEPTH);
    lua_setfield(L, -2, "json_depth");
    lua_setfield(L, -2, "LIMITS");
    err_open(L);
    http_open(L);
    proto_open(L);
    client_open(L);
    token_open(L);
    seal_open(L);
    url_open(L);
    endpoint_open(L);
    head_open(L);
    frame_open(L);
    webhook_open(L);
    filestore_open(L);
    pkce_open(L);
    slot_open(L);
    return 1;
}
