/* libFuzzer harness: the ISO 8601 parser behind expiresAt. */
#include <stddef.h>
#include <stdint.h>
#include "nomba.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    double t;
    if (nt_iso8601((const char *)data, size, &t) && (t < 0 || t > 253402300800.0))
        __builtin_trap();   /* accepted, so it must be a time from 1970 to 9999 */
    return 0;
}
