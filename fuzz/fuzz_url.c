/*
 * libFuzzer harness: URLs judged on libcurl's parse (url.c). Byte 0 holds
 * the flags (URL_QUERY: a query is allowed; URL_PROXY: a proxy's URL); the
 * rest is the URL. Whatever url_split accepts has a host and a port, no
 * user info (libcurl agrees when asked again), and no query unless
 * allowed; it goes to https, or to http on a loopback host, except a
 * proxy, which is http:// on any host with no path.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <curl/curl.h>
#include "nomba.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s;
    url_parts p;
    int flags, allow_query;
    if (size < 1 || size > 4096)
        return 0;
    flags = data[0] & (URL_QUERY | URL_PROXY);
    allow_query = flags & URL_QUERY;
    s = malloc(size);
    if (s == NULL)
        return 0;
    memcpy(s, data + 1, size - 1);
    s[size - 1] = '\0';
    if (url_split(s, &p, flags) == NULL) {
        CURLU *u = curl_url();
        char *x = NULL;
        if (p.host == NULL || p.host[0] == '\0' || p.port <= 0 || p.port > 65535)
            __builtin_trap();
        if (flags & URL_PROXY) {
            if (strcasecmp(p.scheme, "http") != 0 || (p.path[0] != '\0' && strcmp(p.path, "/") != 0))
                __builtin_trap();
        } else if (strcasecmp(p.scheme, "https") != 0 && !(strcasecmp(p.scheme, "http") == 0 && p.loopback)) {
            __builtin_trap();
        }
        if (u == NULL || curl_url_set(u, CURLUPART_URL, s, 0) != CURLUE_OK)
            __builtin_trap();
        if (curl_url_get(u, CURLUPART_USER, &x, 0) == CURLUE_OK)
            __builtin_trap();
        if (!allow_query && curl_url_get(u, CURLUPART_QUERY, &x, 0) == CURLUE_OK)
            __builtin_trap();
        curl_free(x);
        curl_url_cleanup(u);
        url_free(&p);
    }
    free(s);
    return 0;
}
