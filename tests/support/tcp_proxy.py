"""A TCP proxy the tests control, to cut a live link to Postgres the way a network does."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qs, urlsplit, urlunsplit


class Proxy:
    """Forwards 127.0.0.1:<port> to a Postgres given by its DSN (TCP or Unix socket)."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        parts = urlsplit(dsn)
        socket_dir = parse_qs(parts.query).get("host", [""])[0]
        self._unix = f"{socket_dir}/.s.PGSQL.{parts.port or 5432}" if socket_dir.startswith("/") else None
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.open = True
        self.stalled = False  # True: connections stay up but carry nothing (a black hole)
        self.stall_on: bytes | None = None  # a client sending these bytes stalls every link, them unsent
        self.sent = bytearray()  # what the clients sent to Postgres, when ``recording``
        self.recording = False

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def dsn(self) -> str:
        """The DSN that reaches Postgres through this proxy."""
        parts = urlsplit(self._dsn)
        user = parts.username or "postgres"
        return urlunsplit(("postgresql", f"{user}@127.0.0.1:{self.port}", parts.path, "", ""))

    def retarget(self, dsn: str) -> None:
        """Send new connections to another Postgres (TCP), as a load balancer or a moved DNS name does."""
        parts = urlsplit(dsn)
        self._unix, self._target = None, (parts.hostname or "127.0.0.1", parts.port or 5432)

    def cut(self) -> None:
        """Drop every live connection and refuse new ones, as a dead link would."""
        self.open = False
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    def restore(self) -> None:
        self.open = True

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.transport.abort()
            return
        try:
            if self._unix:
                up_reader, up_writer = await asyncio.open_unix_connection(self._unix)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._links |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer, record=True), self._pipe(up_reader, writer))
        self._links -= {writer, up_writer}

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, record: bool = False) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if record and self.recording:
                    self.sent += data
                if record and self.stall_on is not None and self.stall_on in data:
                    self.stalled = True  # at once: between two messages of one client, exactly
                while self.stalled:  # noqa: ASYNC110  (a test double polling a flag is clearest)
                    await asyncio.sleep(0.01)
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
