/*
 * attempt.c: an attempt's buffers, the client's only while it lasts.
 *
 * An attempt (c->at) starts with attempt_begin() and ends with
 * attempt_end(), which wipes everything that held a secret: the only two
 * places that do. A non-blocking attempt stays begun until its transfer
 * ends or is aborted. attempt_free() ends it and frees the client's
 * request caches (cleanup).
 */
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <stdio.h>
#include <strings.h>
#include "nomba.h"

/* Starts an attempt: refused while a non-blocking one is in flight. The
 * attempt's memory is the client's only while it lasts. */
int attempt_begin(lua_State *L, client *c, int op)
{
    nomba_err e;
    if (c->at != NULL && c->at->in_flight) {
        err_init(&e, "config", op, "a non-blocking transfer is in flight: finish it with step() or wait()");
        return err_return(L, c, &e);
    }
    attempt_end(c);
    if (!attempt_ensure(c))
        return luaL_error(L, "nomba.oauth: out of memory");
    return 0;
}

/* An attempt, begun if none is: 0 when out of memory. */
int attempt_ensure(client *c)
{
    if (c->at == NULL && (c->at = (attempt *)calloc(1, sizeof *c->at)) != NULL)
        c->at->max_response = c->cfg.max_response;
    return c->at != NULL;
}

/* Ends an attempt: every buffer that held a secret is wiped and given back
 * (the secret slab keeps the memory for the next attempt of any client). */
void attempt_end(client *c)
{
    attempt *a = c->at;
    int i;
    if (a == NULL)
        return;
    sbuf_free(&a->body);
    sbuf_free(&a->bearer_hdr);
    sbuf_free(&a->resp);
    sbuf_free(&a->head);
    frame_free(&a->fr);
    for (i = 0; i < 2; i++) {
        sbuf_free(&a->req_secret[i]);
        sbuf_free(&a->scratch[i]);
    }
    free(a->req_url);
    if (a->extra_last != NULL)
        a->extra_last->next = NULL;         /* the tail is the endpoint's, not this attempt's */
    curl_slist_free_all(a->extra);
    free(a);
    c->at = NULL;
}

/* Cleanup: ends the attempt, if any, and frees the client's request caches. */
void attempt_free(client *c)
{
    int i;
    attempt_end(c);
    for (i = 0; i <= OP_REVOKE; i++) {
        free(c->body_open[i]);
        c->body_open[i] = NULL;
    }
    if (c->op_lines != NULL) {
        c->op_lines->next = NULL;        /* the endpoint's lines are not the client's */
        curl_slist_free_all(c->op_lines);
        c->op_lines = NULL;
    }
}

