/*
 * url.c: URLs, parsed by the parser that connects.
 *
 * libcurl decides where a request goes, so a URL is judged on what
 * libcurl's own parser (CURLU) makes of it, never on a second parser's
 * opinion: "http://localhost:x@example.com" is user info plus the host
 * example.com to libcurl, whatever a pattern match would say. A base URL
 * with user info, a query or a fragment is refused outright; plain http://
 * is allowed only when the host libcurl will connect to is loopback.
 *
 *   core.url(url) -> {scheme=, host=, port=, path=, loopback=} | nil, reason
 *   core.url_on(base_url, url) -> true | false (elsewhere) | nil, reason
 *
 * The OpenResty driver connects with what this returns, so every driver
 * goes where libcurl would have gone.
 */
#include <string.h>
#include <strings.h>
#include <stdlib.h>
#include <stdio.h>
#include <curl/curl.h>
#include "nomba.h"

static int part(CURLU *u, CURLUPart what, char **out, unsigned flags)
{
    *out = NULL;
    return curl_url_get(u, what, out, flags) == CURLUE_OK;
}

/* Whether a host (as libcurl normalised it) is a loopback address. */
static int is_loopback(const char *h)
{
    unsigned a, b, c, d;
    char tail;
    if (strcasecmp(h, "localhost") == 0 || strcmp(h, "[::1]") == 0)
        return 1;
    return sscanf(h, "%3u.%3u.%3u.%3u%c", &a, &b, &c, &d, &tail) == 4 &&
           a == 127 && b < 256 && c < 256 && d < 256;
}

void url_free(url_parts *p)
{
    curl_free(p->scheme);
    curl_free(p->host);
    curl_free(p->path);
    curl_free(p->query);
    memset(p, 0, sizeof *p);
}

const char *url_split(const char *url, url_parts *p, int flags)
{
    int allow_query = (flags & URL_QUERY) != 0;
    CURLU *u = curl_url();
    char *x = NULL, *port = NULL;
    const char *why = NULL;
    memset(p, 0, sizeof *p);
    if (u == NULL)
        return "out of memory";
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK)
        why = "is not a URL libcurl can use (an absolute https:// URL is expected)";
    else if (part(u, CURLUPART_USER, &x, 0) || part(u, CURLUPART_PASSWORD, &x, 0) ||
             part(u, CURLUPART_OPTIONS, &x, 0))
        why = "must not contain user info (user:password@)";
    else if (!allow_query && part(u, CURLUPART_QUERY, &x, 0))
        why = "must not contain a query";
    else if (part(u, CURLUPART_FRAGMENT, &x, 0))
        why = "must not contain a fragment";
    else if (!part(u, CURLUPART_SCHEME, &p->scheme, 0) || !part(u, CURLUPART_HOST, &p->host, 0) ||
             p->host[0] == '\0' || !part(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) ||
             !part(u, CURLUPART_PATH, &p->path, 0))
        why = "has no host";
    else if (allow_query)
        (void)part(u, CURLUPART_QUERY, &p->query, 0);
    curl_free(x);
    if (why == NULL) {
        p->port = atol(port);
        p->loopback = is_loopback(p->host);
        if (p->port < 1 || p->port > 65535)
            why = "has no valid port";
        else if (flags & URL_PROXY) {
            if (strcasecmp(p->scheme, "http") != 0)
                why = "must be an http:// proxy (a CONNECT tunnel carries the TLS to Nomba)";
            else if (strcmp(p->path, "/") != 0 && p->path[0] != '\0')
                why = "must not have a path";
        } else if (strcasecmp(p->scheme, "https") != 0 &&
            (strcasecmp(p->scheme, "http") != 0 || !p->loopback))
            why = strcasecmp(p->scheme, "http") == 0
                      ? "must be https:// (plain http:// is allowed only for a loopback host)"
                      : "must be an https:// URL";
    }
    curl_free(port);
    curl_url_cleanup(u);
    if (why != NULL)
        url_free(p);
    return why;
}

/* Whether url (a query allowed) goes where base goes: the same scheme,
 * host and port as libcurl sees them. 1 yes, 0 elsewhere, -1 unusable
 * (*why says why). The one judgement of base_url's paths, API calls and
 * their absolute URLs. */
int url_on_parts(const url_parts *base, const char *url, url_parts *u, const char **why)
{
    *why = url_split(url, u, URL_QUERY);
    if (*why != NULL)
        return -1;
    return strcasecmp(u->scheme, base->scheme) == 0 && strcasecmp(u->host, base->host) == 0 &&
           u->port == base->port;
}

int url_on(const url_parts *base, const char *url, const char **why)
{
    url_parts u;
    int same = url_on_parts(base, url, &u, why);
    if (same >= 0)
        url_free(&u);
    return same;
}

/* core.url_on(client, url): whether url goes where the client's base_url
 * goes (libcurl's parse of both), and then its path and query: true, rest;
 * false; or nil and why it is unusable. A caller writes the URL as
 * base_url .. rest, which the request builder takes without parsing again. */
static int core_url_on(lua_State *L)
{
    client *c = client_check(L, 1);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n), *why;
    url_parts u;
    int r;
    if (strlen(s) != n) {
        lua_pushnil(L);
        lua_pushliteral(L, "must not contain NUL bytes");
        return 2;
    }
    if (c->closed)
        return luaL_error(L, "nomba.oauth: the client is closed");
    r = url_on_parts(&c->cfg.ep->base, s, &u, &why);
    if (r < 0) {
        lua_pushnil(L);
        lua_pushstring(L, why);
        return 2;
    }
    lua_pushboolean(L, r);
    if (r) {
        lua_pushstring(L, u.path);
        if (u.query != NULL) {
            lua_pushliteral(L, "?");
            lua_pushstring(L, u.query);
            lua_concat(L, 3);
        }
    }
    url_free(&u);
    return r ? 2 : 1;
}

/* core.url(url[, "proxy"]): the parts libcurl sees, or nil and why it is
 * refused; with "proxy", the rules of an http:// proxy URL. */
static int core_url(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    int proxy = lua_isstring(L, 2) && strcmp(lua_tostring(L, 2), "proxy") == 0;
    url_parts p;
    const char *why;
    if (strlen(s) != n) {
        lua_pushnil(L);
        lua_pushliteral(L, "must not contain NUL bytes");
        return 2;
    }
    why = url_split(s, &p, proxy ? URL_PROXY : 0);
    if (why != NULL) {
        lua_pushnil(L);
        lua_pushstring(L, why);
        return 2;
    }
    lua_createtable(L, 0, 5);
    lua_pushstring(L, p.scheme);
    lua_setfield(L, -2, "scheme");
    lua_pushstring(L, p.host);
    lua_setfield(L, -2, "host");
    lua_pushinteger(L, (lua_Integer)p.port);
    lua_setfield(L, -2, "port");
    lua_pushstring(L, p.path);
    lua_setfield(L, -2, "path");
    lua_pushboolean(L, p.loopback);
    lua_setfield(L, -2, "loopback");
    url_free(&p);
    return 1;
}

void url_open(lua_State *L)
{
    lua_pushcfunction(L, core_url);
    lua_setfield(L, -2, "url");
    lua_pushcfunction(L, core_url_on);
    lua_setfield(L, -2, "url_on");
}
