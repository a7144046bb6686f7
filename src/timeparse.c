/*
 * timeparse.c: the clocks and the date parsers.
 *
 * Pure C with no Lua state, so the fuzzers can drive the parsers directly.
 * Every parser reads exactly n bytes (no NUL terminator is assumed),
 * returns 1 and stores seconds since the Unix epoch on success, and
 * returns 0 on anything it does not fully understand.
 */
#include <string.h>
#include <time.h>
#include "nomba.h"

double nt_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The hot path's clock: a few milliseconds of resolution is plenty for a
 * token expiry, and the coarse clock is a plain read of the vDSO page. */
double nt_mono_coarse(void)
{
    struct timespec ts;
#ifdef CLOCK_MONOTONIC_COARSE
    if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) == 0)
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
#endif
    return nt_mono();
}

double nt_wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar
 * (Howard Hinnant's days_from_civil). */
static long days_from_civil(long y, long m, long d)
{
    long era, yoe, doy, doe;
    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int is_leap(long y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int valid_date(long y, long mo, long d, long h, long mi, long s)
{
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1970 || y > 9999 || mo < 1 || mo > 12 || d < 1)
        return 0;
    if (d > mdays[mo - 1] + (mo == 2 && is_leap(y)))
        return 0;
    /* 60 allows a leap second; it is counted as the next second */
    return h <= 23 && mi <= 59 && s <= 60;
}

/* Reads exactly `w` decimal digits at *p. */
static int digits(const char **p, const char *e, int w, long *out)
{
    long v = 0;
    int i;
    if (e - *p < w)
        return 0;
    for (i = 0; i < w; i++) {
        char ch = (*p)[i];
        if (ch < '0' || ch > '9')
            return 0;
        v = v * 10 + (ch - '0');
    }
    *p += w;
    *out = v;
    return 1;
}

static int lit(const char **p, const char *e, char ch)
{
    if (*p < e && **p == ch) {
        (*p)++;
        return 1;
    }
    return 0;
}

static double epoch(long y, long mo, long d, long h, long mi, long s)
{
    return (double)days_from_civil(y, mo, d) * 86400.0 + (double)(h * 3600 + mi * 60 + s);
}

/*
 * ISO 8601 / RFC 3339 date-time, liberally:
 *   YYYY-MM-DD[T| ]hh:mm[:ss[.fraction]][Z|z|+hh:mm|-hh:mm|+hhmm|+hh]
 * A missing zone means UTC (Nomba sends UTC).
 */
int nt_iso8601(const char *s, size_t n, double *out)
{
    const char *p = s, *e = s + n;
    long y, mo, d, h, mi, sec = 0, oh = 0, om = 0;
    double frac = 0.0, t;
    int sign = 0;

    if (!digits(&p, e, 4, &y) || !lit(&p, e, '-') || !digits(&p, e, 2, &mo) ||
        !lit(&p, e, '-') || !digits(&p, e, 2, &d))
        return 0;
    if (!(lit(&p, e, 'T') || lit(&p, e, 't') || lit(&p, e, ' ')))
        return 0;
    if (!digits(&p, e, 2, &h) || !lit(&p, e, ':') || !digits(&p, e, 2, &mi))
        return 0;
    if (lit(&p, e, ':')) {
        if (!digits(&p, e, 2, &sec))
            return 0;
        if (lit(&p, e, '.') || lit(&p, e, ',')) {
            double scale = 0.1;
            int nd = 0;
            while (p < e && *p >= '0' && *p <= '9') {
                if (nd < 9)
                    frac += (*p - '0') * scale;
                scale /= 10;
                p++;
                nd++;
            }
            if (nd == 0)
                return 0;
        }
    }
    if (p < e) {
        if (*p == 'Z' || *p == 'z') {
            p++;
        } else if (*p == '+' || *p == '-') {
            sign = *p == '-' ? -1 : 1;
            p++;
            if (!digits(&p, e, 2, &oh))
                return 0;
            /* minutes after a colon, or run on (+hhmm), or absent (+hh) */
            if ((lit(&p, e, ':') || e - p >= 2) && !digits(&p, e, 2, &om))
                return 0;
            if (oh > 23 || om > 59)
                return 0;
        } else {
            return 0;
        }
    }
    if (p != e || !valid_date(y, mo, d, h, mi, sec))
        return 0;
    t = epoch(y, mo, d, h, mi, sec) + frac;
    t -= sign * (double)(oh * 3600 + om * 60);
    *out = t;
    return 1;
}

/* RFC 3339 exactly, as a webhook's times must be: a full date, 'T', the
 * time with its seconds (fractions allowed) and an offset, 'Z' or +hh:mm
 * (no bare local time: "2026-12-02T18:58:00" alone is refused). */
int nt_rfc3339(const char *s, size_t n, double *out)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd";
    size_t i, k = sizeof shape - 1;
    if (n < k + 1)
        return 0;
    for (i = 0; i < k; i++) {
        int digit = s[i] >= '0' && s[i] <= '9';
        if (shape[i] == 'd' ? !digit : shape[i] == 'T' ? (s[i] != 'T' && s[i] != 't') : s[i] != shape[i])
            return 0;
    }
    if (s[k] == '.') {
        for (k++; k < n && s[k] >= '0' && s[k] <= '9'; k++)
            ;
        if (s[k - 1] == '.')
            return 0;
    }
    if (k == n - 1 && (s[k] == 'Z' || s[k] == 'z'))
        return nt_iso8601(s, n, out);
    if (k + 6 == n && (s[k] == '+' || s[k] == '-') && s[k + 1] >= '0' && s[k + 1] <= '9' &&
        s[k + 2] >= '0' && s[k + 2] <= '9' && s[k + 3] == ':' && s[k + 4] >= '0' && s[k + 4] <= '9' &&
        s[k + 5] >= '0' && s[k + 5] <= '9')
        return nt_iso8601(s, n, out);
    return 0;
}

static int month_of(const char *m)
{
    static const char names[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    int i;
    for (i = 0; i < 12; i++)
        if (memcmp(names + (size_t)i * 3, m, 3) == 0)
            return i + 1;
    return 0;
}

static int skip_weekday(const char **p, const char *e, char stop)
{
    const char *q = *p;
    while (q < e && ((*q >= 'A' && *q <= 'Z') || (*q >= 'a' && *q <= 'z')))
        q++;
    if (q - *p < 3 || q >= e || *q != stop)
        return 0;
    *p = q + 1;
    return 1;
}

/*
 * HTTP-date (RFC 9110 section 5.6.7): IMF-fixdate
 * "Sun, 06 Nov 1994 08:49:37 GMT", and the obsolete RFC 850
 * "Sunday, 06-Nov-94 08:49:37 GMT" and asctime "Sun Nov  6 08:49:37 1994".
 */
int nt_httpdate(const char *s, size_t n, double *out)
{
    const char *p = s, *e = s + n;
    long y, mo, d, h, mi, sec;
    const char *save = p;

    if (skip_weekday(&p, e, ',')) {
        if (!lit(&p, e, ' '))
            return 0;
        if (!digits(&p, e, 2, &d))
            return 0;
        if (lit(&p, e, ' ')) {                       /* IMF-fixdate */
            if (e - p < 4 || !(mo = month_of(p)))
                return 0;
            p += 3;
            if (!lit(&p, e, ' ') || !digits(&p, e, 4, &y) || !lit(&p, e, ' '))
                return 0;
        } else if (lit(&p, e, '-')) {                /* RFC 850 */
            if (e - p < 4 || !(mo = month_of(p)))
                return 0;
            p += 3;
            if (!lit(&p, e, '-') || !digits(&p, e, 2, &y) || !lit(&p, e, ' '))
                return 0;
            y += y < 70 ? 2000 : 1900;
        } else {
            return 0;
        }
        if (!digits(&p, e, 2, &h) || !lit(&p, e, ':') || !digits(&p, e, 2, &mi) ||
            !lit(&p, e, ':') || !digits(&p, e, 2, &sec) || !lit(&p, e, ' '))
            return 0;
        if (e - p != 3 || memcmp(p, "GMT", 3) != 0)
            return 0;
    } else {                                         /* asctime */
        p = save;
        if (!skip_weekday(&p, e, ' ') || e - p < 4 || !(mo = month_of(p)))
            return 0;
        p += 3;
        if (!lit(&p, e, ' '))
            return 0;
        if (lit(&p, e, ' ')) {
            if (!digits(&p, e, 1, &d))
                return 0;
        } else if (!digits(&p, e, 2, &d)) {
            return 0;
        }
        if (!lit(&p, e, ' ') || !digits(&p, e, 2, &h) || !lit(&p, e, ':') ||
            !digits(&p, e, 2, &mi) || !lit(&p, e, ':') || !digits(&p, e, 2, &sec) ||
            !lit(&p, e, ' ') || !digits(&p, e, 4, &y) || p != e)
            return 0;
    }
    if (!valid_date(y, mo, d, h, mi, sec))
        return 0;
    *out = epoch(y, mo, d, h, mi, sec);
    return 1;
}

/*
 * Retry-After: delay-seconds or an HTTP-date, given as seconds to wait
 * from `now` (the server's Date when it sent one). Surrounding spaces
 * are allowed; a date in the past means 0.
 */
int nt_retry_after(const char *s, size_t n, double now, double *out)
{
    const char *p = s, *e = s + n;
    double t;
    while (p < e && (*p == ' ' || *p == '\t'))
        p++;
    while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    if (p == e)
        return 0;
    if (*p >= '0' && *p <= '9')
        return codec_digits(p, (size_t)(e - p), 1e9, out);
    if (!nt_httpdate(p, (size_t)(e - p), &t))
        return 0;
    *out = t > now ? t - now : 0;
    return 1;
}
