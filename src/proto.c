/*
 * proto.c: the wire contract's Lua side: the C core as a Lua transport
 * (and the cosockets) uses it. The contract itself is written once, in
 * build.c (requests), frame.c (where answers end), interpret.c (what they
 * mean), answer.c (an API answer as Lua sees it) and outcome.c (failures);
 * attempt.c holds an attempt's buffers.
 *
 * proto_build() (build.c) turns an operation into a URL, a JSON body and
 * maybe a bearer header; proto_interpret() (interpret.c) turns (status,
 * headers, body) into a result or a typed error. Every driver, libcurl in
 * C and any Lua transport, goes through these two.
 *
 *   core.request(client, op, args) -> {op, method, url, headers, body, timeout,
 *                                      connect_timeout, max_response_bytes[, proxy]} | nil, err
 *   core.answer(client, op, frame | status, headers, body) -> result, nil, status | nil, err, status
 *   core.abandon(client, op, outcome, message, sent, status) -> nil, err, status
 */
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <stdio.h>
#include <strings.h>
#include "nomba.h"

/* ---- the Lua side of the contract: requests for a Lua transport ---------- */

/* core.request(client, op, args): the request a Lua transport carries. The
 * body becomes a Lua string: that is the price of a custom transport. */
static int proto_request(lua_State *L)
{
    client *c = client_check(L, 1);
    int op = nomba_checkop(L, 2);
    int r;
    if (c->closed)
        return err_simple(L, "closed", op, "the client is closed");
    lua_settop(L, 3);
    if ((r = attempt_begin(L, c, op)) != 0 || (r = proto_build(L, c, op, 3)) != 0) {
        attempt_end(c);
        return r;
    }
    lua_createtable(L, 0, 9);
    lua_pushstring(L, c->at->method != NULL ? c->at->method : "POST");
    lua_setfield(L, -2, "method");
    lua_pushstring(L, c->at->url);
    lua_setfield(L, -2, "url");
    lua_pushlstring(L, c->at->body.p ? c->at->body.p : "", c->at->body.n);
    lua_setfield(L, -2, "body");
    lua_createtable(L, 0, 6);
    {
        const struct curl_slist *l;
        for (l = c->at->lines; l != NULL; l = l->next) {
            const char *name, *val;
            size_t nn, vn;
            if (!head_field(l->data, strlen(l->data), &name, &nn, &val, &vn) || vn == 0)
                continue;           /* "Expect:" is libcurl's, not a header */
            lua_pushlstring(L, name, nn);
            lua_pushlstring(L, val, vn);
            lua_rawset(L, -3);
        }
    }
    if (c->at->bearer_hdr.n > 0) {
        /* "Authorization: Bearer x" -> "Bearer x" */
        const char *v = c->at->bearer_hdr.p + sizeof "Authorization: " - 1;
        lua_pushlstring(L, v, c->at->bearer_hdr.n - (sizeof "Authorization: " - 1));
        lua_setfield(L, -2, "Authorization");
    }
    lua_setfield(L, -2, "headers");
    lua_pushnumber(L, c->cfg.timeout);
    lua_setfield(L, -2, "timeout");
    lua_pushnumber(L, c->cfg.ep->connect_timeout);
    lua_setfield(L, -2, "connect_timeout");
    lua_pushinteger(L, (lua_Integer)c->at->max_response);
    lua_setfield(L, -2, "max_response_bytes");
    lua_pushstring(L, nomba_op_names[op]);
    lua_setfield(L, -2, "op");
    if (c->cfg.ep->proxy != NULL) {
        lua_pushstring(L, c->cfg.ep->proxy);
        lua_setfield(L, -2, "proxy");
    }
    /* the secrets stay until the answer: its messages are redacted of them */
    sbuf_wipe(&c->at->body);
    sbuf_wipe(&c->at->bearer_hdr);
    return 1;
}

/* core.answer(client, op, frame) or core.answer(client, op, status, headers,
 * body): interprets an answer a Lua transport received, exactly as the
 * libcurl path does, and ends the attempt.
 *   - a frame (core.frame: the cosocket transport, or a transport's raw
 *     bytes) was framed by frame.c as it was read;
 *   - else `headers` is the raw header block (a string, up to and
 *     including its empty line) or a table (any case of the names; a list
 *     value is one line per entry), and `body` the decoded body: the same
 *     rule judges whether it is whole (a block cut before its empty line,
 *     a body shorter than its Content-Length, bodiless answers). */
