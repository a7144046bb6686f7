/*
 * json.c: one strict RFC 8259 grammar, read two ways.
 *
 * json_scan, for token answers, without Lua strings:
 * A token answer carries secrets, so it is not handed to a Lua JSON
 * decoder (which would make Lua strings of the whole body and of every
 * value, and keep copies in buffers it frees without wiping). This strict
 * RFC 8259 reader validates the whole document and records, for a fixed
 * list of member names, where each value stands: in the top-level object
 * and in its "data" object. Nothing is copied; a string value is unescaped
 * only on demand, into a buffer the caller owns and wipes.
 *
 * json_push, for what carries no secret (webhook events, API answers):
 * the same grammar building Lua values, as lua-cjson would, at about the
 * speed of lua-cjson's decode or better (each table is made at its size).
 *
 * Limits: nesting depth NOMBA_MAX_JSON_DEPTH for json_scan, the caller's for json_push; the
 * input size is the caller's (max_response_bytes). Duplicate members: the
 * last one wins, as in a Lua table. Not JSON (Infinity, NaN, comments,
 * trailing commas, control bytes inside strings) is refused, and so is a
 * number no double holds (1e400) or of over 63 characters.
 */
#include <string.h>
#include <stdlib.h>
#include <locale.h>
#include "nomba.h"


typedef struct {
    const char *p, *end;
    const char *const *names;
    int nnames;
    json_span *top, *data;
    int data_seen;
    int escaped;            /* the last string read had a backslash */
} reader;

static void skip_ws(reader *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
        r->p++;
}

/* 1 for the bytes a string holds as they are: not a control byte, '"' or '\'. */
#define R16(v) v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v
static const unsigned char plain[256] = {
    R16(0), R16(0),
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,        /* '"' */
    R16(1), R16(1),
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,        /* '\\' */
    R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), R16(1)
};

/* A string at r->p (on its opening quote): *s and *n span its inside. */
static int read_string(reader *r, const char **s, size_t *n)
{
    const char *q = ++r->p;
    r->escaped = 0;
    for (;;) {
        unsigned char ch;
        while (r->end - q >= 4 && plain[(unsigned char)q[0]] && plain[(unsigned char)q[1]] &&
               plain[(unsigned char)q[2]] && plain[(unsigned char)q[3]])
            q += 4;
        while (q < r->end && plain[(unsigned char)*q])
            q++;
        if (q >= r->end)
            return 0;
        ch = (unsigned char)*q;
        if (ch == '"')
            break;
        if (ch < 0x20)
            return 0;
        /* an escape */
        r->escaped = 1;
        if (++q >= r->end)
            return 0;
        if (*q == 'u') {
            int i;
            for (i = 1; i <= 4; i++)
                if (q + i >= r->end || codec_hexval(q[i]) < 0)
                    return 0;
            q += 4;
        } else if (*q == '\0' || strchr("\"\\/bfnrt", *q) == NULL) {
            return 0;
        }
        q++;
    }
    *s = r->p;
    *n = (size_t)(q - r->p);
    r->p = q + 1;
    return 1;
}

static int digits(reader *r)
{
    const char *s = r->p;
    while (r->p < r->end && *r->p >= '0' && *r->p <= '9')
        r->p++;
    return r->p > s;
}

static int convert(const char *p, size_t n, double *out);

/* The JSON number grammar, exactly, and a finite double: 1e400 is JSON's
 * grammar but no number a reader can hold, so it is refused with NaN and
 * Infinity (a number is at most 63 characters). */
static int read_number(reader *r)
{
    const char *start = r->p;
    int exact = 1;              /* up to 18 digits without an exponent */
    double d;
    if (r->p < r->end && *r->p == '-')
        r->p++;
    if (r->p < r->end && *r->p == '0')
        r->p++;
    else if (!digits(r))
        return 0;
    if (r->p < r->end && *r->p == '.') {
        r->p++;
        if (!digits(r))
            return 0;
    }
    if (r->p < r->end && (*r->p == 'e' || *r->p == 'E')) {
        r->p++;
        if (r->p < r->end && (*r->p == '+' || *r->p == '-'))
            r->p++;
        if (!digits(r))
            return 0;
        exact = 0;
    }
    if (exact && r->p - start <= 18)
        return 1;
    return convert(start, (size_t)(r->p - start), &d) && d - d == 0;
}

static int literal(reader *r, const char *word)
{
    size_t k = strlen(word);
    if ((size_t)(r->end - r->p) < k || memcmp(r->p, word, k) != 0)
        return 0;
    r->p += k;
    return 1;
}

