/*
 * outcome.c: what an attempt that got no answer to interpret was, in one
 * table for every driver. A driver reports a raw outcome (it could not
 * resolve or connect, TLS failed, the time ran out, the connection closed
 * or broke before the answer, the answer was cut, badly framed or too
 * large ...) and whether any byte of the request left; this table alone
 * makes the error: its kind, whether it is retryable, and, for an API
 * call, `maybe_sent`. The error is made with its client, so its message
 * is redacted by err.c's one rule, whoever wrote it.
 *
 *   core.abandon(client, op, outcome, message, sent, status) -> nil, err, status
 *       (sent false: no byte of the request left; an unknown outcome name
 *       is "failed")
 */
#include <string.h>
#include "nomba.h"

static const struct {
    const char *name, *kind;
    int retryable;
    int never_sent;         /* the request cannot have left, whatever the driver says */
    const char *message;    /* when the driver gives none */
} OUTCOMES[OUT__N] = {
    [OUT_NONE]              = {"none", "transport", 1, 0, "the transport failed"},
    [OUT_RESOLVE]           = {"resolve", "transport", 1, 1, "could not resolve the host"},
    [OUT_REFUSED]           = {"refused", "transport", 1, 1, "could not connect"},
    [OUT_PROXY]             = {"proxy", "transport", 1, 1, "the proxy did not open a tunnel"},
    [OUT_TLS]               = {"tls", "tls", 0, 1, "the TLS handshake failed"},
    [OUT_CONFIG]            = {"config", "config", 0, 1, "the request cannot be made"},
    [OUT_SEND]              = {"send", "transport", 1, 0, "sending the request failed"},
    [OUT_TIMEOUT]           = {"timeout", "timeout", 1, 0, "timeout"},
    [OUT_RESET]             = {"reset", "transport", 1, 0, "the connection ended before an answer"},
    [OUT_TRUNCATED]         = {"truncated", "protocol", 1, 0, "the answer is truncated"},
    [OUT_FRAMING]           = {"framing", "protocol", 0, 0, "the answer is not framed as HTTP/1.1 says"},
    [OUT_TOO_LARGE]         = {"too_large", "protocol", 0, 0, "the answer exceeds max_response_bytes"},
    [OUT_HEADERS_TOO_LARGE] = {"headers_too_large", "protocol", 0, 0, "the answer's headers are too large"},
    [OUT_FAILED]            = {"failed", "transport", 1, 0, "the transport failed"},
    [OUT_RAISED]            = {"raised", "transport", 1, 0, "the transport raised an error"},
};

const char *outcome_name(int o)
{
    return o > OUT_NONE && o < OUT__N ? OUTCOMES[o].name : "failed";
}

const char *outcome_message(int o)
{
    return o > OUT_NONE && o < OUT__N ? OUTCOMES[o].message : OUTCOMES[OUT_FAILED].message;
}

/* Pushes the error of outcome o for op (message: NULL for the table's),
 * made with c so its message is redacted. */
void outcome_push(lua_State *L, const client *c, int op, int o, const char *msg, size_t n, long status, int sent)
{
    nomba_err e;
    if (o <= OUT_NONE || o >= OUT__N)
        o = OUT_FAILED;
    err_init(&e, OUTCOMES[o].kind, op, msg != NULL ? msg : OUTCOMES[o].message);
    if (msg != NULL)
        e.msglen = n;
    e.retryable = OUTCOMES[o].retryable;
    e.status = status > 0 && status <= 999 ? status : 0;
    err_push(L, c, &e);
    if (op == OP_REQUEST) {
        lua_pushboolean(L, sent && !OUTCOMES[o].never_sent);
        lua_setfield(L, -2, "maybe_sent");
    }
}

/* Pushes nil, the error, the status (or nil): what an attempt returns. */
int outcome_return(lua_State *L, const client *c, int op, int o, const char *msg, size_t n, long status, int sent)
{
    lua_pushnil(L);
    outcome_push(L, c, op, o, msg, n, status, sent);
    if (status > 0 && status <= 999)
        lua_pushinteger(L, (lua_Integer)status);
    else
        lua_pushnil(L);
    return 3;
}

int outcome_check(lua_State *L, int idx)
{
    const char *name = luaL_checkstring(L, idx);
    int o;
    for (o = OUT_NONE + 1; o < OUT__N; o++)
        if (strcmp(name, OUTCOMES[o].name) == 0)
            return o;
    return OUT_FAILED;
}
