"""The shared tier's value format: ``MAC || generation || not-after || msgpack(Session)``.

- The MAC is an HMAC-SHA256 (cut to 128 bits) over the key and the rest of the value, keyed from
  the secret and the configuration (``mac_key``): whoever can write to Redis still cannot mint a
  session, or move one to another token's key. A bad MAC is a miss.
- The generation is the one read before the session was looked up: a value of another
  generation is a miss (``generation`` tells why generations move).
- The not-after time (the write's time plus the L2 TTL, never past ``expiresAt``) is checked on
  every read, so a value copied out of Redis and written back later is a miss once its own TTL
  would have ended it.
"""

from __future__ import annotations

import hmac
import logging
import struct

import msgspec

from gateway.core.sessions import Session

log = logging.getLogger("gateway.redis")

_MAC_BYTES = 16  # 128-bit tag
_HEAD = struct.Struct(">Qd")  # the generation, and the not-after time (Unix seconds)
_HEAD_END = _MAC_BYTES + _HEAD.size
_ENCODE = msgspec.msgpack.Encoder()
_DECODE = msgspec.msgpack.Decoder(Session)
# Bumping this retires every value written before (their MACs stop verifying).
_CONTEXT = b"better-auth-gateway/redis-value/v2\0"
# A session is a few hundred bytes to a few KiB; a user's own fields (a name, an avatar as a data
# URL, a JSON field) can be megabytes, and anyone who signs up may write them. Written to Redis,
# such a value can outlast the shared tier's budget (0.25 s is ~100 MB on loopback, a few MB on a
# slow link), which degrades the tier for every user and retires every value at recovery, as
# often as that user makes a lookup. Such sessions are served from the source, each time. The
# bound is per value, and a read fetches up to GATEWAY_BATCH_MAX_SIZE values at once: 1,536
# sessions just under 128 KiB degraded the tier when read back (red team), so it is 16 KiB (4 MiB
# a 256-key read at most).
MAX_VALUE_BYTES = 16 * 1024


def mac_key(secret: str, configuration: bytes) -> bytes:
    """The values' MAC key: from the secret, and from what a value's fields mean and may show.

    ``configuration`` describes the fields one configuration answers and the table mapping they
    are read through (the composition root builds it: ``gateway.resources.value_configuration``).
    Another gateway sharing this Redis (or this one after a rolling restart) with other hidden
    fields, plugins, additional fields or mappings must not answer a value as its own: under its
    key the MAC does not verify, and the value is a miss.
    """
    return hmac.digest(secret.encode(), _CONTEXT + configuration, "sha256")


class Values:
    """Seals sessions into values and opens them again, under one MAC key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def seal(self, key: str, session: Session, generation: int, not_after: float) -> bytes | None:
        """The value to store at ``key``; ``None`` if msgpack cannot hold the session, or it is too large.

        (A JSON document too deep to decode, kept as text, is such a session, and so is one over
        ``MAX_VALUE_BYTES``: it is served from the source each time, never an error in the lookup.)
        """
        try:
            body = _ENCODE.encode(session)
        except (TypeError, OverflowError, RecursionError):
            return None
        if len(body) > MAX_VALUE_BYTES:
            return None
        payload = _HEAD.pack(generation, not_after) + body
        return self._mac(key, payload) + payload

    def open(self, key: str, raw: object, generation: int, now: float) -> Session | None:
        """The session in a value read at ``key``; ``None`` for a miss, a tombstone or anything not ours now.

        Not ours now: a bad MAC, another generation than ``generation``, a not-after time at or
        before ``now``, or a body that does not decode (msgspec's depth limit is Python's recursion
        limit less the stack in use: a value sealed a few frames up from here may nest too deep).
        """
        if not isinstance(raw, bytes) or len(raw) <= _HEAD_END:
            return None  # a miss, or a tombstone
        mac, payload = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(key, payload)):
            # Forged, or written under another secret or field configuration (see mac_key).
            log.warning("ignored a Redis value with a bad MAC (key …%s)", key[-8:])
            return None
        value_generation, not_after = _HEAD.unpack_from(payload)
        if value_generation != generation or not_after <= now:  # retired, or written back after its time
            return None
        try:
            return _DECODE.decode(payload[_HEAD.size :])
        except (msgspec.DecodeError, RecursionError):  # too deep for the stack it is opened on (a user's JSON)
            return None

    def _mac(self, key: str, payload: bytes) -> bytes:
        return hmac.digest(self._key, key.encode() + b"\0" + payload, "sha256")[:_MAC_BYTES]
