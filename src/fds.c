/*
 * fds.c: descriptor hygiene. Every socket libcurl opens is close-on-exec,
 * and so is the wake-up socketpair a multi handle opens, which libcurl
 * gives no way to ask for: a child that execs never inherits a connection
 * that carried secrets.
 */
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <dirent.h>
#include <sys/socket.h>
#include <curl/curl.h>
#include "nomba.h"

/* Every socket libcurl opens is close-on-exec: a child that execs never
 * inherits a connection that carried secrets. */
int fds_sockopt(void *ud, curl_socket_t fd, curlsocktype purpose)
{
    int flags = fcntl(fd, F_GETFD);
    (void)ud;
    (void)purpose;
    if (flags >= 0)
        (void)fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
    return CURL_SOCKOPT_OK;
}

/* libcurl's multi handles (the one curl_easy_perform makes inside the easy
 * handle, and ours) open a socketpair to wake themselves up, with no way to
 * ask for close-on-exec. It is found the only way there is: the AF_UNIX
 * stream sockets without FD_CLOEXEC that were not open before the handle
 * made them. */
static int each_fd(void (*f)(int fd, void *ud), void *ud)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    if (d == NULL)
        return 0;
    while ((e = readdir(d)) != NULL) {
        char *end;
        long fd = strtol(e->d_name, &end, 10);
        if (*end == '\0' && end != e->d_name && fd >= 0 && fd != dirfd(d))
            f((int)fd, ud);
    }
    closedir(d);
    return 1;
}

static void note_fd(int fd, void *ud)
{
    fd_snapshot *s = (fd_snapshot *)ud;
    size_t byte = (size_t)fd / 8;
    if (byte >= s->n) {
        size_t n = byte * 2 + 64;
        unsigned char *p = realloc(s->open, n);
        if (p == NULL)
            return;
        memset(p + s->n, 0, n - s->n);
        s->open = p;
        s->n = n;
    }
    s->open[byte] |= (unsigned char)(1u << (fd % 8));
}

static void mark_new(int fd, void *ud)
{
    const fd_snapshot *s = (const fd_snapshot *)ud;
    size_t byte = (size_t)fd / 8;
    int flags, domain = 0, type = 0;
    socklen_t len = sizeof domain;
    if (byte < s->n && (s->open[byte] & (1u << (fd % 8))))
        return;
    flags = fcntl(fd, F_GETFD);
    if (flags < 0 || (flags & FD_CLOEXEC))
        return;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0 || domain != AF_UNIX)
        return;
    len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM)
        return;
    (void)fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

void fds_snapshot(fd_snapshot *s)
{
    s->open = NULL;
    s->n = 0;
    (void)each_fd(note_fd, s);
}

void fds_cloexec_new(fd_snapshot *s)
{
    (void)each_fd(mark_new, s);
    free(s->open);
    s->open = NULL;
}

