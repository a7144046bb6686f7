/*
 * frame.c: where an HTTP/1.1 answer ends. One rule for every driver:
 *
 *   - the header block ends at an empty line; lines end with CRLF or a
 *     bare LF (RFC 9112 2.2), and the block is at most NOMBA_MAX_HEADERS;
 *   - interim answers (1xx but 101) are passed over; 101 is refused;
 *   - an answer to HEAD, a 1xx, 204 and 304 have no body, whatever their
 *     Content-Length says (RFC 9110 6.4.1);
 *   - chunked (Transfer-Encoding) wins over a Content-Length, and such an
 *     answer's connection is not used again (RFC 9112 6.3); a chunk size
 *     is 1 to 15 hex digits, then optional blanks and ";" extensions, then
 *     the line's end; a chunk ends with its line end; trailers end at an
 *     empty line;
 *   - else a Content-Length of digits only frames the body; any other
 *     value is refused;
 *   - else the body ends when the server closes.
 * The body is capped while it is read (max bytes), never after.
 *
 * The cosocket transport and a Lua transport that hands over the bytes it
 * received feed whole answers (frame_feed); libcurl, which reads the header
 * block itself, gives the body's bytes as they came, transfer coding and
 * all (frame_body). Either way the outcome of a failure is one of
 * outcome.c's, and the decoded body is what the interpreter reads.
 *
 *   core.frame(method, max[, bytes]) -> a frame (nomba.oauth.Frame); with
 *       bytes, all of an answer: the frame, or nil, outcome, message, status
 *   frame:feed(bytes)  -> true (the answer is complete), false (more to come),
 *                         or nil, outcome, message
 *   frame:finish([broken]) -> true, or nil, outcome, message: the connection
 *                         ended (broken: with an error, not a clean close)
 *   frame:status()     -> the answer's status once its header block came
 *   frame:reusable()   -> the connection may carry another request
 */
#include <string.h>
#include "nomba.h"

#define FRAME_MT "nomba.oauth.Frame"
#define CHUNK_LINE_MAX 1024

void frame_init(frame *f, const char *method, size_t max, sbuf *body)
{
    memset(f, 0, sizeof *f);
    f->head_method = method != NULL && strcmp(method, "HEAD") == 0;
    f->max = max;
    f->body = body;
}

static int failed(frame *f, int outcome, const char *why)
{
    f->state = FR_FAILED;
    f->outcome = outcome;
    f->why = why;
    return outcome;
}

int frame_body_begin(frame *f, long status, int chunked, int has_len, int bad_len, double len)
{
    f->status = status;
    f->in_body = 1;
    if (f->head_method || (status >= 100 && status < 200) || status == 204 || status == 304) {
        f->state = FR_DONE;
    } else if (chunked) {
        f->state = FR_SIZE;
        f->close |= has_len;
    } else if (bad_len) {
        return failed(f, OUT_FRAMING, "the answer's Content-Length is not a number of bytes");
    } else if (has_len) {
        if (len > (double)f->max)
            return failed(f, OUT_TOO_LARGE, NULL);
        f->left = len;
        f->state = len > 0 ? FR_LENGTH : FR_DONE;
    } else {
        f->state = FR_CLOSE;
        f->close = 1;
    }
    return OUT_NONE;
}

/* The body of an answer whose header lines head.c noted (libcurl's, or a
 * Lua transport's): framed by its Content-Length and Transfer-Encoding;
 * `decoded`, the transport removed any transfer coding (then a chunked
 * answer's length is no length). */
int frame_begin_noted(frame *f, const nomba_answer_meta *m, long status, int decoded)
{
    double len = 0;
    int chunked = m->chunked && !decoded;
    int has = m->content_length[0] != '\0' && !m->chunked;
    int bad = has && !codec_digits(m->content_length, strlen(m->content_length), 999999999999999.0, &len);
    return frame_body_begin(f, status, chunked, has, bad, len);
}

