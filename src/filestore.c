/*
 * filestore.c: the file system under oauth.store.file, for every process
 * of one host (nomba/oauth/store.lua holds the store's logic).
 *
 *   core.fs_dir(path)               -> dir | nil, why    (creates it 0700; refuses a
 *                                      symlink, another owner, group/other write)
 *   core.fs_read(dir, name, max)    -> content | nothing | nil, why   (nothing: absent,
 *                                      unreadable or over max)
 *   core.fs_write(dir, name, data)  -> true | nil, why   (temporary file 0600, fsync,
 *                                      atomic rename, fsync of the directory)
 *   core.fs_remove(dir, name)       -> true | nil, why
 *   core.fs_trylock(dir, name)      -> lock | false | nil, why   (flock LOCK_EX|LOCK_NB)
 *   core.fs_lockwait(dir, name, s)  -> lock | nil, why   (waits at most s seconds)
 *   core.fs_unlock(lock)            -> true   (also its __gc)
 *   core.fs_name(key)               -> the name of a key's files, without their prefix
 *   core.fs_sweep(dir)              -> how many temporary files a crash left were removed
 *   core.fs_clock()                 -> clock id | nil, boot seconds, wall seconds
 *
 * Expiries are judged on the boot clock (CLOCK_BOOTTIME; CLOCK_MONOTONIC
 * where it is missing), which no wall-clock step moves (NTP, a resumed VM,
 * date -s) and which every process of the host shares. Its seconds mean
 * something only within one boot, so fs_clock names it: the kernel's boot
 * id (/proc/sys/kernel/random/boot_id, read once), with "+m" added when
 * the monotonic clock stands in; nil when the boot id cannot be read. The
 * store keeps a wall-clock expiry too, for a reader of another boot.
 *
 * `dir` is the directory held open (a "nomba.oauth.FileDir" userdata, whose
 * __gc closes it): fs_dir opens it O_DIRECTORY | O_NOFOLLOW once and checks
 * that descriptor, and every later operation works relative to it (openat,
 * renameat, unlinkat, fstatat), so a path swapped for a symbolic link later
 * never sends a file elsewhere. Before each operation the path must still
 * name that directory (lstat: a directory, same device and inode), else the
 * operation fails with "the store directory DIR was replaced" (a relative
 * path is kept from the working directory fs_dir ran in). A process
 * forked after fs_dir shares the descriptor; that is fine, as nothing reads
 * through its file offset (the sweep opens "." afresh).
 *
 * A key's name is the key itself when it is plain ([A-Za-z0-9_:.-], at most
 * 180 bytes, not starting with '.'), else '=' and the hex of its SHA-256:
 * names never collide, and the store keeps the key in the file and checks
 * it on read anyway. Files are named by kind, so no kind's name is
 * another's: "v-NAME" holds a value, "l-NAME" is a lock, "t-NAME.PID.N" a
 * value being written (N counts this process's writes: two threads never
 * share one). Names are [A-Za-z0-9._:=-], at most 200 bytes, not starting
 * with '.'. Every file is opened O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK |
 * O_NOCTTY and fstat'd: anything but a regular file (a FIFO, whose open or
 * read would block forever, a device, a socket) is a miss to read and an
 * error to write or lock (O_NONBLOCK changes nothing for a regular file,
 * so it stays set). A lock is an
 * flock() on a lock file: the kernel releases it when its holder dies, so
 * a crashed holder never blocks the others.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <dirent.h>
#include <signal.h>
#include <time.h>
#include <pthread.h>
#include <openssl/evp.h>
#include "nomba.h"

#define NAME_MAX_LEN 200
#define LOCK_MT "nomba.oauth.FileLock"
#define DIR_MT "nomba.oauth.FileDir"

/* The store's directory, held open; path names it (absolute when getcwd() could tell). */
typedef struct {
    int fd;                 /* -1: closed */
    dev_t dev;
    ino_t ino;
    char path[];
} store_dir;

static const char *check_name(lua_State *L, int idx)
{
    size_t n, i;
    const char *s = luaL_checklstring(L, idx, &n);
    if (n == 0 || n > NAME_MAX_LEN || s[0] == '.')
        luaL_argerror(L, idx, "bad store file name");
    for (i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == ':' || ch == '-' || ch == '='))
            luaL_argerror(L, idx, "bad store file name");
    }
    return s;
}

/* Argument 1, the directory, when its path still names the directory held
 * open; else NULL with nil and why pushed (no secret: the path only). */
