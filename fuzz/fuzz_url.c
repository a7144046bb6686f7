/*
 * libFuzzer harness: base URLs judged on libcurl's parse (url.c). Byte 0
 * says whether a query is allowed; the rest is the URL. Whatever url_split
 * accepts goes to https, or to http on a loopback host, with a host, no
 * user info (libcurl agrees when asked again), and no query unless allowed.
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
    int allow_query;
    if (size < 1 || size > 4096)
        return 0;
    allow_query = data[0] & 1;
    s = malloc(size);
    if (s == NULL)
        return 0;
    memcpy(s, data + 1, size - 1);
    s[size - 1] = '\0';
    if (url_split(s, &p, allow_query) == NULL) {
        CURLU *u = curl_url();
        char *x = NULL;
        if (p.host == NULL || p.host[0] == '\0' || p.port <= 0 || p.port > 65535)
            __builtin_trap();
        if (strcasecmp(p.scheme, "https") != 0 && !(strcasecmp(p.scheme, "http") == 0 && p.loopback))
            __builtin_trap();
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