static int add(frame *f, const char *p, size_t n)
{
    if (f->body->n + n > f->max)
        return failed(f, OUT_TOO_LARGE, NULL);
    if (!sbuf_add(f->body, p, n))
        return failed(f, OUT_FAILED, "out of memory");
    return OUT_NONE;
}

/* A chunk-size line (its line end taken off): the size, or -1. */
static double chunk_size(const char *p, size_t n)
{
    size_t i = 0;
    double size = 0;
    if (n > 0 && p[n - 1] == '\r')
        n--;
    for (; i < n && codec_hexval((unsigned char)p[i]) >= 0; i++)
        size = size * 16 + codec_hexval((unsigned char)p[i]);
    if (i == 0 || i > 15)
        return -1;
    while (i < n && (p[i] == ' ' || p[i] == '\t'))
        i++;
    if (i < n && p[i] != ';')
        return -1;
    for (; i < n; i++)
        if (((unsigned char)p[i] < 32 && p[i] != '\t') || p[i] == 127)
            return -1;
    return size;
}

/* A line of at most cap bytes into f->line: 1 when it ended, 0 when more is
 * needed, -1 when over cap; *used says how many bytes it took. */
static int line_of(frame *f, const char *p, size_t n, size_t cap, size_t *used)
{
    const char *nl = memchr(p, '\n', n);
    size_t k = nl ? (size_t)(nl - p) + 1 : n;
    *used = k;
    if (f->line.n + k > cap)
        return -1;
    if (!sbuf_add(&f->line, p, k))
        return -1;
    return nl != NULL;
}

int frame_body(frame *f, const char *p, size_t n)
{
    while (n > 0) {
        size_t used = 0;
        int r;
        switch (f->state) {
        case FR_LENGTH:
        case FR_DATA:
            used = (double)n < f->left ? n : (size_t)f->left;
            if (add(f, p, used))
                return f->outcome;
            f->left -= (double)used;
            if (f->left <= 0)
                f->state = f->state == FR_LENGTH ? FR_DONE : FR_DATA_END;
            break;
        case FR_SIZE:
            r = line_of(f, p, n, CHUNK_LINE_MAX, &used);
            if (r < 0)
                return failed(f, OUT_FRAMING, "the answer's chunk size line is too long");
            if (r > 0) {
                double size = chunk_size(f->line.p, f->line.n - 1);
                sbuf_wipe(&f->line);
                f->line.n = 0;
                if (size < 0)
                    return failed(f, OUT_FRAMING, "the answer has an invalid chunk size");
                if (size > 0 && (double)f->body->n + size > (double)f->max)
                    return failed(f, OUT_TOO_LARGE, NULL);
                f->left = size;
                f->state = size > 0 ? FR_DATA : FR_TRAILER;
            }
            break;
        case FR_DATA_END:
            r = line_of(f, p, n, 2, &used);
            if (r < 0 || (r > 0 && !(f->line.n == 1 || (f->line.n == 2 && f->line.p[0] == '\r'))))
                return failed(f, OUT_FRAMING, "the answer has a chunk not ended by its line end");
            if (r > 0) {
                f->line.n = 0;
                f->state = FR_SIZE;
            }
            break;
        case FR_TRAILER:
            r = line_of(f, p, n, NOMBA_MAX_HEADERS, &used);
            f->trailer += used;
            if (r < 0 || f->trailer > NOMBA_MAX_HEADERS)
                return failed(f, OUT_HEADERS_TOO_LARGE, NULL);
            if (r > 0) {
                int blank = f->line.n == 1 || (f->line.n == 2 && f->line.p[0] == '\r');
                sbuf_wipe(&f->line);
                f->line.n = 0;
                if (blank)
                    f->state = FR_DONE;
            }
            break;
        case FR_CLOSE:
            used = n;
            if (add(f, p, n))
                return f->outcome;
            break;
        case FR_DONE:
            f->extra = 1;            /* bytes past the answer's end: the connection is not reused */
            return OUT_NONE;
        default:
            return f->outcome ? f->outcome : OUT_FRAMING;
        }
        p += used;
        n -= used;
    }
    return OUT_NONE;
}

