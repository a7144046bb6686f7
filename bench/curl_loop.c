/*
 * Baseline for issue round trips: one reused libcurl handle POSTing the
 * same JSON body N times over HTTPS keep-alive, reading the answer into a
 * buffer, no parsing. Prints requests per second.
 *   usage: curl_loop URL CAFILE N
 *          curl_loop URL CAFILE serve
 * serve: reads a count per line on stdin, makes that many requests, and
 * answers the seconds they took and the CPU seconds (user + system,
 * getrusage) this process spent on them on a line of stdout, until end of input;
 * the benchmark alternates short blocks of ours and of this loop, on one
 * connection each, so that drift on a shared machine hits both alike.
 * With BENCH_BEARER_FILE in the environment (a file holding a token): a GET
 * carrying that bearer and the accountId instead (the baseline of
 * client:request). The token never goes on a command line.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <curl/curl.h>

static double cpu_seconds(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + (double)u.ru_stime.tv_sec +
           u.ru_stime.tv_usec / 1e6;
}

static size_t sink(char *p, size_t s, size_t n, void *ud)
{
    (void)p;
    *(size_t *)ud += s * n;
    return s * n;
}

/* n requests on the handle; 0 when one failed or was not answered 200 (a
 * baseline that measured refusals would measure a cheaper server path). */
static int loop(CURL *c, long n)
{
    long i;
    for (i = 0; i < n; i++) {
        long status = 0;
        if (curl_easy_perform(c) != CURLE_OK)
            return 0;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        if (status != 200) {
            fprintf(stderr, "curl_loop: HTTP %ld\n", status);
            return 0;
        }
    }
    return 1;
}

int main(int argc, char **argv)
{
    const char *body = "{\"grant_type\":\"client_credentials\",\"client_id\":\"sim-client-0001\","
                       "\"client_secret\":\"sim-secret-not-for-production-0001\"}";
    long n;
    size_t got = 0;
    struct curl_slist *h = NULL;
    struct timespec a, b;
    CURL *c;
    if (argc < 4)
        return 2;
    n = atol(argv[3]);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    c = curl_easy_init();
    h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "Accept: application/json");
    h = curl_slist_append(h, "accountId: 3f1c2d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f");
    h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, argv[1]);
    curl_easy_setopt(c, CURLOPT_CAINFO, argv[2]);
    if (getenv("BENCH_BEARER_FILE") != NULL) {
        static char auth[4096], tok[4000];
        FILE *f = fopen(getenv("BENCH_BEARER_FILE"), "r");
        if (f == NULL || fgets(tok, sizeof tok, f) == NULL)
            return 1;
        fclose(f);
        tok[strcspn(tok, "\r\n")] = '\0';
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", tok);
        h = curl_slist_append(h, auth);
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &got);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);        /* a stalled server ends the run, not the bench */
    if (!loop(c, 1))                            /* warm-up: connect and handshake */
        return 1;
    if (strcmp(argv[3], "serve") == 0) {
        char line[64];
        while (fgets(line, sizeof line, stdin) != NULL) {
            double cpu;
            n = atol(line);
            cpu = cpu_seconds();
            clock_gettime(CLOCK_MONOTONIC, &a);
            if (!loop(c, n))
                return 1;
            clock_gettime(CLOCK_MONOTONIC, &b);
            printf("%.9f %.9f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9, cpu_seconds() - cpu);
            fflush(stdout);
        }
    } else {
        clock_gettime(CLOCK_MONOTONIC, &a);
        if (!loop(c, n))
            return 1;
        clock_gettime(CLOCK_MONOTONIC, &b);
        printf("%.1f\n", n / ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9));
    }
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return got > 0 ? 0 : 1;
}
