/*
 * libFuzzer harness: the answer interpreter (proto_interpret through
 * core.answer), for every operation, API calls included. Input layout:
 *   byte 0-1: status (100..599), byte 2: the operation (low 3 bits) and
 *   how the headers come (bit 3: a raw header block, as the OpenResty
 *   transport gives it; else a table of Date and Retry-After, as a Lua
 *   transport does);
 *   raw: the header block is everything up to and including the first
 *   empty line (or all of the rest), the body what follows;
 *   table: the Date value up to '\n', the Retry-After value up to '\n',
 *   and the rest is the body.
 * The interpreter (head.c and json.c under it) must never crash and never
 * raise: it answers a result or an oauth.Error. A token it keeps is
 * visible ASCII with a lifetime of at most a year; an API answer is a
 * table of status, headers and body whose json reads without raising; an
 * API call's http or api error carries its answer. The client's secret
 * never survives into an answer or an error (the redaction rule).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char SETUP[] =
    "local core = ...\n"
    "local SECRET = 'secret-xyz-0123'\n"
    "local c = core.new({account_id = 'acct', client_id = 'id', client_secret = SECRET,\n"
    "  base_url = 'https://localhost', user_agent = 'fuzz', max_response_bytes = 65536,\n"
    "  timeout = 10, connect_timeout = 5, refresh_skew = 300,\n"
    "  paths = {issue = '/i', refresh = '/r', revoke = '/v', authorize = '/a'}}, {})\n"
    "local ops = {'issue', 'refresh', 'revoke', 'authorize', 'exchange', 'request', 'request', 'request'}\n"
    "local function clean(s)\n"
    "  if type(s) == 'string' and s:find(SECRET, 1, true) then error('the secret survived') end\n"
    "end\n"
    "return function(status, op, headers, body)\n"
    "  op = ops[op % 8 + 1]\n"
    "  local r, err = core.answer(c, op, status, headers, body)\n"
    "  if r == nil and getmetatable(err) ~= core.Error then error('no error value') end\n"
    "  if op == 'request' then\n"
    "    local a = r or err.response\n"
    "    if r == nil and (err.kind == 'http' or err.kind == 'api') and type(a) ~= 'table' then\n"
    "      error('an API error without its answer')\n"
    "    end\n"
    "    if type(a) == 'table' then\n"
    "      if type(a.status) ~= 'number' or type(a.headers) ~= 'table' or type(a.body) ~= 'string' then\n"
    "        error('an API answer of the wrong shape')\n"
    "      end\n"
    "      clean(a.body)\n"
    "      for k, v in pairs(a.headers) do clean(k) clean(v) end\n"
    "      local _ = a.json\n"
    "    end\n"
    "  elseif type(r) == 'table' then\n"
    "    if r.access_token:find('[^\\33-\\126]') then error('a token with a byte outside ASCII') end\n"
    "    if not (r.expires_in >= 0 and r.expires_in <= 31622400) then error('a lifetime out of range') end\n"
    "  end\n"
    "  if err then clean(tostring(err)) clean(err.message) end\n"
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
    const uint8_t *p = data + 3, *e = data + size;
    lua_State *L = harness_state(SETUP);
    if (size < 3)
        return 0;
    harness_push(L);
    lua_pushinteger(L, 100 + (data[0] | data[1] << 8) % 500);
    lua_pushinteger(L, data[2] & 7);
    if (data[2] & 8) {
        const uint8_t *end = e, *q;
        for (q = p; q + 1 < e; q++) {
            if (q[0] == '\n' && (q[1] == '\n' || (q + 2 < e && q[1] == '\r' && q[2] == '\n'))) {
                end = q + (q[1] == '\n' ? 2 : 3);
                break;
            }
        }
        lua_pushlstring(L, (const char *)p, (size_t)(end - p));
        p = end;
    } else {
        size_t dn, rn;
        const uint8_t *date = line(&p, e, &dn), *ra = line(&p, e, &rn);
        lua_createtable(L, 0, 2);
        lua_pushlstring(L, (const char *)date, dn);
        lua_setfield(L, -2, "Date");
        lua_pushlstring(L, (const char *)ra, rn);
        lua_setfield(L, -2, "Retry-After");
    }
    lua_pushlstring(L, (const char *)p, (size_t)(e - p));
    if (lua_pcall(L, 4, 0, 0) != 0)
        __builtin_trap();   /* the interpreter raised, or a property broke: never acceptable */
    lua_settop(L, 0);
    return 0;
}
