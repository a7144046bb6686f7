/*
 * answer.c: an API call's answer as Lua sees it: {status, headers, body,
 * code, rate_limit}, redacted of echoed secrets, its `json` and `data`
 * decoded when first read (answer_attach).
 */
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <stdio.h>
#include <strings.h>
#include "nomba.h"

/* ---- API answers (OP_REQUEST) -------------------------------------------- */

static const char answer_key = 'a';   /* registry key: the metatable of an API answer */

/* Whether an API answer's body is read as JSON: a JSON content type, or a
 * body that starts like an object or an array. */
int answer_json_like(const nomba_answer_meta *m, const char *body, size_t n)
{
    size_t i;
    if (n == 0)
        return 0;
    for (i = 0; m->content_type[i] != '\0'; i++)
        if (codec_name_is(m->content_type + i, 4, "json"))
            return 1;
    for (i = 0; i < n && (body[i] == ' ' || (body[i] >= '\t' && body[i] <= '\r')); i++)
        ;
    return i < n && (body[i] == '{' || body[i] == '[');
}

/* A rate-limit count: digits only, at most 9 of them. */
static int count_of(const char *s, double *out)
{
    return s[0] != '\0' && codec_digits(s, strlen(s), 999999999.0, out);
}

/* Pushes an API call's answer, the result of client:request (or the
 * `response` of its error): {status, headers (lower-case names, repeats
 * joined), body, code, rate_limit = {limit, remaining, window}}, its
 * headers and body redacted of any echoed secret. json and data are decoded
 * on their first read (most calls read neither). */
void answer_push(lua_State *L, const client *c, const nomba_answer_meta *m, const char *head, size_t hn,
                 const char *body, size_t n, const char *code, size_t codelen, int json)
{
    const echo_index *ix = echo_for(L, c);
    size_t at, len;
    double limit = 0, remaining = 0, window = 0;
    int has_limit, has_remaining;
    lua_createtable(L, 0, 7);
    lua_pushinteger(L, (lua_Integer)m->status);
    lua_setfield(L, -2, "status");
    if (echo_find(ix, head, hn, &at, &len)) {
        size_t k;
        const char *h;
        echo_push(L, ix, head, hn);
        h = lua_tolstring(L, -1, &k);
        head_push(L, h, k);
        lua_remove(L, -2);
    } else {
        head_push(L, head, hn);
    }
    lua_setfield(L, -2, "headers");
    echo_push(L, ix, body, n);
    lua_setfield(L, -2, "body");
    if (code != NULL) {
        lua_pushlstring(L, code, codelen);
        lua_setfield(L, -2, "code");
    }
    has_limit = count_of(m->rl_limit, &limit);
    has_remaining = count_of(m->rl_remaining, &remaining);
    if (has_limit || has_remaining) {
        lua_createtable(L, 0, 3);
        if (has_limit) {
            lua_pushinteger(L, (lua_Integer)limit);
            lua_setfield(L, -2, "limit");
        }
        if (has_remaining) {
            lua_pushinteger(L, (lua_Integer)remaining);
            lua_setfield(L, -2, "remaining");
        }
        if (m->rl_window[0] != '\0' && head_window(m->rl_window, &window)) {
            if (window == floor(window) && window < 1e15)
                lua_pushinteger(L, (lua_Integer)window);
            else
                lua_pushnumber(L, window);
            lua_setfield(L, -2, "window");
        }
        lua_setfield(L, -2, "rate_limit");
    }
    if (json) {
        lua_pushlightuserdata(L, (void *)&answer_key);
        lua_rawget(L, LUA_REGISTRYINDEX);
        lua_setmetatable(L, -2);
    }
}

/* Decodes an API answer's body into its json and data, and makes it a
 * plain table. */
static void answer_decode(lua_State *L, int idx)
{
    size_t n;
    const char *body;
    lua_pushnil(L);
    lua_setmetatable(L, idx);
    lua_pushliteral(L, "body");
    lua_rawget(L, idx);
    body = lua_tolstring(L, -1, &n);
    if (body != NULL && json_push(L, body, n, NOMBA_MAX_JSON_DEPTH)) {
        lua_pushliteral(L, "json");
        lua_pushvalue(L, -2);
        lua_rawset(L, idx);
        if (lua_istable(L, -1)) {
            lua_pushliteral(L, "data");
            lua_pushliteral(L, "data");
            lua_rawget(L, -3);
            lua_rawset(L, idx);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* __index of an API answer: json and data, decoded on their first read. */
static int answer__index(lua_State *L)
{
    size_t n;
    const char *k = lua_type(L, 2) == LUA_TSTRING ? lua_tolstring(L, 2, &n) : NULL;
    if (k == NULL || !((n == 4 && memcmp(k, "json", 4) == 0) || (n == 4 && memcmp(k, "data", 4) == 0)))
        return 0;
    answer_decode(L, 1);
    lua_pushvalue(L, 2);
    lua_rawget(L, 1);
    return 1;
}

/* __pairs (Lua 5.2+): decoded first, then the plain table's next. */
static int answer__pairs(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    answer_decode(L, 1);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* The error on top of the stack is an API call's: it carries the answer
 * (`response`) and may have reached Nomba (`maybe_sent`). */
void answer_attach(lua_State *L, const client *c, const nomba_answer_meta *m, const char *head, size_t hn,
                   const char *body, size_t n, const char *code, size_t codelen, int json)
{
    answer_push(L, c, m, head, hn, body, n, code, codelen, json);
    lua_setfield(L, -2, "response");
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "maybe_sent");
}

void answer_open(lua_State *L)
{
    /* the metatable of an API answer, until its json is first read */
    lua_pushlightuserdata(L, (void *)&answer_key);
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, answer__index);
    lua_setfield(L, -2, "__index");
    lua_getglobal(L, "next");
    lua_pushcclosure(L, answer__pairs, 1);
    lua_setfield(L, -2, "__pairs");
    lua_rawset(L, LUA_REGISTRYINDEX);
}