static int proto_answer(lua_State *L)
{
    client *c = client_check(L, 1);
    int op = nomba_checkop(L, 2);
    frame *given = frame_test(L, 3), own;
    sbuf lines = {NULL, 0, 0}, body = {NULL, 0, 0};
    const char *head = "";
    size_t hn = 0;
    long status;
    int r, o = OUT_NONE;
    if (c->closed)
        return err_simple(L, "closed", op, "the client is closed");
    if (!attempt_ensure(c))             /* an answer to no request still gets the same reading */
        return luaL_error(L, "nomba.oauth: out of memory");
    memset(&c->at->meta, 0, sizeof c->at->meta);
    if (given == NULL && lua_type(L, 3) == LUA_TUSERDATA) {
        static const char none[] = "the transport returned no HTTP answer";
        r = outcome_return(L, c, op, OUT_FRAMING, none, sizeof none - 1, 0, 1);
        if (c->at != NULL && !c->at->in_flight)
            attempt_end(c);
        return r;
    }
    if (given != NULL) {
        status = given->status;
        head = given->head.p ? given->head.p : "";
        hn = given->head.n;
        head_scan(&c->at->meta, head, hn);
        if (given->state != FR_DONE && given->state != FR_CLOSE)
            o = frame_end(given, 1);
    } else {
        size_t n = 0;
        const char *b;
        lua_Integer st = luaL_checkinteger(L, 3);
        status = (long)st;
        b = luaL_optlstring(L, 5, "", &n);
        if (lua_type(L, 4) == LUA_TSTRING) {
            head = lua_tolstring(L, 4, &hn);
        } else if (!lua_isnoneornil(L, 4)) {
            luaL_checktype(L, 4, LUA_TTABLE);
            if (!head_from_table(L, 4, &lines)) {
                sbuf_free(&lines);
                return luaL_error(L, "nomba.oauth: out of memory");
            }
            head = lines.p ? lines.p : "";
            hn = lines.n;
        }
        head_scan(&c->at->meta, head, hn);
        frame_init(&own, c->at->method, c->at->max_response, &body);
        if (lua_type(L, 4) == LUA_TSTRING && !(hn >= 2 && head[hn - 1] == '\n' &&
                                               (head[hn - 2] == '\n' || (hn >= 3 && head[hn - 2] == '\r' &&
                                                                           head[hn - 3] == '\n')))) {
            own.state = FR_FAILED;
            own.outcome = o = OUT_TRUNCATED;
            own.why = "the answer is truncated (in its headers)";
        } else {
            /* the transport removed any transfer coding: a Content-Length still says how much was due */
            if ((o = frame_begin_noted(&own, &c->at->meta, status, 1)) == OUT_NONE &&
                (o = frame_body(&own, b, n)) == OUT_NONE)
                o = frame_end(&own, 0);
        }
        given = &own;
    }
    c->at->meta.status = status;
    if (o != OUT_NONE)
        r = outcome_return(L, c, op, o, given->why, given->why ? strlen(given->why) : 0, status, 1);
    else
        r = proto_interpret(L, 1, c, op, &c->at->meta, head, hn, given->body->p ? given->body->p : "",
                            given->body->n);
    if (given == &own)
        frame_free(&own);
    else
        sbuf_wipe(given->body);
    sbuf_free(&body);
    sbuf_free(&lines);
    if (c->at != NULL && !c->at->in_flight)
        attempt_end(c);
    return r;
}

/* core.abandon(client, op, outcome, message, sent, status): the attempt a
 * Lua transport carried ended without an answer. Ends it (wiping what it
 * held) and returns nil, the error outcome.c makes of it (its message
 * redacted of the client's secrets), and the status, if one came. */
static int proto_abandon(lua_State *L)
{
    client *c = client_check(L, 1);
    int op = nomba_checkop(L, 2);
    int o = outcome_check(L, 3);
    size_t n = 0;
    const char *msg = luaL_optlstring(L, 4, NULL, &n);
    int sent = !(lua_type(L, 5) == LUA_TBOOLEAN && !lua_toboolean(L, 5));
    lua_Number status = luaL_optnumber(L, 6, 0);
    int r = outcome_return(L, c, op, o, msg, n, status >= 100 && status <= 999 ? (long)status : 0, sent);
    if (c->at != NULL && !c->at->in_flight)
        attempt_end(c);
    return r;
}

void proto_open(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"request", proto_request},
        {"answer", proto_answer},
        {"abandon", proto_abandon},
        {NULL, NULL}
    };
    build_open(L);
    answer_open(L);
    luaL_setfuncs(L, funcs, 0);
}