static store_dir *dir_arg(lua_State *L)
{
    store_dir *d = (store_dir *)luaL_checkudata(L, 1, DIR_MT);
    struct stat st;
    int e = 0;
    if (d->fd >= 0) {
        if (lstat(d->path, &st) != 0)
            e = errno;
        else if (S_ISDIR(st.st_mode) && st.st_dev == d->dev && st.st_ino == d->ino)
            return d;
    }
    lua_pushnil(L);
    if (d->fd < 0)
        lua_pushliteral(L, "the store directory is closed");
    else if (e != 0 && e != ENOENT && e != ENOTDIR)
        lua_pushfstring(L, "cannot check the store directory %s: %s", d->path, strerror(e));
    else
        lua_pushfstring(L, "the store directory %s was replaced", d->path);
    return NULL;
}

/* How every store file is opened: never through a link, never blocking
 * (a FIFO's open waits for a peer), never a controlling terminal. */
#define OPEN_FLAGS (O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)

/* fd, when it is a regular file; else -1, fd closed. */
static int regular_or_close(int fd)
{
    struct stat st;
    if (fd >= 0 && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))) {
        close(fd);
        return -1;
    }
    return fd;
}

static int fail_errno(lua_State *L, const char *what)
{
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", what, strerror(errno));
    return 2;
}

static int dir_gc(lua_State *L)
{
    store_dir *d = (store_dir *)luaL_checkudata(L, 1, DIR_MT);
    if (d->fd >= 0)
        close(d->fd);
    d->fd = -1;
    return 0;
}

/* The userdata is closed (fd -1) until every check passed, so a refused
 * directory's half-built handle is a valid closed one for __gc. */
static int fs_dir(lua_State *L)
{
    size_t n, cn = 0;
    const char *dir = luaL_checklstring(L, 1, &n);
    char cwd[4096];
    struct stat st, fst;
    store_dir *d;
    if (strlen(dir) != n)
        luaL_argerror(L, 1, "the store directory's path holds a NUL");
    /* a relative path is kept from the working directory of now: a later
     * chdir() must not make the check look elsewhere */
    if (dir[0] != '/' && getcwd(cwd, sizeof cwd) != NULL) {
        cn = strlen(cwd);
        if (cn == 0 || cwd[cn - 1] != '/')
            cwd[cn++] = '/';
    }
    d = (store_dir *)lua_newuserdata(L, sizeof *d + cn + n + 1);
    d->fd = -1;
    memcpy(d->path, cwd, cn);
    memcpy(d->path + cn, dir, n + 1);
    dir = d->path;
    luaL_getmetatable(L, DIR_MT);
    lua_setmetatable(L, -2);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return fail_errno(L, "cannot create the store directory");
    if (lstat(dir, &st) != 0)
        return fail_errno(L, "cannot stat the store directory");
    lua_pushnil(L);
    if (S_ISLNK(st.st_mode)) {
        lua_pushliteral(L, "the store directory is a symbolic link");
        return 2;
    }
    if (!S_ISDIR(st.st_mode)) {
        lua_pushliteral(L, "the store directory is not a directory");
        return 2;
    }
    lua_pop(L, 1);
    d->fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (d->fd < 0)
        return fail_errno(L, "cannot open the store directory");
    if (fstat(d->fd, &fst) != 0)
        return fail_errno(L, "cannot stat the store directory");
    lua_pushnil(L);
    /* what is checked is what was opened */
    if (fst.st_dev != st.st_dev || fst.st_ino != st.st_ino)
        lua_pushliteral(L, "the store directory was replaced while it was opened");
    else if (fst.st_uid != geteuid())
        lua_pushliteral(L, "the store directory belongs to another user");
    else if (fst.st_mode & (S_IWGRP | S_IWOTH))
        lua_pushliteral(L, "the store directory is writable by other users");
    else {
        lua_pop(L, 1);
        d->dev = fst.st_dev;
        d->ino = fst.st_ino;
        return 1;
    }
    close(d->fd);
    d->fd = -1;
    return 2;
}

static int fs_read(lua_State *L)
{
    store_dir *d = dir_arg(L);
    const char *name = check_name(L, 2);
    lua_Integer max = luaL_checkinteger(L, 3);
    luaL_Buffer b;
    int fd;
    ssize_t r;
    size_t total = 0;
    if (d == NULL)
        return 2;
    fd = regular_or_close(openat(d->fd, name, O_RDONLY | OPEN_FLAGS));
    if (fd < 0)
        return 0;
    luaL_buffinit(L, &b);
    for (;;) {
        char chunk[4096];
        r = read(fd, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        total += (size_t)r;
        if ((lua_Integer)total > max) {
            close(fd);
            return 0;
        }
        luaL_addlstring(&b, chunk, (size_t)r);
    }
    close(fd);
    if (r < 0)
        return 0;
    luaL_pushresult(&b);
    return 1;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return 0;
        p += w;
        n -= (size_t)w;
    }
    return 1;
}

