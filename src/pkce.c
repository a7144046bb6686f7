/*
 * pkce.c: RFC 7636 helpers (oauth.pkce.*) on OpenSSL.
 *
 * A verifier of length L is the first L characters of base64url(ceil(6L/8)
 * random bytes): each character then carries six fresh random bits, so every
 * symbol is uniform over the 64-character alphabet (no modulo bias, no
 * half-filled last character).
 *
 * Per Lua state, one userdata (the upvalue of every PKCE function) holds:
 *   - the SHA-256 EVP_MD, fetched once (an implicit fetch per digest is what
 *     makes OpenSSL 3's one-shot SHA256() slow); freed by __gc, so nothing is
 *     left behind when the state closes and the module is unloaded;
 *   - a pool of random bytes from RAND_bytes (OpenSSL's CSPRNG), drawn a page
 *     at a time. Fork safety: the pool is its own page marked
 *     MADV_WIPEONFORK, so a forked child sees it zeroed (length 0) and draws
 *     its own; where the kernel lacks that flag, the pool remembers the pid
 *     that filled it and a child discards it. A byte handed out is wiped from
 *     the pool, so no byte is ever used twice, in one process or across fork.
 */
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include "nomba.h"

#define VERIFIER_MIN 43
#define VERIFIER_MAX 128
#define STATE_MT "nomba.oauth.pkce"
#define POOL_SIZE 4096

typedef struct {
    size_t off, len;        /* zero after fork when MADV_WIPEONFORK holds */
    unsigned char bytes[POOL_SIZE - 2 * sizeof(size_t)];
} rand_pool;

typedef struct {
    EVP_MD *fetched;        /* owned (OpenSSL 3) */
    const EVP_MD *md;       /* what we digest with */
    rand_pool *pool;        /* one mmap'd page, or NULL: RAND_bytes per call */
    int wipeonfork;         /* the kernel wipes the pool in a child */
    pid_t pid;              /* who filled the pool (when it does not) */
} pkce_state;

static int state__gc(lua_State *L)
{
    pkce_state *st = (pkce_state *)luaL_checkudata(L, 1, STATE_MT);
    nomba_free_md(st->fetched);
    st->fetched = NULL;
    st->md = NULL;
    if (st->pool != NULL) {
        OPENSSL_cleanse(st->pool, sizeof *st->pool);
        munmap(st->pool, sizeof *st->pool);
        st->pool = NULL;
    }
    return 0;
}

static void state_push(lua_State *L)
{
    pkce_state *st = (pkce_state *)lua_newuserdata(L, sizeof *st);
    void *page;
    memset(st, 0, sizeof *st);
    if (luaL_newmetatable(L, STATE_MT)) {
        lua_pushcfunction(L, state__gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    st->fetched = nomba_fetch_sha256();
    st->md = st->fetched;
    if (st->md == NULL)
        st->md = EVP_sha256();
    page = mmap(NULL, sizeof(rand_pool), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page != MAP_FAILED) {
        st->pool = (rand_pool *)page;
#ifdef MADV_WIPEONFORK
        st->wipeonfork = madvise(page, sizeof(rand_pool), MADV_WIPEONFORK) == 0;
#endif
        (void)madvise(page, sizeof(rand_pool), MADV_DONTDUMP);
    }
}

static pkce_state *state_of(lua_State *L)
{
    return (pkce_state *)lua_touserdata(L, lua_upvalueindex(1));
}

/* n fresh random bytes into out; 0 when the CSPRNG fails. */
static int take_random(pkce_state *st, unsigned char *out, size_t n)
{
    rand_pool *p = st->pool;
    if (p == NULL || n > sizeof p->bytes) {
        if (RAND_bytes(out, (int)n) == 1)
            return 1;
        ERR_clear_error();
        return 0;
    }
    if (!st->wipeonfork && st->pid != getpid())
        p->len = p->off = 0;               /* filled by another process */
    if (p->len - p->off < n) {
        if (RAND_bytes(p->bytes, (int)sizeof p->bytes) != 1) {
            ERR_clear_error();
            p->len = p->off = 0;
            return 0;
        }
        p->len = sizeof p->bytes;
        p->off = 0;
        if (!st->wipeonfork)
            st->pid = getpid();
    }
    memcpy(out, p->bytes + p->off, n);
    OPENSSL_cleanse(p->bytes + p->off, n);
    p->off += n;
    return 1;
}

/* RFC 7636 section 4.1: 43..128 characters of [A-Za-z0-9-._~]. */
int pkce_valid_verifier(const char *s, size_t n)
{
    size_t i;
    if (n < VERIFIER_MIN || n > VERIFIER_MAX)
        return 0;
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '.' || ch == '_' || ch == '~'))
            return 0;
    }
    return 1;
}