/* The Content-Length and Transfer-Encoding of a header block. */
typedef struct {
    int has_length, bad_length, chunked;
    double length;
} lengths;

static void length_line(lengths *f, const char *line, size_t len)
{
    const char *name, *val;
    size_t nn, vn;
    if (!head_field(line, len, &name, &nn, &val, &vn))
        return;
    if (codec_name_is(name, nn, "content-length")) {
        double v = 0;
        if (f->has_length || !codec_digits(val, vn, 999999999999999.0, &v))
            f->bad_length = 1;      /* two lengths, or not digits: no length to trust */
        f->has_length = 1;
        f->length = v;
    } else if (codec_name_is(name, nn, "transfer-encoding")) {
        size_t i;
        for (i = 0; i + 7 <= vn; i++)
            if (codec_name_is(val + i, 7, "chunked"))
                f->chunked = 1;
    }
}

/* The header block in f->head has ended: an interim answer is passed over,
 * the answer's body framed. */
static int head_ended(frame *f)
{
    const char *p = f->head.p, *e = p + f->head.n;
    const char *nl = memchr(p, '\n', f->head.n);
    long status = head_status(p, nl ? (size_t)(nl - p + 1) : f->head.n);
    lengths l;
    int close = 0;
    if (status == 0)
        return failed(f, OUT_FRAMING, "not an HTTP answer");
    if (status == 101)
        return failed(f, OUT_FRAMING, "the answer switches protocols (101)");
    if (status < 200) {
        sbuf_wipe(&f->head);
        f->head.n = 0;
        f->col = 0;
        return OUT_NONE;
    }
    memset(&l, 0, sizeof l);
    for (p = nl ? nl + 1 : e; p < e;) {
        const char *end = memchr(p, '\n', (size_t)(e - p));
        size_t len = end ? (size_t)(end - p) + 1 : (size_t)(e - p);
        const char *name, *val;
        size_t nn, vn;
        length_line(&l, p, len);
        if (head_field(p, len, &name, &nn, &val, &vn) && codec_name_is(name, nn, "connection") && vn == 5 &&
            codec_name_is(val, 5, "close"))
            close = 1;
        p += len;
    }
    f->close = close;
    f->in_body = 1;
    return frame_body_begin(f, status, l.chunked, l.has_length, l.bad_length, l.length);
}

int frame_feed(frame *f, const char *p, size_t n)
{
    while (n > 0 && !f->in_body && f->state != FR_FAILED) {
        size_t i, end = 0;
        f->got = 1;
        for (i = 0; i < n && end == 0; i++) {
            if (p[i] == '\n') {
                if (f->col == 0)
                    end = i + 1;
                f->col = 0;
            } else if (p[i] != '\r') {
                f->col++;
            }
        }
        i = end ? end : n;
        if (f->head.n + i > NOMBA_MAX_HEADERS)
            return failed(f, OUT_HEADERS_TOO_LARGE, NULL);
        if (!sbuf_add(&f->head, p, i))
            return failed(f, OUT_FAILED, "out of memory");
        p += i;
        n -= i;
        if (end && head_ended(f))
            return f->outcome;
    }
    if (f->state == FR_FAILED)
        return f->outcome;
    return n > 0 ? frame_body(f, p, n) : OUT_NONE;
}

int frame_end(frame *f, int broken)
{
    if (f->state == FR_FAILED)
        return f->outcome;
    if (f->state == FR_DONE || (f->state == FR_CLOSE && !broken))
        return OUT_NONE;
    if (!f->got && !f->in_body)
        return failed(f, OUT_RESET, NULL);
    return failed(f, OUT_TRUNCATED, f->in_body ? "the answer is truncated (in its body)"
                                               : "the answer is truncated (in its headers)");
}