static int fs_write(lua_State *L)
{
    store_dir *d = dir_arg(L);
    const char *name = check_name(L, 2);
    char tmp[NAME_MAX_LEN + 64];
    size_t n;
    const char *data = luaL_checklstring(L, 3, &n);
    int fd, ok;
    static unsigned long writes;
    if (d == NULL)
        return 2;
    (void)snprintf(tmp, sizeof tmp, "t-%s.%ld.%lu", name, (long)getpid(),
                   __atomic_add_fetch(&writes, 1, __ATOMIC_RELAXED));
    fd = openat(d->fd, tmp, O_WRONLY | O_CREAT | O_TRUNC | OPEN_FLAGS, 0600);
    if (fd >= 0 && (fd = regular_or_close(fd)) < 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "cannot write the store file: it is not a regular file");
        return 2;
    }
    if (fd < 0)
        return fail_errno(L, "cannot write the store file");
    ok = write_all(fd, data, n) && fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    if (!ok || renameat(d->fd, tmp, d->fd, name) != 0) {
        int e = errno;
        (void)unlinkat(d->fd, tmp, 0);
        errno = e;
        return fail_errno(L, "cannot write the store file");
    }
    (void)fsync(d->fd);
    lua_pushboolean(L, 1);
    return 1;
}

static int fs_remove(lua_State *L)
{
    store_dir *d = dir_arg(L);
    const char *name = check_name(L, 2);
    if (d == NULL)
        return 2;
    (void)unlinkat(d->fd, name, 0);
    lua_pushboolean(L, 1);
    return 1;
}

static int lock_file(lua_State *L, int how)
{
    store_dir *d = dir_arg(L);
    const char *name = check_name(L, 2);
    int fd;
    if (d == NULL)
        return 2;
    fd = openat(d->fd, name, O_RDWR | O_CREAT | OPEN_FLAGS, 0600);
    if (fd >= 0 && (fd = regular_or_close(fd)) < 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "the lock file is not a regular file");
        return 2;
    }
    if (fd < 0)
        return fail_errno(L, "cannot open the lock file");
    while (flock(fd, how) != 0) {
        if (errno == EINTR)
            continue;
        close(fd);
        if (errno == EWOULDBLOCK) {
            lua_pushboolean(L, 0);
            return 1;
        }
        return fail_errno(L, "cannot lock");
    }
    *(int *)lua_newuserdata(L, sizeof(int)) = fd;
    luaL_getmetatable(L, LOCK_MT);
    lua_setmetatable(L, -2);
    return 1;
}

static int fs_trylock(lua_State *L)
{
    return lock_file(L, LOCK_EX | LOCK_NB);
}

/* The lock, waited for up to `seconds` (argument 3): a holder that hangs
 * (stopped, say) never blocks the caller past that. */
static int fs_lockwait(lua_State *L)
{
    double deadline = nt_mono() + luaL_checknumber(L, 3);
    struct timespec pause = {0, 2000000};   /* 2 ms */
    for (;;) {
        int r = lock_file(L, LOCK_EX | LOCK_NB);
        if (!lua_isboolean(L, -1) || nt_mono() >= deadline)
            break;
        lua_pop(L, r);
        (void)nanosleep(&pause, NULL);
    }
    if (lua_isboolean(L, -1)) {
        lua_pop(L, 1);
        lua_pushnil(L);
        lua_pushliteral(L, "the store's lock was held past the deadline");
        return 2;
    }
    return lua_gettop(L) - 3;
}

/* Closing the descriptor releases the flock; a lock object that is
 * collected without unlock releases it too. */
static int fs_unlock(lua_State *L)
{
    int *fd = (int *)luaL_checkudata(L, 1, LOCK_MT);
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
    lua_pushboolean(L, 1);
    return 1;
}

/* core.fs_sweep(dir): removes the temporary files ("t-NAME.PID.N") that
 * processes killed between write and rename left behind (each a sealed
 * copy of a token): those whose process is gone, and any over ten minutes
 * old (a write renames its file within milliseconds). */
#define SWEEP_AGE 600

/* Whether process pid is gone: no such process, or a zombie nobody reaped. */
static int process_gone(long pid)
{
    char path[64], stat[256];
    int fd;
    ssize_t n;
    const char *close_paren;
    if (kill((pid_t)pid, 0) != 0)
        return errno == ESRCH;
    (void)snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return 0;
    n = read(fd, stat, sizeof stat - 1);
    close(fd);
    if (n <= 0)
        return 0;
    stat[n] = '\0';
    close_paren = strrchr(stat, ')');          /* "pid (comm) S ...": comm may hold spaces */
    return close_paren != NULL && close_paren[1] == ' ' && close_paren[2] == 'Z';
}

