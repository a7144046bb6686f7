/*
 * json.c: reading Nomba's JSON answers in C, without Lua strings.
 *
 * A token answer carries secrets, so it is not handed to a Lua JSON
 * decoder (which would make Lua strings of the whole body and of every
 * value, and keep copies in buffers it frees without wiping). This strict
 * RFC 8259 reader validates the whole document and records, for a fixed
 * list of member names, where each value stands: in the top-level object
 * and in its "data" object. Nothing is copied; a string value is unescaped
 * only on demand, into a buffer the caller owns and wipes.
 *
 * Limits: nesting depth 32 (deeper is refused), the input size is the
 * caller's (max_response_bytes). Duplicate members: the last one wins, as
 * in a Lua table. Not JSON (Infinity, NaN, comments, trailing commas,
 * control bytes inside strings) is refused.
 */
#include <string.h>
#include <stdlib.h>
#include <locale.h>
#include "nomba.h"

#define MAX_DEPTH 32

typedef struct {
    const char *p, *end;
    const char *const *names;
    int nnames;
    json_span *top, *data;
    int data_seen;
} reader;

static void skip_ws(reader *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
        r->p++;
}

/* A string at r->p (on its opening quote): *s and *n span its inside. */
static int read_string(reader *r, const char **s, size_t *n)
{
    const char *q = ++r->p;
    while (q < r->end && *q != '"') {
        unsigned char ch = (unsigned char)*q;
        if (ch < 0x20)
            return 0;
        if (ch == '\\') {
            if (++q >= r->end)
                return 0;
            if (*q == 'u') {
                int i;
                for (i = 1; i <= 4; i++)
                    if (q + i >= r->end || codec_hexval(q[i]) < 0)
                        return 0;
                q += 4;
            } else if (strchr("\"\\/bfnrt", *q) == NULL || *q == '\0') {
                return 0;
            }
        }
        q++;
    }
    if (q >= r->end)
        return 0;
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

/* The JSON number grammar, exactly. */
static int read_number(reader *r)
{
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
    }
    return 1;
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
    if (r->p >= r->end || depth > MAX_DEPTH)
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
    r.p = p;
    r.end = p + n;
    r.names = names;
    r.nnames = nnames;
    r.top = top;
    r.data = data;
    r.data_seen = 0;
    skip_ws(&r);
    if (r.p >= r.end || *r.p != '{')
        return 0;
    if (!read_value(&r, 1, 1, &doc))
        return 0;
    skip_ws(&r);
    *has_data = r.data_seen;
    return r.p == r.end;
}

static int put_utf8(sbuf *out, unsigned long cp)
{
    char b[4];
    size_t k;
    if (cp < 0x80) {
        b[0] = (char)cp;
        k = 1;
    } else if (cp < 0x800) {
        b[0] = (char)(0xc0 | (cp >> 6));
        b[1] = (char)(0x80 | (cp & 0x3f));
        k = 2;
    } else if (cp < 0x10000) {
        b[0] = (char)(0xe0 | (cp >> 12));
        b[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        b[2] = (char)(0x80 | (cp & 0x3f));
        k = 3;
    } else {
        b[0] = (char)(0xf0 | (cp >> 18));
        b[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        b[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        b[3] = (char)(0x80 | (cp & 0x3f));
        k = 4;
    }
    return sbuf_add(out, b, k);
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

int json_string(const json_span *s, sbuf *out)
{
    size_t i = 0;
    sbuf_wipe(out);
    if (s->type != J_STRING)
        return 0;
    if (!sbuf_reserve(out, s->n))
        return -1;
    while (i < s->n) {
        const char *run = s->p + i;
        size_t k = 0;
        while (i + k < s->n && run[k] != '\\')
            k++;
        if (k > 0 && !sbuf_add(out, run, k))
            return -1;
        i += k;
        if (i >= s->n)
            break;
        /* an escape: read_string has checked its shape */
        {
            char e = s->p[i + 1], ch;
            unsigned long cp;
            int ok = 1;
            i += 2;
            switch (e) {
            case 'b': ch = '\b'; break;
            case 'f': ch = '\f'; break;
            case 'n': ch = '\n'; break;
            case 'r': ch = '\r'; break;
            case 't': ch = '\t'; break;
            case 'u':
                cp = hex4(s->p + i);
                i += 4;
                if (cp >= 0xd800 && cp < 0xdc00 && i + 6 <= s->n && s->p[i] == '\\' &&
                    s->p[i + 1] == 'u') {
                    unsigned long lo = hex4(s->p + i + 2);
                    if (lo >= 0xdc00 && lo < 0xe000) {
                        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                        i += 6;
                    }
                }
                if (cp >= 0xd800 && cp < 0xe000)
                    cp = 0xfffd;        /* a lone surrogate */
                if (!put_utf8(out, cp))
                    return -1;
                continue;
            default: ch = e; break;     /* " \ / */
            }
            ok = sbuf_add(out, &ch, 1);
            if (!ok)
                return -1;
        }
    }
    return 1;
}

/* The JSON number grammar over [p, p+n) exactly, converted whatever the
 * locale's decimal point. */
static int number_of(const char *p, size_t n, double *out)
{
    reader r;
    char tmp[64], *end;
    const char *dp = localeconv()->decimal_point;
    size_t i;
    memset(&r, 0, sizeof r);
    r.p = p;
    r.end = p + n;
    if (n == 0 || n >= sizeof tmp || !read_number(&r) || r.p != r.end)
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

int json_number(const json_span *s, double *out)
{
    if (s->type == J_NUMBER || s->type == J_STRING)
        return number_of(s->p, s->n, out);
    return 0;
}