void frame_free(frame *f)
{
    sbuf_free(&f->line);
    sbuf_free(&f->head);
}

/* ---- the Lua frame (cosockets, a Lua transport's bytes) -------------------- */

typedef struct {
    frame f;
    sbuf body;
} lua_frame;

frame *frame_test(lua_State *L, int idx)
{
    lua_frame *lf = (lua_frame *)luaL_testudata(L, idx, FRAME_MT);
    return lf ? &lf->f : NULL;
}

static lua_frame *check(lua_State *L)
{
    return (lua_frame *)luaL_checkudata(L, 1, FRAME_MT);
}

/* The outcome of a failure: nil, its name, its message[, status]. */
static int push_failure(lua_State *L, const frame *f)
{
    lua_pushnil(L);
    lua_pushstring(L, outcome_name(f->outcome));
    lua_pushstring(L, f->why ? f->why : outcome_message(f->outcome));
    if (f->status > 0) {
        lua_pushinteger(L, (lua_Integer)f->status);
        return 4;
    }
    return 3;
}

static int frame_lfeed(lua_State *L)
{
    lua_frame *lf = check(L);
    size_t n;
    const char *p = luaL_checklstring(L, 2, &n);
    if (frame_feed(&lf->f, p, n) != OUT_NONE)
        return push_failure(L, &lf->f);
    lua_pushboolean(L, lf->f.state == FR_DONE);
    return 1;
}

static int frame_lfinish(lua_State *L)
{
    lua_frame *lf = check(L);
    if (frame_end(&lf->f, lua_toboolean(L, 2)) != OUT_NONE)
        return push_failure(L, &lf->f);
    lua_pushboolean(L, 1);
    return 1;
}

static int frame_lstatus(lua_State *L)
{
    lua_frame *lf = check(L);
    if (lf->f.status <= 0)
        return 0;
    lua_pushinteger(L, (lua_Integer)lf->f.status);
    return 1;
}

static int frame_lreusable(lua_State *L)
{
    lua_frame *lf = check(L);
    lua_pushboolean(L, lf->f.state == FR_DONE && !lf->f.close && !lf->f.extra);
    return 1;
}

static int frame_gc(lua_State *L)
{
    lua_frame *lf = check(L);
    frame_free(&lf->f);
    sbuf_free(&lf->body);
    return 0;
}

/* core.frame(method, max[, bytes]) */
static int frame_new(lua_State *L)
{
    const char *method = luaL_optstring(L, 1, "POST");
    lua_Number max = luaL_checknumber(L, 2);
    lua_frame *lf;
    size_t n = 0;
    const char *bytes = luaL_optlstring(L, 3, NULL, &n);
    luaL_argcheck(L, max >= 0 && max <= NOMBA_MAX_RESPONSE, 2, "max must be 0 to 64 MiB");
    lf = (lua_frame *)lua_newuserdata(L, sizeof *lf);
    memset(lf, 0, sizeof *lf);
    luaL_getmetatable(L, FRAME_MT);
    lua_setmetatable(L, -2);
    frame_init(&lf->f, method, (size_t)max, &lf->body);
    if (bytes != NULL && (frame_feed(&lf->f, bytes, n) != OUT_NONE || frame_end(&lf->f, 0) != OUT_NONE))
        return push_failure(L, &lf->f);
    return 1;
}

void frame_open(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"feed", frame_lfeed},
        {"finish", frame_lfinish},
        {"status", frame_lstatus},
        {"reusable", frame_lreusable},
        {NULL, NULL}
    };
    if (luaL_newmetatable(L, FRAME_MT)) {
        lua_newtable(L);
        luaL_setfuncs(L, methods, 0);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, frame_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushliteral(L, "nomba.oauth.Frame");
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, frame_new);
    lua_setfield(L, -2, "frame");
}
