/*
 * build.c: every request, built once for every driver (proto_build): an
 * operation's URL, its header lines (written once per client) and its JSON
 * body, and an API call's own method, URL and lines, judged here.
 *
 * JSON is lua-cjson's, through a private instance (cjson.safe.new()) kept
 * in the registry, so other code's cjson settings never change ours. A
 * secret never becomes a Lua string on the libcurl path: cjson encodes the
 * non-secret fields, and the secret is appended in C into a client-owned
 * buffer.
 */
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <stdio.h>
#include <strings.h>
#include "nomba.h"

static const char json_key = 'j';   /* registry key: our cjson instance */

static void push_json_fn(lua_State *L, const char *name)
{
    lua_pushlightuserdata(L, (void *)&json_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, name);
    lua_remove(L, -2);
}

/* The token operations' lines: the client's accountId in front of the
 * endpoint's (Content-Type, Accept, User-Agent, "Expect:"). Made once per
 * client; 0 when out of memory. */
static int client_lines(client *c)
{
    struct curl_slist *a;
    if (c->op_lines != NULL)
        return 1;
    if ((a = endpoint_line(NULL, "accountId", c->cfg.account_id)) == NULL)
        return 0;
    a->next = c->cfg.ep->ct_tail;
    c->op_lines = a;
    return 1;
}

static int config_error(lua_State *L, client *c, int op, const char *msg)
{
    nomba_err e;
    err_init(&e, "config", op, msg);
    return err_return(L, c, &e);
}

/* A string field of the args table at idx, or NULL. */
static const char *arg_string(lua_State *L, int idx, const char *name, size_t *n)
{
    const char *s = NULL;
    if (!lua_istable(L, idx))
        return NULL;
    lua_getfield(L, idx, name);
    if (lua_type(L, -1) == LUA_TSTRING)
        s = lua_tolstring(L, -1, n);
    lua_pop(L, 1);   /* the string stays alive in the args table */
    return s;
}

static void set_field(lua_State *L, const char *k, const char *v)
{
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
}

static void copy_arg(lua_State *L, int argidx, const char *name)
{
    size_t n;
    const char *v = arg_string(L, argidx, name, &n);
    if (v != NULL) {
        lua_pushlstring(L, v, n);
        lua_setfield(L, -2, name);
    }
}

/* Encodes the table on top of the stack (popping it) with our cjson and
 * returns the JSON without its closing brace as a malloc'd string. */
static char *encode_open(lua_State *L, size_t *n)
{
    const char *json;
    char *out = NULL;
    push_json_fn(L, "encode");
    lua_insert(L, -2);
    lua_call(L, 1, 1);
    json = lua_tolstring(L, -1, n);
    if (json != NULL && *n >= 2 && json[*n - 1] == '}')
        out = nomba_strndup(json, --*n);
    lua_pop(L, 1);
    return out;
}

/* The non-secret part of a request body. For issue, refresh and revoke it
 * never changes for a client, so it is encoded once and kept; authorize and
 * exchange carry per-call values. The caller frees what *fresh says. */
static const char *body_open(lua_State *L, client *c, int op, int argidx, size_t *n, int *fresh)
{
    *fresh = 0;
    if (op <= OP_REVOKE && c->body_open[op] != NULL) {
        *n = strlen(c->body_open[op]);
        return c->body_open[op];
    }
    lua_createtable(L, 0, 6);
    switch (op) {
    case OP_ISSUE:
        set_field(L, "grant_type", "client_credentials");
        set_field(L, "client_id", c->cfg.client_id);
        break;
    case OP_REFRESH:
        set_field(L, "grant_type", "refresh_token");
        break;
    case OP_REVOKE:
        set_field(L, "clientId", c->cfg.client_id);
        break;
    case OP_AUTHORIZE:
        set_field(L, "client_id", c->cfg.client_id);
        set_field(L, "code_challenge_method", "S256");
        copy_arg(L, argidx, "code_challenge");
        copy_arg(L, argidx, "code_challenge_method");
        copy_arg(L, argidx, "redirect_uri");
        copy_arg(L, argidx, "state");
        copy_arg(L, argidx, "scope");
        break;
    default: /* OP_EXCHANGE */
        set_field(L, "grant_type", "authorization_code");
        set_field(L, "client_id", c->cfg.client_id);
        copy_arg(L, argidx, "auth_code");
        break;
    }
    if (op == OP_AUTHORIZE || op == OP_EXCHANGE) {
        *fresh = 1;
        return encode_open(L, n);
    }
    c->body_open[op] = encode_open(L, n);
    return c->body_open[op];
}

/* An authorized API call (OP_REQUEST). The Lua layer checked the caller's
 * arguments and gives: method, url, lines (header lines), body, fresh,
 * max_response. Here: the URL must stay on the base URL's scheme, host and
 * port (judged by libcurl's parser), header lines carry no line breaks,
 * and the bearer is the kept access token (its only copy stays in C). */