static int check_length(lua_State *L, int idx)
{
    lua_Integer len = luaL_optinteger(L, idx, VERIFIER_MIN);
    if (len < VERIFIER_MIN || len > VERIFIER_MAX || (lua_Number)len != luaL_optnumber(L, idx, VERIFIER_MIN))
        luaL_argerror(L, idx, "length must be an integer from 43 to 128");
    return (int)len;
}

/* Writes a fresh verifier of `len` characters into out; 0 on RNG failure. */
static int make_verifier(pkce_state *st, char *out, int len)
{
    unsigned char raw[96];
    char enc[132];
    size_t nbytes = ((size_t)len * 6 + 7) / 8;
    if (!take_random(st, raw, nbytes))
        return 0;
    codec_b64_encode(raw, nbytes, enc, 1);
    memcpy(out, enc, (size_t)len);
    OPENSSL_cleanse(raw, nbytes);
    OPENSSL_cleanse(enc, (size_t)len + 4);
    return 1;
}

/* S256 challenge of a verifier into out (43 characters). */
static int s256(const EVP_MD *alg, const char *v, size_t n, char *out)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(v, n, md, &mdlen, alg, NULL) != 1 || mdlen != 32) {
        ERR_clear_error();
        return 0;
    }
    codec_b64_encode(md, 32, out, 1);
    return 1;
}

static int method_of(lua_State *L, int idx)
{
    static const char *const methods[] = {"S256", "plain", NULL};
    return luaL_checkoption(L, idx, "S256", methods);
}

static const char *check_verifier(lua_State *L, int idx, size_t *n)
{
    const char *v = luaL_checklstring(L, idx, n);
    if (!pkce_valid_verifier(v, *n))
        luaL_argerror(L, idx, "verifier must be 43 to 128 characters of [A-Za-z0-9-._~]");
    return v;
}

/* oauth.pkce.verifier([length]) */
static int pkce_verifier(lua_State *L)
{
    char v[VERIFIER_MAX];
    int len = check_length(L, 1);
    if (!make_verifier(state_of(L), v, len))
        return luaL_error(L, "nomba.oauth: the OpenSSL random generator failed");
    lua_pushlstring(L, v, (size_t)len);
    OPENSSL_cleanse(v, sizeof v);
    return 1;
}

/* oauth.pkce.challenge(verifier[, method]) */
static int pkce_challenge(lua_State *L)
{
    size_t n;
    const char *v = check_verifier(L, 1, &n);
    char ch[44];
    if (method_of(L, 2) == 1) {
        lua_pushvalue(L, 1);
        return 1;
    }
    if (!s256(state_of(L)->md, v, n, ch))
        return luaL_error(L, "nomba.oauth: SHA-256 failed");
    lua_pushlstring(L, ch, 43);
    return 1;
}

/* oauth.pkce.pair([length]) -> verifier, S256 challenge */
static int pkce_pair(lua_State *L)
{
    char v[VERIFIER_MAX], ch[44];
    int len = check_length(L, 1);
    if (!make_verifier(state_of(L), v, len))
        return luaL_error(L, "nomba.oauth: the OpenSSL random generator failed");
    if (!s256(state_of(L)->md, v, (size_t)len, ch))
        return luaL_error(L, "nomba.oauth: SHA-256 failed");
    lua_pushlstring(L, v, (size_t)len);
    lua_pushlstring(L, ch, 43);
    OPENSSL_cleanse(v, sizeof v);
    return 2;
}

