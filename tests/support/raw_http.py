"""HTTP/1.1 requests sent byte for byte, each on a connection of its own.

For what httpx would normalise (a ``..`` in the target, a header's case, order or repetition), would
refuse to send (a ``Host`` with a ``?``), or would be slow at: a flood of fresh connections, where
its pools spent seconds a wave of their own. Nothing is added to the request: a test that wants
``Host``, ``Content-Length`` or ``Connection: close`` says so, because the proxy under test sees
exactly these bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Iterable


class Reply(NamedTuple):
    """The status (0: the peer closed without one) and the response head's lines after the status line."""

    status: int
    fields: list[str]

    def header(self, name: str) -> str | None:
        """The first value of the header ``name`` (any case), or ``None``."""
        prefix = name.lower() + ":"
        return next((f[len(prefix) :].strip() for f in self.fields if f.lower().startswith(prefix)), None)


def encoded(method: str, target: str, headers: Iterable[tuple[str, str]] = (), *, preamble: str = "") -> bytes:
    """The request's bytes: ``preamble`` (a PROXY protocol line, say), the request line, ``headers`` as given."""
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers), "", ""]
    return (preamble + "\r\n".join(lines)).encode("latin-1")


async def send(
    port: int,
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]] = (),
    *,
    preamble: str = "",
    timeout_s: float = 10,
    whole: bool = True,
) -> Reply:
    """Send the request to 127.0.0.1:``port`` and read its reply.

    ``whole``: read until the peer closes (send ``Connection: close``), so the exchange is over
    when this returns; otherwise only the status line is read, and the connection closed.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(encoded(method, target, headers, preamble=preamble))
        status_line = await asyncio.wait_for(reader.readline(), timeout_s)
        rest = await asyncio.wait_for(reader.read(), timeout_s) if whole else b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):  # a peer that reset: what it sent is read already
            await writer.wait_closed()
    parts = status_line.split()
    fields = rest.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n") if rest else []
    return Reply(int(parts[1]) if len(parts) > 1 else 0, fields)
