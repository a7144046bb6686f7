/*
 * pkce.c: RFC 7636 helpers (oauth.pkce.*) on OpenSSL.
 *
 * Randomness comes straight from RAND_bytes (OpenSSL's CSPRNG, which
 * reseeds itself in a forked child), never buffered here, so a child can
 * never reuse bytes its parent also used. A verifier of length L is the
 * first L characters of base64url(ceil(6L/8) random bytes): each character
 * then carries six fresh random bits, so every symbol is uniform over the
 * 64-character alphabet (no modulo bias, no half-filled last character).
 * The SHA-256 EVP_MD is fetched once per Lua state and kept in a userdata
 * that is the upvalue of every PKCE function; its __gc frees it, so nothing
 * is left behind when the state closes and the module is unloaded.
 */
#include <string.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include "nomba.h"

#define VERIFIER_MIN 43
#define VERIFIER_MAX 128

#define MD_MT "nomba.oauth.sha256"

typedef struct {
    EVP_MD *fetched;        /* owned: freed by __gc (OpenSSL 3) */
    const EVP_MD *md;       /* what we digest with */
} md_box;

static int md__gc(lua_State *L)
{
    md_box *b = (md_box *)luaL_checkudata(L, 1, MD_MT);
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    EVP_MD_free(b->fetched);
#endif
    b->fetched = NULL;
    b->md = NULL;
    return 0;
}

/* Pushes a box holding the SHA-256 EVP_MD, fetched once (an implicit fetch
 * on every digest is what makes OpenSSL 3's one-shot SHA256() slow). */
static void md_push(lua_State *L)
{
    md_box *b = (md_box *)lua_newuserdata(L, sizeof *b);
    b->fetched = NULL;
    b->md = NULL;
    if (luaL_newmetatable(L, MD_MT)) {
        lua_pushcfunction(L, md__gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    b->fetched = EVP_MD_fetch(NULL, "SHA256", NULL);
    b->md = b->fetched;
#endif
    if (b->md == NULL)
        b->md = EVP_sha256();
}

static const EVP_MD *md_of(lua_State *L)
{
    return ((md_box *)lua_touserdata(L, lua_upvalueindex(1)))->md;
}

static const char b64url[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* base64url without padding; out needs 4 * ceil(n / 3) bytes. */
static size_t b64url_encode(const unsigned char *in, size_t n, char *out)
{
    size_t i, o = 0;
    for (i = 0; i + 2 < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64url[v >> 18];
        out[o++] = b64url[(v >> 12) & 63];
        out[o++] = b64url[(v >> 6) & 63];
        out[o++] = b64url[v & 63];
    }
    if (n - i == 1) {
        unsigned v = (unsigned)in[i] << 16;
        out[o++] = b64url[v >> 18];
        out[o++] = b64url[(v >> 12) & 63];
    } else if (n - i == 2) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
        out[o++] = b64url[v >> 18];
        out[o++] = b64url[(v >> 12) & 63];
        out[o++] = b64url[(v >> 6) & 63];
    }
    return o;
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
static int make_verifier(char *out, int len)
{
    unsigned char raw[96];
    char enc[128 + 4];
    size_t nbytes = ((size_t)len * 6 + 7) / 8;
    if (RAND_bytes(raw, (int)nbytes) != 1) {
        ERR_clear_error();
        return 0;
    }
    b64url_encode(raw, nbytes, enc);
    memcpy(out, enc, (size_t)len);
    OPENSSL_cleanse(raw, sizeof raw);
    OPENSSL_cleanse(enc, sizeof enc);
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
    b64url_encode(md, 32, out);
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
    if (!make_verifier(v, len))
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
    if (!s256(md_of(L), v, n, ch))
        return luaL_error(L, "nomba.oauth: SHA-256 failed");
    lua_pushlstring(L, ch, 43);
    return 1;
}

/* oauth.pkce.pair([length]) -> verifier, S256 challenge */
static int pkce_pair(lua_State *L)
{
    char v[VERIFIER_MAX], ch[44];
    int len = check_length(L, 1);
    if (!make_verifier(v, len))
        return luaL_error(L, "nomba.oauth: the OpenSSL random generator failed");
    if (!s256(md_of(L), v, (size_t)len, ch))
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
    if (!s256(md_of(L), v, n, ch))
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
#include <unistd.h>
#include <sys/wait.h>
/* core._test_fork_verifiers(): a verifier drawn in this process and one
 * drawn in a child forked right now. Compiled only into the test build. */
static int pkce_test_fork(lua_State *L)
{
    char mine[VERIFIER_MIN], theirs[VERIFIER_MIN];
    int fd[2], status;
    pid_t pid;
    ssize_t got = 0;
    if (pipe(fd) != 0)
        return luaL_error(L, "pipe failed");
    pid = fork();
    if (pid < 0)
        return luaL_error(L, "fork failed");
    if (pid == 0) {
        char v[VERIFIER_MIN];
        int ok = make_verifier(v, VERIFIER_MIN);
        close(fd[0]);
        if (ok && write(fd[1], v, sizeof v) != (ssize_t)sizeof v)
            ok = 0;
        _exit(ok ? 0 : 1);
    }
    close(fd[1]);
    if (!make_verifier(mine, VERIFIER_MIN))
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
    return 2;
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
    md_push(L);
    luaL_setfuncs(L, funcs, 1);
    lua_setfield(L, -2, "pkce");
    lua_pushcfunction(L, pkce_valid);
    lua_setfield(L, -2, "pkce_valid");
#ifdef NOMBA_TEST_HOOKS
    lua_pushcfunction(L, pkce_test_fork);
    lua_setfield(L, -2, "_test_fork_verifiers");
#endif
}
