/* libFuzzer harness: the PKCE verifier validator. */
#include <stddef.h>
#include <stdint.h>
#include "nomba.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t i;
    if (!pkce_valid_verifier((const char *)data, size))
        return 0;
    if (size < 43 || size > 128)
        __builtin_trap();
    for (i = 0; i < size; i++) {
        uint8_t ch = data[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '.' || ch == '_' || ch == '~'))
            __builtin_trap();
    }
    return 0;
}
