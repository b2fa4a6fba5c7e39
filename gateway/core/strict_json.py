"""JSON with exactly one reading, for anything signed (cookie caches, JWTs). No I/O.

A signature vouches for bytes; what it vouches for is what a parser makes of them. JSON leaves
duplicate keys to the parser (RFC 8259 §4): Python's ``json`` and JavaScript's ``JSON.parse`` keep
the last, a scanner that stops at the first keeps the first. Where two readings exist, an
attacker picks the one that was not checked, so a document with a duplicate key at any depth is
refused here, as are ``NaN`` and ``Infinity`` (not JSON; ``JSON.parse`` refuses them). No signer
the gateway trusts (Better Auth's ``JSON.stringify``, jose) ever writes either.
"""

from __future__ import annotations

import json
from typing import Any


class AmbiguousJSON(ValueError):
    """A document with more than one reading (a duplicate key, or a non-JSON constant)."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        msg = "duplicate key"
        raise AmbiguousJSON(msg)
    return obj


def _constant(name: str) -> Any:
    msg = f"{name} is not JSON"
    raise AmbiguousJSON(msg)


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant)


def loads(data: str | bytes) -> Any:
    """Parse one JSON document; bytes must be UTF-8 (no other encoding is guessed).

    Raises:
        ValueError: not JSON, not UTF-8, or ambiguous (``AmbiguousJSON``).
        RecursionError: nested deeper than the interpreter allows.
    """
    return _DECODER.decode(data.decode() if isinstance(data, bytes) else data)


def raw_decode(text: str, index: int) -> tuple[Any, int]:
    """Parse the one JSON value that starts exactly at ``text[index]``; return it and where it ends.

    Raises:
        ValueError: as ``loads``.
        RecursionError: as ``loads``.
    """
    return _DECODER.raw_decode(text, index)