static int read_value(reader *r, int depth, int level, json_span *out);

/* An object. level 1: the document; level 2: its "data" member; members of
 * those two levels whose names are wanted are recorded. */
static int read_object(reader *r, int depth, int level)
{
    json_span *slots = level == 1 ? r->top : level == 2 ? r->data : NULL;
    r->p++;
    skip_ws(r);
    if (r->p < r->end && *r->p == '}') {
        r->p++;
        return 1;
    }
    for (;;) {
        const char *k;
        size_t kn;
        json_span v, *slot = NULL;
        int i, sub = 0;
        skip_ws(r);
        if (r->p >= r->end || *r->p != '"' || !read_string(r, &k, &kn))
            return 0;
        skip_ws(r);
        if (r->p >= r->end || *r->p != ':')
            return 0;
        r->p++;
        skip_ws(r);
        if (slots != NULL)
            for (i = 0; i < r->nnames; i++)
                if (strlen(r->names[i]) == kn && memcmp(r->names[i], k, kn) == 0)
                    slot = &slots[i];
        if (level == 1 && kn == 4 && memcmp(k, "data", 4) == 0 && r->p < r->end && *r->p == '{') {
            /* a later "data" replaces an earlier one, as in a Lua table */
            memset(r->data, 0, sizeof *r->data * (size_t)r->nnames);
            r->data_seen = 1;
            sub = 2;
        }
        if (!read_value(r, depth + 1, sub, &v))
            return 0;
        if (slot != NULL)
            *slot = v;
        skip_ws(r);
        if (r->p < r->end && *r->p == ',') {
            r->p++;
            continue;
        }
        if (r->p < r->end && *r->p == '}') {
            r->p++;
            return 1;
        }
        return 0;
    }
}

static int read_array(reader *r, int depth)
{
    json_span v;
    r->p++;
    skip_ws(r);
    if (r->p < r->end && *r->p == ']') {
        r->p++;
        return 1;
    }
    for (;;) {
        if (!read_value(r, depth + 1, 0, &v))
            return 0;
        skip_ws(r);
        if (r->p < r->end && *r->p == ',') {
            r->p++;
            continue;
        }
        if (r->p < r->end && *r->p == ']') {
            r->p++;
            return 1;
        }
        return 0;
    }
}

static int read_value(reader *r, int depth, int level, json_span *out)
{
    const char *start;
    memset(out, 0, sizeof *out);
    skip_ws(r);
    if (r->p >= r->end || depth > NOMBA_MAX_JSON_DEPTH)
        return 0;
    start = r->p;
    switch (*r->p) {
    case '{':
        out->type = J_OBJECT;
        return read_object(r, depth, level);
    case '[':
        out->type = J_OTHER;
        return read_array(r, depth);
    case '"':
        out->type = J_STRING;
        return read_string(r, &out->p, &out->n);
    case 't':
        out->type = J_OTHER;
        return literal(r, "true");
    case 'f':
        out->type = J_OTHER;
        return literal(r, "false");
    case 'n':
        out->type = J_OTHER;
        return literal(r, "null");
    default:
        out->type = J_NUMBER;
        if (!read_number(r))
            return 0;
        out->p = start;
        out->n = (size_t)(r->p - start);
        return 1;
    }
}

int json_scan(const char *p, size_t n, const char *const *names, int nnames,
              json_span *top, json_span *data, int *has_data)
{
    reader r;
    json_span doc;
    memset(top, 0, sizeof *top * (size_t)nnames);
    memset(data, 0, sizeof *data * (size_t)nnames);
    memset(&r, 0, sizeof r);
    r.p = p;
    r.end = p + n;
    r.names = names;
    r.nnames = nnames;
    r.top = top;
    r.data = data;
    skip_ws(&r);
    if (r.p >= r.end || *r.p != '{')
        return 0;
    if (!read_value(&r, 1, 1, &doc))
        return 0;
    skip_ws(&r);
    *has_data = r.data_seen;
    return r.p == r.end;
}

