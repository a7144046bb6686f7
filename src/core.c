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

/* core.parse_time(s): ISO 8601 or HTTP-date to Unix seconds, or nil. */
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

/* core.retry_after(value[, now]): seconds to wait, or nil. */
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

#ifdef NOMBA_TEST_HOOKS
#include <unistd.h>
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
        {"parse_time", core_parse_time},
        {"retry_after", core_retry_after},
#ifdef NOMBA_TEST_HOOKS
        {"_test_fork", test_fork},
        {"_test_exit", test_exit},
        {"_test_wait", test_wait},
        {"_test_nofile", test_nofile},
#endif
        {NULL, NULL}
    };
    http_global_init();
    luaL_newlib(L, funcs);
    lua_pushliteral(L, "nomba.oauth " NOMBA_VERSION);
    lua_setfield(L, -2, "_VERSION");
    lua_createtable(L, 0, 5);           /* core.LIMITS: nomba.h's bounds, for the Lua layer */
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
    lua_setfield(L, -2, "LIMITS");
    err_open(L);
    http_open(L);
    proto_open(L);
    client_open(L);
    seal_open(L);
    url_open(L);
    pkce_open(L);
    return 1;
}
