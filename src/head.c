/*
 * head.c: the header block of an HTTP answer, read one way for every driver.
 *
 * libcurl hands its answers over a line at a time (head_note from its
 * header callback, head_line to keep the line), the OpenResty transport
 * reads the whole block off its cosocket, and a Lua transport gives a
 * table (made into the same lines by head_from_table). Whatever brought
 * them, the lines go through this one reader:
 *   - a field line is "name: value" whose name has no space, tab or '/'
 *     (so "HTTP/1.1 200 a:b", a status line, is none); values are trimmed;
 *   - what the interpreter needs (Date, Retry-After, Content-Type,
 *     Content-Length and the X-Rate-Limit-* counts) is the FIRST line of
 *     each name: a repeated Retry-After is its first value on every driver;
 *   - the headers table has lower-case names, a repeated name's values
 *     joined with ", " (RFC 9110);
 *   - numbers are digits only (codec_digits): never "1e3", "0x10" or "-5".
 * Pure reading: nothing here allocates but the Lua values it pushes.
 *
 *   core._test.headers(head) -> {name = value, ...} (the table the answers carry)
 */
#include <string.h>
#include "nomba.h"

/* The field line [p, p+n) (with or without its CRLF): 1 and its name and
 * trimmed value, or 0 when it is no field line. */
int head_field(const char *p, size_t n, const char **name, size_t *nn, const char **val, size_t *vn)
{
    const char *e = p + n, *colon = memchr(p, ':', n), *v, *ve;
    size_t i;
    if (colon == NULL || colon == p)
        return 0;
    for (i = 0; p + i < colon; i++)
        if (p[i] == ' ' || p[i] == '\t' || p[i] == '/')
            return 0;
    for (v = colon + 1; v < e && (*v == ' ' || *v == '\t'); v++)
        ;
    for (ve = e; ve > v && (ve[-1] == '\r' || ve[-1] == '\n' || ve[-1] == ' ' || ve[-1] == '\t'); ve--)
        ;
    *name = p;
    *nn = (size_t)(colon - p);
    *val = v;
    *vn = (size_t)(ve - v);
    return 1;
}

/* The names the interpreter notes, and where each goes. */
#define NOTE(name, field) {(name), sizeof (name) - 1, offsetof(nomba_answer_meta, field), \
                           sizeof ((nomba_answer_meta *)0)->field}
static const struct {
    const char *name;
    size_t len, off, cap;
} NOTED[] = {
    NOTE("date", date),
    NOTE("retry-after", retry_after),
    NOTE("content-type", content_type),
    NOTE("x-rate-limit-limit", rl_limit),
    NOTE("x-rate-limit-remaining", rl_remaining),
    NOTE("x-rate-limit-window", rl_window),
    NOTE("content-length", content_length),
};
#define NNOTED (sizeof NOTED / sizeof NOTED[0])

/* Forgets what was noted (a new answer after a 1xx): the status stays. */
void head_reset(nomba_answer_meta *m)
{
    long status = m->status;
    memset(m, 0, sizeof *m);
    m->status = status;
}

/* Notes one line of the block: a field the interpreter needs, the first of
 * its name only; a status line ("HTTP/...") starts the notes over. */
void head_note(nomba_answer_meta *m, const char *p, size_t n)
{
    const char *name, *val;
    size_t nn, vn, i;
    if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        head_reset(m);
        return;
    }
    if (!head_field(p, n, &name, &nn, &val, &vn))
        return;
    {
        char first = (char)(name[0] | 0x20);     /* most lines are none of these: a cheap look first */
        if (first == 't' && codec_name_is(name, nn, "transfer-encoding")) {
            for (i = 0; i + 7 <= vn; i++)
                if (codec_name_is(val + i, 7, "chunked"))
                    m->chunked = 1;
            return;
        }
        if (first != 'd' && first != 'r' && first != 'c' && first != 'x')
            return;
    }
    for (i = 0; i < NNOTED; i++) {
        if (!(m->seen & (1u << i)) && NOTED[i].len == nn && codec_name_is(name, nn, NOTED[i].name)) {
            char *dst = (char *)m + NOTED[i].off;
            size_t k = vn < NOTED[i].cap - 1 ? vn : NOTED[i].cap - 1;
            memcpy(dst, val, k);
            dst[k] = '\0';
            m->seen |= 1u << i;
            return;
        }
    }
}

/* Calls f on each line of the block [p, p+n). */
static void each_line(const char *p, size_t n, void (*f)(void *ud, const char *line, size_t len), void *ud)
{
    const char *e = p + n;
    while (p < e) {
        const char *nl = memchr(p, '\n', (size_t)(e - p)), *end = nl ? nl + 1 : e;
        f(ud, p, (size_t)(end - p));
        p = end;
    }
}

static void note_line(void *ud, const char *line, size_t len)
{
    head_note((nomba_answer_meta *)ud, line, len);
}

