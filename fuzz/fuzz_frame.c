/*
 * libFuzzer harness: the one framing rule (frame.c). Byte 0 holds the
 * flags (bit 0: the request was a HEAD; bits 1-7: where the bytes are cut
 * in two, as two reads), the rest is what the server sent. The same bytes
 * read whole, cut in two, and a byte at a time must give the same outcome
 * and the same body; a body is never over its cap; a complete answer has a
 * status of 200 to 999.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "nomba.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CAP 4096

/* Reads p in pieces of `piece` bytes (0: whole, else the first cut at
 * `cut`); returns the outcome, the body in *body. */
static int read_all(const char *p, size_t n, int head, size_t cut, size_t piece, sbuf *body, long *status)
{
    frame f;
    int o = OUT_NONE;
    size_t i = 0;
    frame_init(&f, head ? "HEAD" : "GET", CAP, body);
    if (piece == 0 && cut < n) {
        o = frame_feed(&f, p, cut);
        i = cut;
    }
    while (o == OUT_NONE && i < n) {
        size_t k = piece == 0 ? n - i : (piece < n - i ? piece : n - i);
        o = frame_feed(&f, p + i, k);
        i += k;
    }
    if (o == OUT_NONE)
        o = frame_end(&f, 0);
    if (body->n > CAP)
        __builtin_trap();
    if (o == OUT_NONE && (f.status < 200 || f.status > 999))
        __builtin_trap();
    *status = f.status;
    frame_free(&f);
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sbuf a = {NULL, 0, 0}, b = {NULL, 0, 0}, c = {NULL, 0, 0};
    long sa, sb, sc;
    int oa, ob, oc, head;
    size_t cut;
    if (size < 1 || size > 65536)
        return 0;
    head = data[0] & 1;
    cut = (size_t)(data[0] >> 1) * (size - 1) / 127;
    oa = read_all((const char *)data + 1, size - 1, head, size, 0, &a, &sa);
    ob = read_all((const char *)data + 1, size - 1, head, cut, 0, &b, &sb);
    oc = read_all((const char *)data + 1, size - 1, head, size, 1, &c, &sc);
    if (oa != ob || oa != oc || (oa == OUT_NONE && (sa != sb || sa != sc)))
        __builtin_trap();
    if (oa == OUT_NONE && (a.n != b.n || a.n != c.n || (a.n && (memcmp(a.p, b.p, a.n) || memcmp(a.p, c.p, a.n)))))
        __builtin_trap();
    sbuf_free(&a);
    sbuf_free(&b);
    sbuf_free(&c);
    return 0;
}
