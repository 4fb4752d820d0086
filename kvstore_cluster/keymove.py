"""How a key leaves its source master during a reshard: the scripts proxies and the key mover run there.

Every key of a migrating slot leaves its source through :data:`TAKE` (docs/design.md,
"Resharding"): one script that MIGRATEs the keys it is given to the target unless one of them
is *big* (estimated by ``MEMORY USAGE`` above a limit) or *locked* (being moved in pieces by the
key mover). Those it leaves where they are and names: a proxy then holds the request and asks
again; the mover moves them in pieces (``ops/big_keys.py``). Proxies and the mover run the same
script, so no proxy can ever MIGRATE a big key whole and stall both servers.

A big key in pieces is locked on its source (a field of :data:`LOCKS` in database
:data:`LOCK_DB`), copied to the target's database :data:`COPY_DB`, then ``MOVE``\\ d into database
0 there (atomic) and unlinked from the source together with its lock (atomic). Proxies serve
database 0 only, so neither database is ever visible to clients.
"""

from __future__ import annotations

import hashlib
from typing import Any

LOCK_DB = 14  # on a source master: the hash of keys being moved in pieces
COPY_DB = 13  # on a target master: big keys being assembled
LOCKS = "kvstore:moving"
BIG_KEY_BYTES = 1 << 20  # MEMORY USAGE above which a key moves in pieces (a MIGRATE of it takes ~10 ms)
MOVING_ERROR = "KVMOVING"  # a proxy's take left a key in place: hold the request and ask again

# KEYS: the keys. ARGV: host, port, timeout ms, big-key bytes, mode, byte budget, [password].
# mode "proxy": +OK once none is left on the source, else -KVMOVING (the others moved anyway).
# mode "mover": {moved, bytes, number left in place, those keys..., keys not tried (budget spent)...}.
_TAKE_LUA = """
redis.call('SELECT', @LOCK_DB@)
local locked = redis.call('EXISTS', '@LOCKS@') == 1
redis.call('SELECT', 0)
local big, budget, mover = tonumber(ARGV[4]), tonumber(ARGV[6]), ARGV[5] == 'mover'
local send, left, rest = {}, {}, {}
local bytes = 0
for i, k in ipairs(KEYS) do
  if bytes >= budget then
    rest[#rest + 1] = k
  else
    local size = redis.call('MEMORY', 'USAGE', k)
    if size then
      if size > big or (locked and redis.call('SELECT', @LOCK_DB@) and
          redis.call('HEXISTS', '@LOCKS@', k) == 1) then
        left[#left + 1] = k
      else
        send[#send + 1] = k
        bytes = bytes + size
      end
      if locked then redis.call('SELECT', 0) end
    end
  end
end
if #send > 0 then
  local args = {'MIGRATE', ARGV[1], ARGV[2], '', 0, ARGV[3]}
  if ARGV[7] then args[#args + 1] = 'AUTH'; args[#args + 1] = ARGV[7] end
  args[#args + 1] = 'KEYS'
  for _, k in ipairs(send) do args[#args + 1] = k end
  local ok, err = pcall(redis.call, unpack(args))
  if not ok then return redis.error_reply(type(err) == 'table' and err.err or tostring(err)) end
end
if not mover then
  if #left > 0 then return redis.error_reply('@MOVING@ ' .. #left .. ' key(s) are being moved in pieces') end
  return redis.status_reply('OK')
end
local out = {#send, bytes, #left}
for _, k in ipairs(left) do out[#out + 1] = k end
for _, k in ipairs(rest) do out[#out + 1] = k end
return out
"""


def _lua(text: str) -> bytes:
    return (text.replace("@LOCK_DB@", str(LOCK_DB)).replace("@LOCKS@", LOCKS)
            .replace("@MOVING@", MOVING_ERROR).encode())


TAKE = _lua(_TAKE_LUA)
TAKE_SHA = hashlib.sha1(TAKE).hexdigest().encode()

# KEYS[1]: the key; ARGV[1]: the target. Locks it if it exists: {type, absolute expire ms or -1}.
LOCK = _lua("""
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return false end
local e = redis.call('PEXPIRETIME', KEYS[1])
redis.call('SELECT', @LOCK_DB@)
redis.call('HSET', '@LOCKS@', KEYS[1], ARGV[1])
return {t, e}
""")

# KEYS[1]: the key. Once its copy is in place on the target: gone from the source, lock and all.
RELEASE = _lua("""
redis.call('UNLINK', KEYS[1])
redis.call('SELECT', @LOCK_DB@)
return redis.call('HDEL', '@LOCKS@', KEYS[1])
""")

# No keys: the keys locked on this source (a mover that died part-way left them).
LOCKED = _lua("""
redis.call('SELECT', @LOCK_DB@)
return redis.call('HKEYS', '@LOCKS@')
""")


def take_args(keys: list[bytes], host: str, port: int, timeout_ms: int, *, mode: str = "proxy",
              big_bytes: int = BIG_KEY_BYTES, budget: int = 1 << 62, password: str | None = None) -> list[Any]:
    """``EVALSHA`` arguments of :data:`TAKE` (after the command name)."""
    args: list[Any] = [TAKE_SHA, len(keys), *keys, host, port, timeout_ms, big_bytes, mode, budget]
    if password:
        args.append(password)
    return args