/* oauth.pkce.verify(verifier, challenge[, method]) -> boolean, in constant
 * time for a given length. An invalid verifier simply does not verify. */
static int pkce_verify(lua_State *L)
{
    size_t n, cn;
    const char *v = luaL_checklstring(L, 1, &n);
    const char *c = luaL_checklstring(L, 2, &cn);
    int plain = method_of(L, 3) == 1;
    char ch[44];
    if (!pkce_valid_verifier(v, n)) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (plain) {
        lua_pushboolean(L, cn == n && CRYPTO_memcmp(v, c, n) == 0);
        return 1;
    }
    if (!s256(state_of(L)->md, v, n, ch))
        return luaL_error(L, "nomba.oauth: SHA-256 failed");
    lua_pushboolean(L, cn == 43 && CRYPTO_memcmp(ch, c, 43) == 0);
    return 1;
}

/* core.pkce_valid(s): whether s is a valid RFC 7636 verifier. */
static int pkce_valid(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    lua_pushboolean(L, pkce_valid_verifier(s, n));
    return 1;
}

#ifdef NOMBA_TEST_HOOKS
#include <sys/wait.h>
/* core._test.fork_verifiers(): a verifier drawn in this process and one
 * drawn in a child forked right now. Compiled only into the test build. */
static int pkce_test_fork(lua_State *L)
{
    pkce_state *st = state_of(L);
    char mine[VERIFIER_MIN], theirs[VERIFIER_MIN], warm[VERIFIER_MIN];
    int fd[2], status;
    pid_t pid;
    ssize_t got = 0;
    /* draw once first, so the parent's pool holds unused bytes at fork */
    if (!make_verifier(st, warm, VERIFIER_MIN) || pipe(fd) != 0)
        return luaL_error(L, "setup failed");
    pid = fork();
    if (pid < 0)
        return luaL_error(L, "fork failed");
    if (pid == 0) {
        char v[VERIFIER_MIN];
        int ok = make_verifier(st, v, VERIFIER_MIN);
        close(fd[0]);
        if (ok && write(fd[1], v, sizeof v) != (ssize_t)sizeof v)
            ok = 0;
        _exit(ok ? 0 : 1);
    }
    close(fd[1]);
    if (!make_verifier(st, mine, VERIFIER_MIN))
        return luaL_error(L, "RNG failed");
    while (got < (ssize_t)sizeof theirs) {
        ssize_t r = read(fd[0], theirs + got, sizeof theirs - (size_t)got);
        if (r <= 0)
            break;
        got += r;
    }
    close(fd[0]);
    waitpid(pid, &status, 0);
    if (got != (ssize_t)sizeof theirs)
        return luaL_error(L, "the child drew no verifier");
    lua_pushlstring(L, mine, sizeof mine);
    lua_pushlstring(L, theirs, sizeof theirs);
    lua_pushboolean(L, st->wipeonfork);
    return 3;
}
#endif

void pkce_open(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"verifier", pkce_verifier},
        {"challenge", pkce_challenge},
        {"pair", pkce_pair},
        {"verify", pkce_verify},
        {NULL, NULL}
    };
    lua_createtable(L, 0, 4);
    state_push(L);
    luaL_setfuncs(L, funcs, 1);
    lua_setfield(L, -2, "pkce");
    lua_pushcfunction(L, pkce_valid);
    lua_setfield(L, -2, "pkce_valid");
#ifdef NOMBA_TEST_HOOKS
    lua_getfield(L, -1, "_test");
    lua_getfield(L, -2, "pkce");
    lua_getfield(L, -1, "pair");
    lua_getupvalue(L, -1, 1);               /* module, _test, pkce, pair, state */
    lua_pushcclosure(L, pkce_test_fork, 1);
    lua_setfield(L, -4, "fork_verifiers");
    lua_pop(L, 3);
#endif
}