static int fs_sweep(lua_State *L)
{
    store_dir *sd = dir_arg(L);
    DIR *d;
    struct dirent *e;
    time_t now = time(NULL);
    int removed = 0, fd;
    if (sd == NULL) {
        lua_pushinteger(L, 0);
        return 1;
    }
    /* a descriptor of its own: a dup would share (with forked copies too)
     * the offset readdir moves */
    fd = openat(sd->fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    d = fd >= 0 ? fdopendir(fd) : NULL;
    if (d == NULL) {
        if (fd >= 0)
            close(fd);
        lua_pushinteger(L, 0);
        return 1;
    }
    while ((e = readdir(d)) != NULL) {
        const char *dot;
        long pid;
        struct stat st;
        int gone;
        if (strncmp(e->d_name, "t-", 2) != 0)
            continue;
        /* the pid is the second last dot-separated part */
        dot = strrchr(e->d_name, '.');
        if (dot == NULL || dot == e->d_name)
            continue;
        {
            const char *p = dot - 1;
            while (p > e->d_name && *p != '.')
                p--;
            pid = *p == '.' ? strtol(p + 1, NULL, 10) : 0;
        }
        gone = pid > 0 && process_gone(pid);
        if (!gone && (fstatat(sd->fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
                      now - st.st_mtime < SWEEP_AGE))
            continue;
        if (unlinkat(sd->fd, e->d_name, 0) == 0)
            removed++;
    }
    closedir(d);
    lua_pushinteger(L, removed);
    return 1;
}

/* core.fs_name(key): the key when plain, else '=' and its SHA-256 in hex. */
static int fs_name(lua_State *L)
{
    size_t n, i;
    const char *k = luaL_checklstring(L, 1, &n);
    int plain = n > 0 && n <= 180 && k[0] != '.';
    for (i = 0; plain && i < n; i++) {
        char ch = k[i];
        plain = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' ||
                ch == '_' || ch == ':' || ch == '-';
    }
    if (plain) {
        lua_pushvalue(L, 1);
    } else {
        static const char hex[] = "0123456789abcdef";
        unsigned char md[32];
        char out[65];
        unsigned int mn = 0;
        if (EVP_Digest(k, n, md, &mn, EVP_sha256(), NULL) != 1 || mn != 32)
            return luaL_error(L, "nomba.oauth.store.file: SHA-256 failed");
        out[0] = '=';
        for (i = 0; i < 32; i++) {
            out[1 + 2 * i] = hex[md[i] >> 4];
            out[2 + 2 * i] = hex[md[i] & 15];
        }
        lua_pushlstring(L, out, 65);
    }
    return 1;
}

/* The boot id, "" when unknown; read once per process (it never changes
 * while a process lives). */
static pthread_once_t boot_once = PTHREAD_ONCE_INIT;
static char boot_id[40];

static void boot_id_read(void)
{
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC | O_NOCTTY);
    ssize_t n = -1, i;
    if (fd >= 0) {
        n = read(fd, boot_id, 36);
        close(fd);
    }
    for (i = 0; n == 36 && i < 36; i++) {
        char ch = boot_id[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || ch == '-'))
            n = -1;
    }
    boot_id[n == 36 ? 36 : 0] = '\0';
}

static int fs_clock(lua_State *L)
{
    struct timespec ts;
    int boottime = 0;
    (void)pthread_once(&boot_once, boot_id_read);
#ifdef CLOCK_BOOTTIME
    boottime = clock_gettime(CLOCK_BOOTTIME, &ts) == 0;
#endif
    if (!boottime)
        clock_gettime(CLOCK_MONOTONIC, &ts);
    if (boot_id[0] == '\0')
        lua_pushnil(L);
    else if (boottime)
        lua_pushstring(L, boot_id);
    else
        lua_pushfstring(L, "%s+m", boot_id);
    lua_pushnumber(L, (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9);
    lua_pushnumber(L, nt_wall());
    return 3;
}

void filestore_open(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"fs_name", fs_name},
        {"fs_sweep", fs_sweep},
        {"fs_dir", fs_dir},
        {"fs_read", fs_read},
        {"fs_write", fs_write},
        {"fs_remove", fs_remove},
        {"fs_trylock", fs_trylock},
        {"fs_lockwait", fs_lockwait},
        {"fs_unlock", fs_unlock},
        {"fs_clock", fs_clock},
        {NULL, NULL}
    };
    luaL_newmetatable(L, LOCK_MT);
    lua_pushcfunction(L, fs_unlock);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    luaL_newmetatable(L, DIR_MT);
    lua_pushcfunction(L, dir_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    luaL_setfuncs(L, funcs, 0);
}
