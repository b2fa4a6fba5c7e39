"""Request correlation: one ID per decided request, from ``X-Request-ID`` or ``traceparent``, else made.

The ID is the client's to choose, and it is written into log lines: only a bounded value of a
safe alphabet is taken (``X-Request-ID``: 1 to 128 of ``A-Z a-z 0-9 . _ : + / = -``), so a CR, a
LF, a quote or an escape can't forge a log line or break a parser (log injection). Anything else
is replaced by a made ID, never echoed. A W3C ``traceparent`` gives its trace ID (32 lower-case
hex digits, not all zero, version ``00``, parsed strictly) when there is no usable
``X-Request-ID``; a made ID is a per-process random prefix and a counter: no ``uuid4`` per
request, and made only when something (a log line, the response header, a span) asks for it.

``CURRENT`` holds the request being decided, per asyncio task (granian runs each request in its
own context): the lookups below it (``Metrics.lookup``, the spans of ``gateway.lookup.traced``)
find it there without being handed it. A lookup in flight for several requests runs in the
context of the request that started it.
"""

from __future__ import annotations

import itertools
import os
import re
from contextvars import ContextVar

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")
# version 00 only: a later version may lay the fields out otherwise (W3C trace-context, "Versioning").
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
_PREFIX = os.urandom(6).hex()  # per process: made IDs of two workers never collide
_COUNTER = itertools.count(1)


def made_id() -> str:
    """A new request ID: this process's random prefix and a counter (cheap; unique across workers)."""
    return f"{_PREFIX}{next(_COUNTER):010x}"


def safe_request_id(value: str | None) -> str | None:
    """``value`` if it is a usable request ID (bounded, safe alphabet), else ``None``."""
    return value if value is not None and _REQUEST_ID.fullmatch(value) else None


def traceparent_parts(value: str | None) -> tuple[str, str, str] | None:
    """The (trace ID, parent span ID, flags) of a valid version-00 ``traceparent``, else ``None``."""
    found = _TRACEPARENT.fullmatch(value.strip()) if value is not None and len(value) <= 64 else None  # noqa: PLR2004
    if found is None or found[1] == _ZERO_TRACE or found[2] == _ZERO_SPAN:
        return None
    return found[1], found[2], found[3]


class Request:
    """One decided request: its correlation headers, and what its decision went through.

    ``tier``: the last tier its lookup consulted (``l1``, ``cookie_cache``, ``redis``,
    ``postgres``, ``jwt``; ``joined`` for a lookup that joined one in flight; ``none``), set by
    ``Metrics.lookup``. ``user``: the user its verdict named, when the access log asks for it.
    """

    __slots__ = ("_id", "_request_id", "tier", "traceparent", "user")

    def __init__(self, request_id: str | None, traceparent: str | None) -> None:
        self._request_id = request_id
        self.traceparent = traceparent  # raw: parsed only by whoever needs it (spans, the ID)
        self._id: str | None = None
        self.tier = "none"
        self.user = ""

    @property
    def id(self) -> str:
        """The request's ID: its valid ``X-Request-ID``, else its ``traceparent``'s trace ID, else a made one."""
        if self._id is None:
            self._id = safe_request_id(self._request_id) or self.trace_id or made_id()
        return self._id

    @property
    def trace_id(self) -> str:
        """The trace ID of the request's valid ``traceparent`` (``""`` without one)."""
        parts = traceparent_parts(self.traceparent)
        return parts[0] if parts else ""


CURRENT: ContextVar[Request | None] = ContextVar("gateway_request", default=None)
