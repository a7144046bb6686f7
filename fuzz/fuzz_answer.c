/*
 * libFuzzer harness: the answer interpreter (proto_interpret through
 * core.answer), i.e. status + Date + Retry-After + body, including the
 * token fields and expiresAt. Input layout:
 *   byte 0-1: status (100..599), byte 2: operation,
 *   then the Date header up to '\n', the Retry-After header up to '\n',
 *   and the rest is the body.
 * The interpreter (the C JSON reader of json.c under it) must never crash,
 * and must answer either a result or an oauth.Error, never raise; a token
 * it keeps is visible ASCII with a lifetime of at most a year.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char SETUP[] =
    "local core = ...\n"
    "local c = core.new({account_id = 'acct', client_id = 'id', client_secret = 'secret-xyz',\n"
    "  base_url = 'https://localhost', user_agent = 'fuzz', max_response_bytes = 65536,\n"
    "  timeout = 10, connect_timeout = 5, refresh_skew = 300,\n"
    "  paths = {issue = '/i', refresh = '/r', revoke = '/v', authorize = '/a'}}, {})\n"
    "local ops = {'issue', 'refresh', 'revoke', 'authorize', 'exchange'}\n"
    "return function(status, op, date, ra, body)\n"
    "  local r, err = core.answer(c, ops[op % 5 + 1], status, {Date = date, ['Retry-After'] = ra}, body)\n"
    "  if r == nil and getmetatable(err) ~= core.Error then error('no error value') end\n"
    "  if type(r) == 'table' then\n"
    "    if r.access_token:find('[^\\33-\\126]') then error('a token with a byte outside ASCII') end\n"
    "    if not (r.expires_in >= 0 and r.expires_in <= 31622400) then error('a lifetime out of range') end\n"
    "  end\n"
    "  if err then local _ = tostring(err) end\n"
    "end\n";

static const uint8_t *line(const uint8_t **p, const uint8_t *e, size_t *n)
{
    const uint8_t *s = *p, *nl = memchr(s, '\n', (size_t)(e - s));
    if (nl == NULL)
        nl = e;
    *n = (size_t)(nl - s);
    *p = nl < e ? nl + 1 : e;
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data + 3, *e = data + size, *date, *ra;
    size_t dn, rn;
    lua_State *L = harness_state(SETUP);
    if (size < 3)
        return 0;
    date = line(&p, e, &dn);
    ra = line(&p, e, &rn);
    harness_push(L);
    lua_pushinteger(L, 100 + (data[0] | data[1] << 8) % 500);
    lua_pushinteger(L, data[2]);
    lua_pushlstring(L, (const char *)date, dn);
    lua_pushlstring(L, (const char *)ra, rn);
    lua_pushlstring(L, (const char *)p, (size_t)(e - p));
    if (lua_pcall(L, 5, 0, 0) != 0)
        __builtin_trap();   /* the interpreter raised: never acceptable */
    lua_settop(L, 0);
    return 0;
}
