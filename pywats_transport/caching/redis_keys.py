"""The fleet cache's layout in Redis, and the scripts that change it atomically.

Every key carries the hash tag ``{pwt}``, so the scripts and transactions also run on Redis Cluster (the
whole cache lives in one slot).

A fetch holds a *lease* on its cache key from before it goes to the origin until its answer is stored.
A write's invalidation deletes the leases of the keys it drops, and a store whose lease is gone stores
nothing: an answer fetched before a write is never stored after that write's invalidation, in any
process (the leases of memcache at Facebook, "Scaling Memcache at Facebook", NSDI 2013).

A write finds the entries and leases to drop through the index: a set per path prefix naming the keys
stored under it. Redis may evict an index set and keep the entries it named (``allkeys-lru`` picks the
set nobody reads over the entry everybody does), and a write would then drop nothing. So an entry counts
only while every index set of its URL names its key: a read that finds it unlisted misses, the next
lease or store deletes it, and a fetch whose key went unlisted meanwhile stores nothing.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from .url_parts import place_of

TAG = "{pwt}"
ENTRY = f"pwt:{TAG}:e:"  # + cache key -> hash {entry id: framed entry}
OWNER = f"pwt:{TAG}:o:"  # + entry id -> cache key (for remove_entry / update_headers by id)
INDEX = f"pwt:{TAG}:p:"  # + origin + path prefix -> set of cache keys
LOCK = f"pwt:{TAG}:l:"  # + cache key -> the token of the process fetching it (single flight)
LEASE = f"pwt:{TAG}:w:"  # + cache key -> hash {lease token: 1} of the fetches in flight for it
EPOCH = f"pwt:{TAG}:epoch"  # the run_id of the Redis process the cache was written on (redis_epoch)
#: every key of the cache (a SCAN pattern), and none of the fleet rate's, which shares the hash tag
CACHE_KEYS = f"pwt:{TAG}:[" + "".join(k[-2] for k in (ENTRY, OWNER, INDEX, LOCK, LEASE)) + "]:*"
CHANNEL = f"pwt:{TAG}:invalidated"  # "<origin>\n<path>" or "*": near caches drop what it names

# KEYS[1]: a lock; ARGV[1]: our token. Deletes the lock only if it is still ours.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1]: the index set of a prefix. Deletes every entry indexed there and the leases on those keys,
# then the set, and tells the near caches (ARGV[2]: channel, ARGV[3]: message) in the same atomic step.
# ARGV[1], ARGV[4]: the entry and lease key prefixes. Returns how many keys had entries.
DROP_PREFIX = """
local keys = redis.call('SMEMBERS', KEYS[1])
local n = 0
for _, key in ipairs(keys) do
  n = n + redis.call('DEL', ARGV[1] .. key)
  redis.call('DEL', ARGV[4] .. key)
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return n
"""

# An index set lives as long as its longest-lived member, and each store lengthens it: under a stream
# of ever new URLs (a serial number each) it would keep every key ever stored. So each script that adds
# to an index set also looks at a few members at random and removes those with neither an entry nor a
# lease: the dead members stay a small share of the live ones (about 1 in PRUNE, as each addition takes
# out PRUNE tries at them), and the sets stay the type they always were.
PRUNE = 4
_PRUNE = f"""
local function prune(set, entry, lease)
  for _, member in ipairs(redis.call('SRANDMEMBER', set, {PRUNE})) do
    if redis.call('EXISTS', entry .. member, lease .. member) == 0 then
      redis.call('SREM', set, member)
    end
  end
end
"""

# Whether every index set ARGV[first..] names the cache key ``key``.
_LISTED = """
local function listed(key, first)
  for i = first, #ARGV do
    if redis.call('SISMEMBER', ARGV[i], key) == 0 then
      return false
    end
  end
  return true
end
"""

# KEYS[1]: the entry hash, KEYS[2]: the epoch key. ARGV[1]: the cache key, ARGV[2..]: the index sets of
# the URL's prefixes. A lookup: the key's entries, or none if an index set no longer names the key (Redis
# evicted it), as a write may since have dropped the path and missed them. The lease that follows the
# miss deletes them. The epoch is only read as a connection starts: without the TOUCH, an LRU Redis would
# evict it first, and the next connection would clear the whole cache.
LOOK = _LISTED + """
redis.call('TOUCH', KEYS[2])
local found = redis.call('HGETALL', KEYS[1])
if #found > 0 and not listed(ARGV[1], 2) then
  return {}
