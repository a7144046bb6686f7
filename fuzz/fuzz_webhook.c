/*
 * libFuzzer harness: the webhook verifier (webhook.c, and json.c under it).
 *
 * Byte 0 chooses the mode; byte 1 is the key length, then the key.
 *
 *  - even byte 0, the signature check: the rest is the message up to a
 *    '\n', then the signature. webhook_mac must equal OpenSSL's one-shot
 *    HMAC() for every key and message (keys over 64 bytes included), and
 *    webhook_check says yes only when the signature really is base64 or
 *    hex of that MAC.
 *  - odd byte 0, a whole delivery through core.webhook_verify in a Lua
 *    state: the rest is up to five "name: value" header lines, an empty
 *    line, then the body. It never crashes or raises, answers an event
 *    table or (nil, reason, message) with a known reason, and never
 *    verifies under two keys one bit apart (the mutated key may be the
 *    one bit away from the corpus's signing key: then only the
 *    other one verifies, which is right). The corpus
 *    holds a valid delivery, so mutations of its unsigned fields keep it
 *    valid and drive the JSON decoder behind a good signature. A verified
 *    event never holds a ':' in a signed field but its time (no re-cut
 *    message verifies).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <stdio.h>
#include <strings.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include "nomba.h"
#include "harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char SETUP[] =
    "local core = ...\n"
    "local REASONS = {missing_header = 1, bad_signature = 1, stale = 1, future = 1, unknown_algorithm = 1,\n"
    "                 unknown_version = 1, bad_json = 1, bad_field = 1}\n"
    "return function(key, other, headers, body)\n"
    "  local ok, ev, reason, msg = pcall(core.webhook_verify, key, body, headers, 1704067200, 1e12, 1e12)\n"
    "  if not ok then error('raised: ' .. tostring(ev)) end\n"
    "  if ev == nil and not (REASONS[reason] and type(msg) == 'string') then error('no reason') end\n"
    "  if ev ~= nil and type(ev) ~= 'table' then error('an event that is not a table') end\n"
    "  if ev ~= nil then\n"
    "    local d = type(ev.data) == 'table' and ev.data or {}\n"
    "    local m = type(d.merchant) == 'table' and d.merchant or {}\n"
    "    local t = type(d.transaction) == 'table' and d.transaction or {}\n"
    "    for _, v in ipairs {ev.event_type, ev.requestId, m.userId, m.walletId, t.transactionId, t.type,\n"
    "                        t.responseCode} do\n"
    "      if type(v) == 'string' and v:find(':', 1, true) then error('a re-cut message verified') end\n"
    "      if type(v) == 'table' then error('an object or array verified as a signed field') end\n"
    "    end\n"
    "  end\n"
    "  if ev ~= nil and core.webhook_verify(other, body, headers, 1704067200, 1e12, 1e12) then\n"
    "    error('verified under two keys one bit apart')\n"
    "  end\n"
    "  core.json_decode(body)\n"
    "end\n";

static void check(const char *key, size_t kn, const char *msg, size_t rest)
{
    const char *nl = memchr(msg, '\n', rest), *sig;
    size_t mn = nl ? (size_t)(nl - msg) : rest, sn;
    unsigned char mac[32], ours[32];
    unsigned int maclen = 0;
    char b64[64], hex[65];
    int i;
    sig = nl ? nl + 1 : msg + rest;
    sn = rest - mn - (nl ? 1 : 0);
    if (HMAC(EVP_sha256(), key, (int)kn, (const unsigned char *)msg, mn, mac, &maclen) == NULL)
        __builtin_trap();
    if (!webhook_mac(key, kn, msg, mn, ours) || memcmp(mac, ours, 32) != 0)
        __builtin_trap();      /* not HMAC-SHA256 */
    if (!webhook_check(key, kn, msg, mn, sig, sn))
        return;
    EVP_EncodeBlock((unsigned char *)b64, mac, 32);
    for (i = 0; i < 32; i++)
        (void)snprintf(hex + 2 * i, 3, "%02x", mac[i]);
    if (!(sn == 44 && memcmp(sig, b64, 44) == 0) &&
        !(sn == 64 && strncasecmp(sig, hex, 64) == 0))
        __builtin_trap();      /* verified without the right signature */
}

static void delivery(const char *key, size_t kn, const char *p, size_t rest)
{
    const char *e = p + rest;
    int lines = 0;
    lua_State *L;
    if (kn == 0)
        return;                /* verify refuses an empty key before C */
    L = harness_state(SETUP);
    harness_push(L);
    lua_pushlstring(L, key, kn);
    lua_pushlstring(L, key, kn);
    {
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        luaL_addlstring(&b, key, kn - 1);
        luaL_addchar(&b, (char)(key[kn - 1] ^ 1));
        luaL_pushresult(&b);
        lua_replace(L, -2);
    }
    lua_newtable(L);
    while (p < e && lines < 5) {
        const char *nl = memchr(p, '\n', (size_t)(e - p)), *colon;
        size_t n = nl ? (size_t)(nl - p) : (size_t)(e - p);
        if (n == 0) {
            p++;
            break;
        }
        colon = memchr(p, ':', n);
        if (colon != NULL) {
            const char *v = colon + 1;
            while (v < p + n && *v == ' ')
                v++;
            lua_pushlstring(L, p, (size_t)(colon - p));
            lua_pushlstring(L, v, (size_t)(p + n - v));
            lua_settable(L, -3);
        }
        lines++;
        p += n + (nl ? 1 : 0);
    }
    lua_pushlstring(L, p, (size_t)(e - p));
    if (lua_pcall(L, 4, 0, 0) != 0) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        __builtin_trap();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t kn;
    const char *key;
    if (size < 2)
        return 0;
    kn = data[1];
    if (size < 2 + kn)
        return 0;
    key = (const char *)data + 2;
    if (data[0] & 1)
        delivery(key, kn, key + kn, size - 2 - kn);
    else
        check(key, kn, key + kn, size - 2 - kn);
    return 0;
}
