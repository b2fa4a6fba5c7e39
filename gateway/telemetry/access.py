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
lines are formatted here, as its formatter would (JSON put together directly, any other format
through the formatter), and written together ``_FLUSH_S`` after the first of them waits
(``loop.call_later``), or as soon as ``_BATCH`` wait, in order, as nginx's ``access_log ...
buffer= flush=`` does. Not once per loop tick: granian hands each request to the loop on its own
wake-up, so a tick holds few (under load, a dozen lines a write were counted; ~100 now:
``benchmarks/results/observability-20261130-session7.md``). ``close`` writes what is left. Any
other set-up (a test's handler, an operator's ``dictConfig``) gets the records through
``logging``, one at a time, as before.
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

# Lone surrogates too (no UTF-8 encoder, msgspec's or the stream's, takes one), and the Unicode
# line and paragraph separators (a line break to some viewers).
_UNSAFE = re.compile(r'[\x00-\x20\x7f-\x9f"\\%\u2028\u2029\ud800-\udfff]')
_MAX = 512  # a header can be 64 KiB long: the line keeps a bounded prefix of each value
_MESSAGE = "%s %s%s %d %s %.3fms user=%s id=%s"
_BATCH = 256  # lines: more waiting are written at once, so the buffer stays small
_FLUSH_S = 0.05  # how long a line may wait to be written (a killed worker loses at most that long's)
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
        self._json = False  # the plain handler's formatter is JSONFormatter: lines made here as JSON
        self._second, self._stamp = -1, ""
        self._now, self._when = -1, ""  # the millisecond of the last line, and its time

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Batch lines on ``loop`` (the worker's), if the handler is the plain one (module docstring)."""
        self._handler = _plain_handler(self._log) if self.enabled else None
        self._json = self._handler is not None and type(self._handler.formatter) is JSONFormatter
        self._loop = loop

    def close(self) -> None:
        """Write what is buffered; later lines go through ``logging``, one at a time."""
        self.flush()
        self._handler, self._json = None, False

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
        if self.enabled:
            self.line(request_id, user, method, host, path, status, reason, seconds)

    def line(  # noqa: PLR0913, PLR0917  (each field of the line, in order)
        self, request_id: str, user: str, method: str, host: str, path: str, status: int, reason: str, seconds: float
    ) -> None:
        """``record``'s line, its fields in order (the hit paths': no keywords to bind); only when enabled."""
        # One scan of every text field: usually none needs escaping or cutting, and then, in JSON,
        # none needs quoting either (no quote, backslash or control character): the line is put
        # together as it stands. The request ID and the reason are ours (a safe alphabet), scanned
        # all the same.
        text = f"{method}{host}{path}{user}{request_id}{reason}"
        if self._json and len(text) <= _MAX and _UNSAFE.search(text) is None:
            ms = f"{seconds * 1000:.3f}"  # the number JSONFormatter writes, to the digits it keeps
            self._write(
                f'{{"time":"{self._time()}","level":"info","logger":"gateway.access",'
                f'"message":"{method} {host}{path} {status} {reason} {ms}ms user={user or "-"} id={request_id}",'
                f'"request_id":"{request_id}","user_id":"{user}","method":"{method}","host":"{host}",'
                f'"path":"{path}","status":{status},"reason":"{reason}","latency_ms":{ms}}}'
            )
            return
        method, host, path, user = _escaped(method), _escaped(host), _escaped(path), _escaped(user)
        request_id, reason = _escaped(request_id), _escaped(reason)
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
        elif self._json:  # escaped now: encoded as JSONFormatter encodes
            line = {"time": self._time(), "level": "info", "logger": self._log.name, "message": _MESSAGE % args}
            self._write(_JSON.encode(line | fields).decode())
        else:  # text (a terminal's): rare, and exactly what the formatter makes of the record
            record = self._log.makeRecord(self._log.name, logging.INFO, "", 0, _MESSAGE, args, None, extra=fields)
            self._write(handler.format(record))

    def _write(self, line: str) -> None:
        """Buffer ``line``: written ``_FLUSH_S`` after the first line waiting, or now if the batch is full."""
        lines = self._lines
        lines.append(line)
        if len(lines) >= _BATCH:
            self.flush()
        elif len(lines) == 1 and self._loop is not None:
            self._loop.call_later(_FLUSH_S, self.flush)

    def _time(self) -> str:
        """``JSONFormatter``'s time of a record made now (made once a millisecond: lines come faster)."""
        now = int(time.time() * 1000)
        if now != self._now:
            second, milliseconds = divmod(now, 1000)
            if second != self._second:
                self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._now, self._when = now, f"{self._stamp}.{milliseconds:03d}Z"
        return self._when

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
