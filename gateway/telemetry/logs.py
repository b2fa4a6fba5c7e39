"""Logging: JSON lines (or plain text on a terminal), and one line per decision when asked.

Nothing logged ever holds a token, a cookie or the secret: a decision names its credential by a
short fingerprint (8 hex digits of a SHA-256), which tells two requests' credentials apart and
can't be turned back into one.
"""

from __future__ import annotations

import hashlib
import logging
import random
import sys
import time
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from gateway.credentials.tokens import Credential
    from gateway.telemetry.requests import Request

_JSON = msgspec.json.Encoder()
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line."""
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line |= {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _JSON.encode(line).decode()


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Log to stderr at ``level``; ``fmt`` is ``json``, ``text`` or ``auto`` (text on a terminal)."""
    handler = logging.StreamHandler()
    if fmt == "json" or (fmt == "auto" and not sys.stderr.isatty()):
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(handlers=[handler], force=True)
    logging.getLogger("gateway").setLevel(level.upper())


def fingerprint(credential: Credential | None) -> str:
    """A short, one-way name for a credential, for logs."""
    if credential is None:
        return ""
    return hashlib.sha256(credential.key.encode("utf-8", "surrogatepass")).hexdigest()[:8]


class DecisionLog:
    """One log line per decision: all of them at debug, a sampled share at info, else none."""

    def __init__(self, sample: float) -> None:
        self._log = logging.getLogger("gateway.lookup.decision")
        debug = self._log.isEnabledFor(logging.DEBUG)
        self._rate = 1.0 if debug else sample if self._log.isEnabledFor(logging.INFO) else 0.0
        self._level = logging.DEBUG if debug else logging.INFO
        self.enabled = self._rate > 0  # checked first on the hot path: off costs nothing more

    def record(
        self, reason: str, credential: Credential | None, started: float, request: Request | None = None
    ) -> None:
        """Log one decision (if enabled and sampled) with its reason, latency, fingerprint and request ID."""
        if not self.enabled or (self._rate < 1 and random.random() >= self._rate):  # noqa: S311  (sampling)
            return
        extra = {
            "request_id": request.id if request is not None else "",
            "trace_id": request.trace_id if request is not None else "",
            "reason": str(reason),
            "credential": credential.kind.name if credential is not None else "none",
            "fingerprint": fingerprint(credential),
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        self._log.log(self._level, "decision %s id=%s", reason, extra["request_id"] or "-", extra=extra)