end
return found
"""

# KEYS[1]: a key's lease hash. ARGV[1]: the lease token, ARGV[2]: how long it holds (ms), ARGV[3]: the
# cache key, ARGV[4], ARGV[5]: the entry and lease key prefixes, ARGV[6..]: the index sets of the URL's
# prefixes, where a write's invalidation finds the key even before anything is stored under it. An
# index set's expiry is only ever lengthened. Entries an index set no longer names (see LOOK) go first.
# Returns Redis's time in microseconds, which keeps the station's clock set to Redis's on every miss
# (redis_clock), or 1 where the user may not run TIME.
TAKE_LEASE = _PRUNE + _LISTED + """
if not listed(ARGV[3], 6) then
  redis.call('DEL', ARGV[4] .. ARGV[3])
end
redis.call('HSET', KEYS[1], ARGV[1], 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
for i = 6, #ARGV do
  local ttl = redis.call('PTTL', ARGV[i])
  prune(ARGV[i], ARGV[4], ARGV[5])
  redis.call('SADD', ARGV[i], ARGV[3])
  if ttl == -2 then
    redis.call('PEXPIRE', ARGV[i], ARGV[2])
  elseif ttl >= 0 then
    redis.call('PEXPIRE', ARGV[i], ARGV[2], 'GT')
  end
end
local now = redis.pcall('TIME')
if now[1] then
  return tonumber(now[1]) * 1000000 + tonumber(now[2])
end
return 1
"""

# KEYS[1]: the entry hash. ARGV[1]: the lease hash ('' for a store without a lease), ARGV[2]: the lease
# token, ARGV[3]: the entry id, ARGV[4]: the framed entry, ARGV[5]: the owner key, ARGV[6]: the cache key,
# ARGV[7]: how long Redis keeps it (ms; '' for ever), ARGV[8], ARGV[9]: the entry and lease key prefixes,
# ARGV[10..]: the index sets of the URL's prefixes.
# Stores nothing (returns 0) once the lease is gone: a write invalidated the key since the fetch began;
# nor once an index set no longer names the key (see LOOK), as a write may then have missed the lease.
# Expiries are only ever lengthened, so a short-lived variant never shortens a longer one.
SAVE = _PRUNE + _LISTED + """
if not listed(ARGV[6], 10) then
  redis.call('DEL', KEYS[1])
  if ARGV[1] ~= '' then
    redis.call('HDEL', ARGV[1], ARGV[2])
    return 0
  end
end
if ARGV[1] ~= '' and redis.call('HDEL', ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
if ARGV[7] ~= '' then
  redis.call('SET', ARGV[5], ARGV[6], 'PX', ARGV[7])
else
  redis.call('SET', ARGV[5], ARGV[6])
end
local names = {KEYS[1]}
for i = 10, #ARGV do
  prune(ARGV[i], ARGV[8], ARGV[9])
  redis.call('SADD', ARGV[i], ARGV[6])
  names[#names + 1] = ARGV[i]
end
for _, name in ipairs(names) do
  if ARGV[7] ~= '' then
    redis.call('PEXPIRE', name, ARGV[7], 'NX')
    redis.call('PEXPIRE', name, ARGV[7], 'GT')
  else
    redis.call('PERSIST', name)
  end
end
return 1
"""

# KEYS[1]: the entry hash. ARGV[1]: the lease hash ('' for none), ARGV[2]: the lease token, ARGV[3]: the
# entry id, ARGV[4]: the entry with the headers a 304 refreshed. Replaces the entry only while it is
# there and the lease holds: an invalidated entry is not brought back.
UPDATE = """
if ARGV[1] ~= '' and redis.call('HEXISTS', ARGV[1], ARGV[2]) == 0 then
  return 0
end
if redis.call('HEXISTS', KEYS[1], ARGV[3]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
return 1
"""


@lru_cache(maxsize=4096)
def prefixes(url: str) -> tuple[str, ...]:
    """Index names for a URL: its origin with each prefix of its path, outermost first (each hit needs
    them, hence the cache)."""
    origin, path = place_of(url)
    segments = [s for s in path.split("/") if s]
    return tuple(INDEX + origin + "/" + "/".join(segments[:i]) for i in range(len(segments) + 1))


def look_args(key: str, url: str) -> tuple[Any, ...]:
    """``LOOK``'s keys and arguments for ``key``, the request for ``url``."""
    return 2, ENTRY + key, EPOCH, key, *prefixes(url)


def index_name(origin: str | None, path: str) -> str:
    segments = [s for s in path.split("/") if s]
    return INDEX + (origin or "") + "/" + "/".join(segments)
