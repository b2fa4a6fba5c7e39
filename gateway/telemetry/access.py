"""The access log (``GATEWAY_ACCESS_LOG=on``): one line per decided request, on logger ``gateway.access``.

A line says who (the user ID the verdict named, or nothing), what (the original request's
method, host and path, as the proxy described it: ``gateway.http.original``), the answer
(status, decision reason), how long it took, and the request's ID (``requests``). It never
holds a token, a cookie, an ``Authorization`` value, an API key or the secret: none of those is
ever handed to it, and the query string (where links carry tokens: ``?token=`` of a magic link
or an e-mail verification) is left out. Every value is the client's to choose, so each is
escaped (``%XX`` for a control character, a space, a quote or a backslash) before it reaches the
line: in text format nothing can end it early or forge another, and JSON lines carry them as
fields.
"""

from __future__ import annotations

import logging
import re

_UNSAFE = re.compile(r'[\x00-\x20\x7f-\x9f"\\%]')
_MAX = 512  # a header can be 64 KiB long: the line keeps a bounded prefix of each value


def _escaped(value: str) -> str:
    value = value[:_MAX]
    return _UNSAFE.sub(lambda m: f"%{ord(m[0]):02X}", value) if _UNSAFE.search(value) else value


class AccessLog:
    """Writes access lines at info on ``gateway.access`` when ``enabled``."""

    def __init__(self, *, enabled: bool) -> None:
        self._log = logging.getLogger("gateway.access")
        self.enabled = enabled
        if enabled:  # asked for by its own setting: written whatever GATEWAY_LOG_LEVEL is
            self._log.setLevel(logging.INFO)

    def record(  # noqa: PLR0913  (each field of the line, named)
        self,
        *,
        request_id: str,
        user: str,
        method: str,
        host: str,
        path: str,
        status: int,
        reason: str,
        seconds: float,
    ) -> None:
        """Log one decided request (the fields as the module docstring says)."""
        if not self.enabled:
            return
        fields = {
            "request_id": request_id,
            "user_id": _escaped(user),
            "method": _escaped(method),
            "host": _escaped(host),
            "path": _escaped(path),
            "status": status,
            "reason": reason,
            "latency_ms": round(seconds * 1000, 3),
        }
        self._log.info(
            "%s %s%s %d %s %.3fms user=%s id=%s",
            fields["method"],
            fields["host"],
            fields["path"],
            status,
            reason,
            fields["latency_ms"],
            fields["user_id"] or "-",
            request_id,
            extra=fields,
        )
