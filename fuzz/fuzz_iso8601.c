/* libFuzzer harness: the ISO 8601 parser behind expiresAt, and the strict
 * RFC 3339 one behind webhook timestamps, which accepts only what the
 * first accepts, with the same value. */
#include <stddef.h>
#include <stdint.h>
#include "nomba.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    double t, r;
    int iso = nt_iso8601((const char *)data, size, &t);
    if (iso && (t < 0 || t > 253402300800.0))
        __builtin_trap();   /* accepted, so it must be a time from 1970 to 9999 */
    if (nt_rfc3339((const char *)data, size, &r) && !(iso && r == t))
        __builtin_trap();   /* strict, so a subset of the liberal one */
    return 0;
}
