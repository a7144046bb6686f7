/*
 * slot.c: Redis Cluster's key slots, for oauth.store.redis{cluster = ...}
 * (nomba/oauth/store/cluster.lua routes by them).
 *
 *   core.redis_slot(key)  -> 0..16383
 *
 * The cluster specification's rule: CRC16 (XMODEM: polynomial 0x1021,
 * initial value 0) of the key's hash tag (the bytes between its first '{'
 * and the first '}' after it, when there is at least one) or else of the
 * whole key, modulo 16384.
 */
#include "nomba.h"

static unsigned crc16(const unsigned char *p, size_t n)
{
    unsigned crc = 0;
    size_t i;
    int b;
    for (i = 0; i < n; i++) {
        crc ^= (unsigned)p[i] << 8;
        for (b = 0; b < 8; b++)
            crc = (crc & 0x8000u) ? ((crc << 1) ^ 0x1021u) & 0xffffu : (crc << 1) & 0xffffu;
    }
    return crc;
}

static int redis_slot(lua_State *L)
{
    size_t n, s, e;
    const char *k = luaL_checklstring(L, 1, &n);
    for (s = 0; s < n && k[s] != '{'; s++)
        ;
    if (s < n) {
        for (e = s + 1; e < n && k[e] != '}'; e++)
            ;
        if (e < n && e > s + 1) {
            k += s + 1;
            n = e - s - 1;
        }
    }
    lua_pushinteger(L, (lua_Integer)(crc16((const unsigned char *)k, n) & 16383u));
    return 1;
}

void slot_open(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"redis_slot", redis_slot},
        {NULL, NULL}
    };
    luaL_setfuncs(L, funcs, 0);
}