static const char *const METHODS[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", NULL};

/* Whether the caller's lines name the header of the line t ("Name: v"). */
static int named(const struct curl_slist *l, const char *t)
{
    size_t k = strcspn(t, ":");
    for (; l != NULL; l = l->next)
        if (strncasecmp(l->data, t, k) == 0 && l->data[k] == ':')
            return 1;
    return 0;
}

/* An API call's lines end with the client's tail: linked to it, or, when
 * the caller set Accept or User-Agent itself, with copies of the rest of
 * it (a header is sent once, the caller's). 0 when out of memory. */
static int end_lines(client *c)
{
    const struct curl_slist *t;
    int own = 0;
    for (t = c->cfg.ep->tail; t != NULL; t = t->next)
        own |= named(c->at->extra, t->data);
    if (own) {
        for (t = c->cfg.ep->tail; t != NULL; t = t->next) {
            struct curl_slist *next;
            if (named(c->at->extra, t->data))
                continue;
            if ((next = curl_slist_append(c->at->extra, t->data)) == NULL)
                return 0;
            c->at->extra = next;
        }
        c->at->lines = c->at->extra;
        return 1;
    }
    if (c->at->extra == NULL) {
        c->at->lines = c->cfg.ep->tail;
        return 1;
    }
    for (c->at->extra_last = c->at->extra; c->at->extra_last->next != NULL;)
        c->at->extra_last = c->at->extra_last->next;
    c->at->extra_last->next = c->cfg.ep->tail;
    c->at->lines = c->at->extra;
    return 1;
}

static int build_request(lua_State *L, client *c, int argidx)
{
    const char *url, *why, *body;
    size_t n, i, k, bn = 0;
    int m, same;
    if (!lua_istable(L, argidx))
        return config_error(L, c, OP_REQUEST, "no request");
    lua_getfield(L, argidx, "method");
    m = lua_type(L, -1) == LUA_TSTRING ? luaL_checkoption(L, -1, NULL, METHODS) : 0;
    lua_pop(L, 1);
    c->at->method = METHODS[m];
    url = arg_string(L, argidx, "url", &n);
    if (url == NULL || c->tok.access.n == 0)
        return config_error(L, c, OP_REQUEST, url == NULL ? "no URL" : "there is no access token to send");
    k = strlen(c->cfg.ep->base_url);
    if (strlen(url) != n) {
        same = 0;
    } else if (n > k && memcmp(url, c->cfg.ep->base_url, k) == 0 && url[k] == '/' &&
               strpbrk(url, "\r\n\t ") == NULL) {
        /* base_url, then a path: the authority is base_url's own (it ends
         * at the first '/' after "//"), already judged at new */
        same = 1;
    } else {
        same = url_on(&c->cfg.ep->base, url, &why) == 1;
    }
    if (!same)
        return config_error(L, c, OP_REQUEST, "the URL must stay on base_url's scheme, host and port");
    if ((c->at->req_url = nomba_strndup(url, n)) == NULL)
        return luaL_error(L, "nomba.oauth: out of memory");
    c->at->url = c->at->req_url;
    if (!client_lines(c))
        return luaL_error(L, "nomba.oauth: out of memory");
    lua_getfield(L, argidx, "lines");
    for (i = 1; lua_istable(L, -1); i++) {
        struct curl_slist *next;
        const char *line;
        size_t ln;
        lua_rawgeti(L, -1, (int)i);
        if (lua_type(L, -1) != LUA_TSTRING) {
            lua_pop(L, 1);
            break;
        }
        line = lua_tolstring(L, -1, &ln);
        if (strlen(line) != ln || strpbrk(line, "\r\n") != NULL) {
            lua_pop(L, 2);
            return config_error(L, c, OP_REQUEST, "a header line has a line break or NUL");
        }
        next = curl_slist_append(c->at->extra, line);
        lua_pop(L, 1);
        if (next == NULL) {
            lua_pop(L, 1);
            return luaL_error(L, "nomba.oauth: out of memory");
        }
        c->at->extra = next;
    }
    lua_pop(L, 1);
    if (!end_lines(c))
        return luaL_error(L, "nomba.oauth: out of memory");
    body = arg_string(L, argidx, "body", &bn);
    if (body != NULL && !sbuf_add(&c->at->body, body, bn))
        return luaL_error(L, "nomba.oauth: out of memory");
    lua_getfield(L, argidx, "fresh");
    c->at->fresh_connect = lua_toboolean(L, -1);
    lua_getfield(L, argidx, "max_response");
    if (lua_type(L, -1) == LUA_TNUMBER) {
        double mr = lua_tonumber(L, -1);
        if (mr >= 256 && mr <= NOMBA_MAX_RESPONSE)
            c->at->max_response = (size_t)mr;
    }
    lua_pop(L, 2);
    if (!sbuf_adds(&c->at->bearer_hdr, "Authorization: Bearer ") ||
        !sbuf_add(&c->at->bearer_hdr, c->tok.access.p, c->tok.access.n))
        return luaL_error(L, "nomba.oauth: out of memory");
    return 0;
}

/* Builds the request of op into the attempt's buffers (after
 * attempt_begin): 0, or pushes nil and a config error (2). */
int proto_build(lua_State *L, client *c, int op, int argidx)
{
    const char *secret_name = NULL, *secret = NULL, *open;
    size_t secret_len = 0, on, unused;
    int fresh, ok;

    if (op == OP_REQUEST)
        return build_request(L, c, argidx);
    if (op >= OP_PATHS)                     /* "token", "webhook": no request of their own */
        return config_error(L, c, op, "this operation sends no request");
    c->at->url = c->cfg.ep->urls[op];
    if (c->at->url == NULL)
        return config_error(L, c, op, "this operation has no URL");
    if (!client_lines(c))
        return luaL_error(L, "nomba.oauth: out of memory");
    c->at->lines = c->op_lines;

    switch (op) {
    case OP_ISSUE:
        if (c->tok.secret.n == 0)
            return config_error(L, c, op,
                "issue needs client_secret; this is a PKCE client: use authorize and exchange");
        secret_name = "client_secret";
        secret = c->tok.secret.p;
        secret_len = c->tok.secret.n;
        break;
    case OP_REFRESH:
        secret = arg_string(L, argidx, "refresh_token", &secret_len);
        if (secret == NULL && c->tok.refresh.n > 0) {
            secret = c->tok.refresh.p;
            secret_len = c->tok.refresh.n;
        }
        if (secret == NULL || secret_len == 0)
            return config_error(L, c, op, "there is no refresh token to use");
        secret_name = "refresh_token";
        {
            /* Nomba's refresh needs the session's access token (an expired
             * one will do) as its bearer: the given one, else the kept one */
            size_t bn = 0;
            const char *b = arg_string(L, argidx, "access_token", &bn);
            if (b != NULL && bn > 0) {
                if (!codec_visible(b, bn))      /* it goes into a header line */
                    return config_error(L, c, op, "the access_token to send as bearer has bytes "
                                        "outside visible ASCII");
                if (!sbuf_set(&c->at->req_secret[1], b, bn))
                    return luaL_error(L, "nomba.oauth: out of memory");
            } else if (c->tok.access.n > 0) {
                b = c->tok.access.p;
                bn = c->tok.access.n;
            } else {
                return config_error(L, c, op, "a refresh needs the session's access token (an expired one "
                                    "will do) as its bearer: refresh{refresh_token = ..., access_token = ...}");
            }
            if (!sbuf_adds(&c->at->bearer_hdr, "Authorization: Bearer ") || !sbuf_add(&c->at->bearer_hdr, b, bn))
                return luaL_error(L, "nomba.oauth: out of memory");
        }
        break;
    case OP_REVOKE:
        secret = arg_string(L, argidx, "access_token", &secret_len);
        if (secret == NULL && c->tok.access.n > 0) {
            secret = c->tok.access.p;
            secret_len = c->tok.access.n;
        }
        if (secret == NULL || secret_len == 0)
            return config_error(L, c, op, "there is no access token to revoke");
        secret_name = "access_token";
        break;
    case OP_AUTHORIZE:
        if (arg_string(L, argidx, "code_challenge", &unused) == NULL)
            return config_error(L, c, op, "code_challenge is required");
        break;
    case OP_EXCHANGE:
        secret = arg_string(L, argidx, "code_verifier", &secret_len);
        if (arg_string(L, argidx, "auth_code", &unused) == NULL || secret == NULL)
            return config_error(L, c, op, "auth_code and code_verifier are required");
        secret_name = "code_verifier";
        break;
    default:
        return config_error(L, c, op, "this operation sends no request");
    }

    if (secret != NULL && secret != c->tok.secret.p && !sbuf_set(&c->at->req_secret[0], secret, secret_len))
        return luaL_error(L, "nomba.oauth: out of memory");
    open = body_open(L, c, op, argidx, &on, &fresh);
    if (open == NULL)
        return config_error(L, c, op, "could not encode the request");
    ok = sbuf_add(&c->at->body, open, on);
    if (ok && secret_name != NULL)
        ok = (on <= 1 || sbuf_adds(&c->at->body, ",")) &&
             sbuf_adds(&c->at->body, "\"") && sbuf_adds(&c->at->body, secret_name) &&
             sbuf_adds(&c->at->body, "\":\"") &&
             sbuf_add_json_string(&c->at->body, secret, secret_len) &&
             sbuf_adds(&c->at->body, "\"");
    ok = ok && sbuf_adds(&c->at->body, "}");
    if (fresh)
        free((void *)open);
    if (!ok)
        return luaL_error(L, "nomba.oauth: out of memory");
    return 0;
}

/* The private cjson instance (its depth the one JSON depth). */
void build_open(lua_State *L)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson.safe");
    if (lua_pcall(L, 1, 1, 0) != 0)
        luaL_error(L, "nomba.oauth.core needs lua-cjson (require 'cjson.safe' failed: %s)",
                   lua_tostring(L, -1));
    lua_getfield(L, -1, "new");
    lua_call(L, 0, 1);
    lua_getfield(L, -1, "decode_max_depth");
    lua_pushinteger(L, NOMBA_MAX_JSON_DEPTH);
    lua_call(L, 1, 0);
    lua_pushlightuserdata(L, (void *)&json_key);
    lua_pushvalue(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
    lua_pop(L, 2);
}
