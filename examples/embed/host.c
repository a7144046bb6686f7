/* A C program that embeds Lua 5.4 the way a game server or an app server
 * does: N threads, each with its own lua_State, each running a Lua script
 * that uses nomba.oauth. The main thread starts them, stops them cleanly
 * (at the end of their work, on SIGINT/SIGTERM, or after -d seconds) and
 * reports what each one did.
 *
 *   host [-t THREADS] [-n TOKENS] [-d SECONDS] [-s SCRIPT] [-S STORE]
 *   host -c CYCLES [-t THREADS] [-s SCRIPT]      (churn: states made and closed)
 *
 * STORE is how the states share one Nomba session: "file:DIR" (processes
 * and threads of one host) or "redis:PORT" (every host). Never a client
 * object passed between states: a client belongs to the state that made it.
 *
 * Churn mode makes CYCLES states across the threads (state created, module
 * required, a client used, lua_close), measures the process's RSS and open
 * descriptors after the first tenth and at the end, and fails when either
 * grew (fds by any, RSS by more than -r KiB, default 2048; -r -1 reports
 * RSS without judging it, for sanitizer builds whose allocator keeps memory).
 *
 * Build: make embed-demo (or make tsan, under ThreadSanitizer). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#define MAX_THREADS 64

static atomic_int stop_requested;      /* set by main, a signal or the deadline */
static atomic_int cycles_left;         /* churn mode: states still to make */
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *script = "examples/embed/worker.lua";
static const char *store = "";
static int tokens = 200;

typedef struct {
    int id;
    pthread_t th;
    int failed;
    char report[512];
} worker;

/* host_stop(): true once the host wants its threads to finish. The only
 * thing the states share with the host, and it is an atomic read. */
static int l_host_stop(lua_State *L)
{
    lua_pushboolean(L, atomic_load(&stop_requested) != 0);
    return 1;
}

/* One Lua state from start to lua_close: runs the script with
 * (thread, tokens, store) and keeps the string it returns, or the error. */
static int run_state(worker *w)
{
    int ok;
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        snprintf(w->report, sizeof w->report, "cannot create a Lua state");
        return 0;
    }
    luaL_openlibs(L);
    lua_pushcfunction(L, l_host_stop);
    lua_setglobal(L, "host_stop");
    ok = luaL_loadfile(L, script) == LUA_OK;
    if (ok) {
        lua_pushinteger(L, w->id);
        lua_pushinteger(L, tokens);
        lua_pushstring(L, store);
        ok = lua_pcall(L, 3, 1, 0) == LUA_OK;
    }
    snprintf(w->report, sizeof w->report, "%s",
             lua_isstring(L, -1) ? lua_tostring(L, -1) : "(no report)");
    lua_close(L);   /* the clients' __gc run here: secrets wiped, handles freed */
    return ok;
}

static void *thread_main(void *arg)
{
    worker *w = (worker *)arg;
    w->failed = !run_state(w);
    pthread_mutex_lock(&out_lock);
    printf("[thread %d] %s%s\n", w->id, w->failed ? "FAILED: " : "", w->report);
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
    return NULL;
}

static void *churn_main(void *arg)
{
    worker *w = (worker *)arg;
    while (!w->failed && atomic_fetch_sub(&cycles_left, 1) > 0)
        w->failed = !run_state(w);
    if (w->failed) {
        pthread_mutex_lock(&out_lock);
        printf("[thread %d] FAILED: %s\n", w->id, w->report);
        pthread_mutex_unlock(&out_lock);
    }
    return NULL;
}

static void on_signal(int sig)
{
    (void)sig;
    atomic_store(&stop_requested, 1);
}

static long rss_kib(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f != NULL) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static int open_fds(void)
{
    int n = 0;
    struct dirent *e;
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1;   /* the directory's own descriptor */
}

/* Runs `cycles` states over the threads and joins them; 0 when one failed. */
static int churn_round(worker *ws, int nthreads, int cycles)
{
    int i, ok = 1;
    atomic_store(&cycles_left, cycles);
    for (i = 0; i < nthreads; i++)
        pthread_create(&ws[i].th, NULL, churn_main, &ws[i]);
    for (i = 0; i < nthreads; i++) {
        pthread_join(ws[i].th, NULL);
        ok = ok && !ws[i].failed;
    }
    return ok;
}

static int usage(void)
{
    fprintf(stderr, "usage: host [-t THREADS] [-n TOKENS] [-d SECONDS] [-s SCRIPT] [-S STORE]\n"
                    "       host -c CYCLES [-t THREADS] [-s SCRIPT] [-r RSS_KIB]\n");
    return 2;
}

int main(int argc, char **argv)
{
    worker ws[MAX_THREADS];
    int nthreads = 4, cycles = 0, seconds = 0, rss_slack = 2048, opt, i, failed = 0;
    struct sigaction sa;

    while ((opt = getopt(argc, argv, "t:n:d:s:S:c:r:")) != -1) {
        switch (opt) {
        case 't': nthreads = atoi(optarg); break;
        case 'n': tokens = atoi(optarg); break;
        case 'd': seconds = atoi(optarg); break;
        case 's': script = optarg; break;
        case 'S': store = optarg; break;
        case 'c': cycles = atoi(optarg); break;
        case 'r': rss_slack = atoi(optarg); break;
        default: return usage();
        }
    }
    if (nthreads < 1 || nthreads > MAX_THREADS || tokens < 1 || cycles < 0 || seconds < 0)
        return usage();
    memset(ws, 0, sizeof ws);
    for (i = 0; i < nthreads; i++)
        ws[i].id = i + 1;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    if (cycles > 0) {
        int warm = cycles / 10 > nthreads ? cycles / 10 : nthreads;
        long rss0, rss1;
        int fd0, fd1;
        if (!churn_round(ws, nthreads, warm))
            return 1;
        rss0 = rss_kib();
        fd0 = open_fds();
        if (!churn_round(ws, nthreads, cycles - warm))
            return 1;
        rss1 = rss_kib();
        fd1 = open_fds();
        printf("churn: %d states on %d threads; after %d: RSS %ld KiB, %d fds; "
               "after %d: RSS %ld KiB (%+ld), %d fds (%+d)\n",
               cycles, nthreads, warm, rss0, fd0, cycles, rss1, rss1 - rss0, fd1, fd1 - fd0);
        if (fd1 != fd0 || (rss_slack >= 0 && rss1 - rss0 > rss_slack)) {
            printf("churn: FAILED (RSS may grow by %d KiB at most, fds not at all)\n", rss_slack);
            return 1;
        }
        return 0;
    }

    for (i = 0; i < nthreads; i++)
        if (pthread_create(&ws[i].th, NULL, thread_main, &ws[i]) != 0) {
            fprintf(stderr, "host: pthread_create: %s\n", strerror(errno));
            return 1;
        }
    if (seconds > 0) {
        /* the deadline: ask the states to finish, then wait for them */
        struct timespec t = { seconds, 0 };
        while (nanosleep(&t, &t) != 0 && errno == EINTR && !atomic_load(&stop_requested))
            ;
        atomic_store(&stop_requested, 1);
    }
    for (i = 0; i < nthreads; i++) {
        pthread_join(ws[i].th, NULL);
        failed += ws[i].failed;
    }
    printf("host: %d threads stopped, %d failed\n", nthreads, failed);
    return failed ? 1 : 0;
}