/* cp as UTF-8 into b: the number of bytes. */
static size_t utf8(char b[4], unsigned long cp)
{
    if (cp < 0x80) {
        b[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        b[0] = (char)(0xc0 | (cp >> 6));
        b[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        b[0] = (char)(0xe0 | (cp >> 12));
        b[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        b[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    b[0] = (char)(0xf0 | (cp >> 18));
    b[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    b[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    b[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Four hex digits read_string has already checked. */
static unsigned long hex4(const char *q)
{
    unsigned long v = 0;
    int i;
    for (i = 0; i < 4; i++) {
        int h = codec_hexval(q[i]);
        v = v << 4 | (unsigned long)(h < 0 ? 0 : h);
    }
    return v;
}

/* The inside of a string read_string has checked, unescaped into put(). */
typedef int (*json_put)(void *ud, const char *s, size_t n);

static int unescape(const char *p, size_t n, json_put put, void *ud)
{
    size_t i = 0;
    while (i < n) {
        const char *run = p + i;
        size_t k = 0;
        while (i + k < n && run[k] != '\\')
            k++;
        if (k > 0 && !put(ud, run, k))
            return 0;
        i += k;
        if (i >= n)
            break;
        {
            char e = p[i + 1], ch, b[4];
            unsigned long cp;
            i += 2;
            switch (e) {
            case 'b': ch = '\b'; break;
            case 'f': ch = '\f'; break;
            case 'n': ch = '\n'; break;
            case 'r': ch = '\r'; break;
            case 't': ch = '\t'; break;
            case 'u':
                cp = hex4(p + i);
                i += 4;
                if (cp >= 0xd800 && cp < 0xdc00 && i + 6 <= n && p[i] == '\\' && p[i + 1] == 'u') {
                    unsigned long lo = hex4(p + i + 2);
                    if (lo >= 0xdc00 && lo < 0xe000) {
                        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                        i += 6;
                    }
                }
                if (cp >= 0xd800 && cp < 0xe000)
                    cp = 0xfffd;        /* a lone surrogate */
                if (!put(ud, b, utf8(b, cp)))
                    return 0;
                continue;
            default: ch = e; break;     /* " \ / */
            }
            if (!put(ud, &ch, 1))
                return 0;
        }
    }
    return 1;
}

static int put_sbuf(void *ud, const char *s, size_t n)
{
    return sbuf_add((sbuf *)ud, s, n);
}

int json_string(const json_span *s, sbuf *out)
{
    sbuf_wipe(out);
    if (s->type != J_STRING)
        return 0;
    if (!sbuf_reserve(out, s->n))
        return -1;
    return unescape(s->p, s->n, put_sbuf, out) ? 1 : -1;
}

/* [p, p+n), a number read_number has checked, as a double whatever the
 * locale's decimal point; 0 when longer than 63 characters. */
static int convert(const char *p, size_t n, double *out)
{
    char tmp[64], *end;
    const char *dp = localeconv()->decimal_point;
    size_t i;
    if (n == 0 || n >= sizeof tmp)
        return 0;
    for (i = 0; i < n; i++) {
        tmp[i] = p[i];
        if (p[i] == '.' && dp != NULL && dp[0] != '\0')
            tmp[i] = dp[0];
    }
    tmp[n] = '\0';
    *out = strtod(tmp, &end);
    return end == tmp + n;
}

/* The JSON number grammar over [p, p+n) exactly, converted. */
static int number_of(const char *p, size_t n, double *out)
{
    reader r;
    memset(&r, 0, sizeof r);
    r.p = p;
    r.end = p + n;
    return n > 0 && read_number(&r) && r.p == r.end && convert(p, n, out);
}

int json_number(const json_span *s, double *out)
{
    if (s->type == J_NUMBER || s->type == J_STRING)
        return number_of(s->p, s->n, out);
    return 0;
}

/* ---- The same grammar, building Lua values (webhook events, API answers:
 * no secrets in them, so Lua strings are fine). As lua-cjson: an object or
 * an array is a table, null is the light userdata NULL (== cjson.null).
 * An integer of up to 18 digits is a Lua integer on 5.3+. */

typedef struct {
    lua_State *L;
    reader r;
    int max_depth;
} builder;

static int put_lbuf(void *ud, const char *s, size_t n)
{
    luaL_addlstring((luaL_Buffer *)ud, s, n);
    return 1;
}

/* A number read_number has checked (so finite) as a Lua number. */
static int push_number(lua_State *L, const char *p, size_t n)
{
    size_t i = p[0] == '-' ? 1 : 0, k;
    double d = 0;
    int integral = n - i <= 18;
    for (k = i; integral && k < n; k++)
        integral = p[k] >= '0' && p[k] <= '9';
    if (integral) {
        long long v = 0;
        for (k = i; k < n; k++)
            v = v * 10 + (p[k] - '0');
        if (i)
            v = -v;
#if LUA_VERSION_NUM >= 503
        lua_pushinteger(L, (lua_Integer)v);
#else
        lua_pushnumber(L, (lua_Number)v);
#endif
        return 1;
    }
    if (!convert(p, n, &d))
        return 0;
    lua_pushnumber(L, (lua_Number)d);
    return 1;
}

static int push_value(builder *b, int depth);

static int push_string(builder *b)
{
    const char *s;
    size_t n;
    if (!read_string(&b->r, &s, &n))
        return 0;
    if (!b->r.escaped) {
        lua_pushlstring(b->L, s, n);
    } else {
        luaL_Buffer lb;
        luaL_buffinit(b->L, &lb);
        (void)unescape(s, n, put_lbuf, &lb);
        luaL_pushresult(&lb);
    }
    return 1;
}

/* Members and elements wait on the stack, up to STACKED values, so that
 * the table is made at its size once (growing one key at a time rehashes
 * it again and again: that was most of the cost of an event). */
#define STACKED 64

/* The n values above base into a new table: pairs as keys and values
 * (object) or elements 1..n (array). The table replaces them. */
static void collect(lua_State *L, int base, int n, int object)
{
    int i;
    lua_createtable(L, object ? 0 : n, object ? n / 2 : 0);
    for (i = 1; i <= n; i += object ? 2 : 1) {
        lua_pushvalue(L, base + i);
        if (object) {
            lua_pushvalue(L, base + i + 1);
            lua_rawset(L, -3);
        } else {
            lua_rawseti(L, -2, i);
        }
    }
    lua_replace(L, base + 1);
    lua_settop(L, base + 1);
}

/* The members or elements after r->p's '{' or '['. */
static int push_container(builder *b, int depth, int object)
{
    reader *r = &b->r;
    lua_State *L = b->L;
    int base = lua_gettop(L), n = 0, made = 0;
    char close = object ? '}' : ']';
    luaL_checkstack(L, STACKED + 8, "nomba.oauth: JSON nesting");
    r->p++;
    skip_ws(r);
    if (r->p < r->end && *r->p == close) {
        r->p++;
        lua_newtable(L);
        return 1;
    }
    for (;;) {
        if (!made && n >= STACKED) {
            collect(L, base, n, object);        /* the table now stands at base + 1 */
            made = object ? 1 : n + 1;
        }
        if (object) {
            skip_ws(r);
            if (r->p >= r->end || *r->p != '"' || !push_string(b))
                return 0;
            skip_ws(r);
            if (r->p >= r->end || *r->p != ':')
                return 0;
            r->p++;
        }
        if (!push_value(b, depth + 1))
            return 0;
        if (made && object)
            lua_rawset(L, base + 1);
        else if (made)
            lua_rawseti(L, base + 1, made++);
        else
            n += object ? 2 : 1;
        skip_ws(r);
        if (r->p < r->end && *r->p == ',') {
            r->p++;
            continue;
        }
        if (r->p < r->end && *r->p == close) {
            r->p++;
            if (!made)
                collect(L, base, n, object);
            return 1;
        }
        return 0;
    }
}

static int push_value(builder *b, int depth)
{
    reader *r = &b->r;
    const char *start;
    skip_ws(r);
    if (r->p >= r->end || depth > b->max_depth)
        return 0;
    start = r->p;
    switch (*r->p) {
    case '{':
        return push_container(b, depth, 1);
    case '[':
        return push_container(b, depth, 0);
    case '"':
        return push_string(b);
    case 't':
        if (!literal(r, "true"))
            return 0;
        lua_pushboolean(b->L, 1);
        return 1;
    case 'f':
        if (!literal(r, "false"))
            return 0;
        lua_pushboolean(b->L, 0);
        return 1;
    case 'n':
        if (!literal(r, "null"))
            return 0;
        lua_pushlightuserdata(b->L, NULL);
        return 1;
    default:
        return read_number(r) && push_number(b->L, start, (size_t)(r->p - start));
    }
}

int json_push(lua_State *L, const char *p, size_t n, int max_depth)
{
    builder b;
    int top = lua_gettop(L);
    memset(&b, 0, sizeof b);
    b.L = L;
    b.r.p = p;
    b.r.end = p + n;
    b.max_depth = max_depth;
    luaL_checkstack(L, 4, "nomba.oauth: JSON");
    if (push_value(&b, 1)) {
        skip_ws(&b.r);
        if (b.r.p == b.r.end)
            return 1;
    }
    lua_settop(L, top);
    return 0;
}
