"""``RedisStore``: the ``Store`` protocol on Redis (the production backend).

Values are JSON strings under ``{prefix}v:{key}`` with a native TTL. ``consume``
records use in a companion marker ``{prefix}c:{key}`` that expires with the
value; the two namespaces are disjoint so no caller key can collide with a marker.
Check-and-set steps run as Lua scripts, which Redis executes atomically.
"""

from __future__ import annotations

import json

# KEYS: value, marker; ARGV: keep (seconds, 0 = no change), then field, expected value pairs. Returns {} if
# missing, else {value, 1 if this call set the marker}. A value whose fields differ is returned unmarked.
# On first use with keep > 0 both keys live ``keep`` seconds from now.
_CONSUME = """
local value = redis.call('GET', KEYS[1])
if not value then return {} end
if #ARGV > 1 then
  local fields = cjson.decode(value)
  for i = 2, #ARGV, 2 do
    if fields[ARGV[i]] ~= ARGV[i + 1] then return {value, 0} end
  end
end
local keep = tonumber(ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if keep > 0 then ttl = keep * 1000 end
local first
if ttl > 0 then
  first = redis.call('SET', KEYS[2], '1', 'PX', ttl, 'NX')
else
  first = redis.call('SET', KEYS[2], '1', 'NX')
end
if first then
  if keep > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
  return {value, 1}
end
return {value, 0}
"""

# KEYS: value, marker; ARGV: json, ttl, NX (add: only if absent) or XX (replace: only if present). A fresh
# value must not inherit a stale marker.
_SET_IF = """
if redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2], ARGV[3]) then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""

# KEYS: counter; ARGV: ttl. The TTL is set only when the window starts (no TTL yet).
_INCR = """
local n = redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) == -1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""


class RedisStore:
    """A ``Store`` over a ``redis.Redis`` client; all keys live under ``prefix``."""

    def __init__(self, client, prefix: str = "idp:"):
        self.client = client
        self.prefix = prefix
        self._consume = client.register_script(_CONSUME)
        self._set_if = client.register_script(_SET_IF)
        self._incr = client.register_script(_INCR)

    def _keys(self, key: str) -> tuple[str, str]:
        return f"{self.prefix}v:{key}", f"{self.prefix}c:{key}"

    def put(self, key: str, value: dict, ttl: int) -> None:
        vkey, marker = self._keys(key)
        # Overwriting starts afresh, so the old value's consumed marker goes too (in one MULTI).
        pipe = self.client.pipeline(transaction=True)
        pipe.set(vkey, json.dumps(value), ex=ttl)
        pipe.delete(marker)
        pipe.execute()

    def get(self, key: str) -> dict | None:
        raw = self.client.get(self._keys(key)[0])
        return None if raw is None else json.loads(raw)

    def consume(self, key: str, keep: int | None = None,
                where: dict[str, str] | None = None) -> tuple[dict | None, bool]:
        args = [int(keep or 0)]
        for field, expected in (where or {}).items():
            args += [field, expected]
        result = self._consume(keys=list(self._keys(key)), args=args)
        if not result:
            return None, False
        return json.loads(result[0]), result[1] == 1

    def add(self, key: str, value: dict, ttl: int) -> bool:
        return self._set_if(keys=list(self._keys(key)), args=[json.dumps(value), ttl, "NX"]) == 1

    def replace(self, key: str, value: dict, ttl: int) -> bool:
        return self._set_if(keys=list(self._keys(key)), args=[json.dumps(value), ttl, "XX"]) == 1

    def incr(self, key: str, ttl: int) -> int:
        return int(self._incr(keys=[self._keys(key)[0]], args=[ttl]))

    def delete(self, key: str) -> None:
        self.client.delete(*self._keys(key))
