"""The Lua scripts that make the shared tier's revocations race-free, and the tombstone they write.

Each runs atomically in Redis, so a check and the write it guards cannot be split by another
client's command. The keys a script touches share one hash slot (``{…}`` tags), so each also runs
on Redis Cluster.
"""

from __future__ import annotations

TOMBSTONE = b"revoked"

# Write a session unless the key holds a tombstone (a revocation raced the lookup that read it).
# KEYS: the session; ARGV: the value, its TTL in ms, the tombstone. Returns 1 if written.
SET_UNLESS_REVOKED = """
if redis.call('GET', KEYS[1]) == ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# List a session under its user unless the user was revoked meanwhile (KEYS: the list, the user's
# tombstone; ARGV: the session's token hash, the list's TTL in ms). The session itself is written
# only after this says yes, so a revocation either finds it in the list (and tombstones it) or the
# write is refused.
INDEX_UNLESS_REVOKED = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# Tombstone a user and hand back (and forget) the list of their cached sessions, in one step.
# KEYS: the list, the user's tombstone; ARGV: the tombstone's TTL in ms, the tombstone.
REVOKE_USER = """
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[1])
local members = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1])
return members
"""

# Move the generation to at least ARGV[1] (the highest this process has seen) plus ARGV[2] (1: a
# bump, 0: a repair, which leaves a valid generation at or above ARGV[1] alone). A bump is also
# above Redis's clock in milliseconds: a process that has seen no generation yet (just started)
# still bumps above every generation in use before it, whatever the counter was set back to
# (13 digits: the 15-digit cap is far). A missing or non-numeric value counts as -1. Returns
# {the generation now, the one found, 1 if that was garbage}.
RAISE_GENERATION = """
local raw = redis.call('GET', KEYS[1])
local found, garbage = -1, 0
if raw and #raw <= 15 and string.match(raw, '^%d+$') then found = tonumber(raw) elseif raw then garbage = 1 end
local floor, step = tonumber(ARGV[1]), tonumber(ARGV[2])
if step == 0 and found >= floor then return {found, found, 0} end
local base = math.max(found, floor)
if step > 0 then
  local clock = redis.call('TIME')
  base = math.max(base, tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000))
end
local now = base + step
redis.call('SET', KEYS[1], string.format('%d', now))
return {now, found, garbage}
"""
