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

Logging stays the one place it is configured: the lines go to the handler ``configure_logging``
installed, in its format. But a ``logging`` call per line (a record, a formatter, a lock, a
write syscall) cost an L1 hit six times its own work, so once the worker's loop runs (``open``),
if that handler is the plain one (a stream, no filters, nothing else listening on the way), the
lines are formatted here, as its formatter would (``JSONFormatter`` directly, any other through
the formatter), and written together once per loop tick (``loop.call_soon``), or as soon as
``_BATCH`` wait, in order. ``close`` writes what is left. Any other set-up (a test's handler,
an operator's ``dictConfig``) gets the records through ``logging``, one at a time, as before.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.telemetry.logs import JSONFormatter

if TYPE_CHECKING:
    import asyncio

_UNSAFE = re.compile(r'[\x00-\x20\x7f-\x9f"\\%]')
_MAX = 512  # a header can be 64 KiB long: the line keeps a bounded prefix of each value
_MESSAGE = "%s %s%s %d %s %.3fms user=%s id=%s"
_BATCH = 256  # lines: a tick that decides more writes early, so the buffer stays small
_JSON = msgspec.json.Encoder()


def _escaped(value: str) -> str:
    value = value[:_MAX]
    return _UNSAFE.sub(lambda m: f"%{ord(m[0]):02X}", value) if _UNSAFE.search(value) else value


def _plain_handler(log: logging.Logger) -> logging.StreamHandler[Any] | None:
    """The one stream handler an info record of ``log`` reaches with nothing else on the way, else ``None``."""
    found: list[logging.Handler] = []
    current: logging.Logger | None = log
    while current is not None:
        if current.filters:
            return None
        found += current.handlers
        current = current.parent if current.propagate else None
    if len(found) != 1:
        return None
    (handler,) = found
    if type(handler) is not logging.StreamHandler or handler.filters or handler.level > logging.INFO:
        return None
    return handler


class AccessLog:
    """Writes access lines at info on ``gateway.access`` when ``enabled`` (batched once ``open``)."""

    def __init__(self, *, enabled: bool) -> None:
        self._log = logging.getLogger("gateway.access")
        self.enabled = enabled
        if enabled:  # asked for by its own setting: written whatever GATEWAY_LOG_LEVEL is
            self._log.setLevel(logging.INFO)
        self._handler: logging.StreamHandler[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lines: list[str] = []
        self._second, self._stamp = -1, ""

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Batch lines on ``loop`` (the worker's), if the handler is the plain one (module docstring)."""
        self._handler = _plain_handler(self._log) if self.enabled else None
        self._loop = loop

    def close(self) -> None:
        """Write what is buffered; later lines go through ``logging``, one at a time."""
        self.flush()
        self._handler = None

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
        method, host, path, user = _escaped(method), _escaped(host), _escaped(path), _escaped(user)
        latency_ms = round(seconds * 1000, 3)
        fields = {
            "request_id": request_id,
            "user_id": user,
            "method": method,
            "host": host,
            "path": path,
            "status": status,
            "reason": reason,
            "latency_ms": latency_ms,
        }
        args = (method, host, path, status, reason, latency_ms, user or "-", request_id)
        handler = self._handler
        if handler is None:
            self._log.info(_MESSAGE, *args, extra=fields)
            return
        if type(handler.formatter) is JSONFormatter:
            line = self._json(_MESSAGE % args, fields)
        else:  # text (a terminal's): rare, and exactly what the formatter makes of the record
            record = self._log.makeRecord(self._log.name, logging.INFO, "", 0, _MESSAGE, args, None, extra=fields)
            line = handler.format(record)
        lines = self._lines
        lines.append(line)
        if len(lines) >= _BATCH:
            self.flush()
        elif len(lines) == 1 and self._loop is not None:
            self._loop.call_soon(self.flush)

    def _json(self, message: str, fields: dict[str, Any]) -> str:
        """What ``JSONFormatter`` makes of the record, without the record (the time formatted once a second)."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        line = {
            "time": f"{self._stamp}.{int((now - second) * 1000):03d}Z",
            "level": "info",
            "logger": self._log.name,
            "message": message,
        }
        return _JSON.encode(line | fields).decode()

    def flush(self) -> None:
        """Write the buffered lines, in order, in one write."""
        lines, handler = self._lines, self._handler
        if not lines or handler is None:
            return
        text = handler.terminator.join(lines) + handler.terminator
        lines.clear()
        handler.acquire()  # the lock its other lines are written under
        try:
            handler.stream.write(text)
            handler.stream.flush()
        except (OSError, ValueError):  # stderr closed or gone (a pipe whose reader left): nothing to tell
            pass
        finally:
            handler.release()
