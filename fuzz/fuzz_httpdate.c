/* libFuzzer harness: the HTTP-date parser (Date) and Retry-After. */
#include <stddef.h>
#include <stdint.h>
#include "nomba.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    double t, wait;
    if (nt_httpdate((const char *)data, size, &t) && t < 0)
        __builtin_trap();
    if (nt_retry_after((const char *)data, size, 784111777.0, &wait) && wait < 0)
        __builtin_trap();   /* a wait is never negative */
    return 0;
}