/* Notes a whole block (the status line, if any, then its fields). */
void head_scan(nomba_answer_meta *m, const char *p, size_t n)
{
    each_line(p, n, note_line, m);
}

static void push_line(void *ud, const char *line, size_t len)
{
    lua_State *L = (lua_State *)ud;
    const char *name, *val;
    size_t nn, vn, i;
    char lower[128];
    if (!head_field(line, len, &name, &nn, &val, &vn) || nn >= sizeof lower)
        return;
    for (i = 0; i < nn; i++)
        lower[i] = (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] + 32 : name[i]);
    lua_pushlstring(L, lower, nn);
    lua_pushvalue(L, -1);
    lua_rawget(L, -3);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushlstring(L, val, vn);
    } else {
        lua_pushliteral(L, ", ");
        lua_pushlstring(L, val, vn);
        lua_concat(L, 3);
    }
    lua_rawset(L, -3);
}

/* Pushes the block's fields as a table: lower-case names, repeats joined. */
void head_push(lua_State *L, const char *p, size_t n)
{
    lua_createtable(L, 0, 8);
    each_line(p, n, push_line, L);
}

/* Appends "name: value\r\n" lines to out for the headers table at idx (any
 * case of the names; a value that is a list is one line per entry), so a
 * Lua transport's answer is read by the same reader as the others. Values
 * that are not strings or numbers, and names that are not strings, are
 * left out; a line break inside a value ends it (no line is smuggled in).
 * Returns 0 when out of memory. */
static int add_value(sbuf *out, const char *k, size_t kn, lua_State *L, int vidx)
{
    size_t vn, cut;
    const char *v;
    if (lua_type(L, vidx) != LUA_TSTRING && lua_type(L, vidx) != LUA_TNUMBER)
        return 1;
    v = lua_tolstring(L, vidx, &vn);
    cut = strcspn(v, "\r\n");
    return sbuf_add(out, k, kn) && sbuf_add(out, ": ", 2) && sbuf_add(out, v, cut < vn ? cut : vn) &&
           sbuf_add(out, "\r\n", 2);
}

int head_from_table(lua_State *L, int idx, sbuf *out)
{
    int ok = 1;
    idx = lua_absindex(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        size_t kn;
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &kn) : NULL;
        if (ok && k != NULL && strcspn(k, ":\r\n") == kn) {
            if (lua_istable(L, -1)) {
                int i, top = lua_gettop(L);
                for (i = 1; ok && (lua_rawgeti(L, top, i), !lua_isnil(L, -1)); i++) {
                    ok = add_value(out, k, kn, L, -1);
                    lua_pop(L, 1);
                }
                lua_settop(L, top);
            } else {
                ok = add_value(out, k, kn, L, -1);
            }
        }
        lua_pop(L, 1);
    }
    return ok;
}

/* The seconds of an X-Rate-Limit-Window ("1s", "60", "1m", "0.5s", "1h"),
 * or 0 when it is none of those. */
int head_window(const char *s, double *out)
{
    const char *p = s, *dot = NULL, *num;
    double v = 0, scale = 1;
    size_t digits = 0;
    while (*p == ' ' || *p == '\t')
        p++;
    num = p;
    for (; (*p >= '0' && *p <= '9') || (*p == '.' && dot == NULL && p > num); p++) {
        if (*p == '.') {
            dot = p;
            continue;
        }
        if (++digits > 12)
            return 0;
        if (dot != NULL) {
            scale /= 10;
            v += (*p - '0') * scale;
        } else {
            v = v * 10 + (*p - '0');
        }
    }
    if (digits == 0)
        return 0;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == 's' || *p == 'm' || *p == 'h') {
        v *= *p == 'm' ? 60 : *p == 'h' ? 3600 : 1;
        p++;
    }
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p != '\0')
        return 0;
    *out = v;
    return 1;
}

/* The status of a status line "HTTP/d.d nnn ...", or 0. */
long head_status(const char *p, size_t n)
{
    if (n < 12 || memcmp(p, "HTTP/", 5) != 0 || p[5] < '0' || p[5] > '9' || p[6] != '.' ||
        p[7] < '0' || p[7] > '9' || p[8] != ' ')
        return 0;
    if (p[9] < '1' || p[9] > '9' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9' ||
        (n > 12 && p[12] != ' ' && p[12] != '\r' && p[12] != '\n'))
        return 0;
    return (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
}

#ifdef NOMBA_TEST_HOOKS
/* core._test.headers(head): the block's fields as the drivers' answers carry them. */
static int head_headers(lua_State *L)
{
    size_t n;
    const char *p = luaL_checklstring(L, 1, &n);
    head_push(L, p, n);
    return 1;
}
#endif

void head_open(lua_State *L)
{
    (void)L;
#ifdef NOMBA_TEST_HOOKS
    nomba_test_hook(L, "headers", head_headers);
#endif
}
