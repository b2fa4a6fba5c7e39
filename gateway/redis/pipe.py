"""One pipelined connection to a Redis server: commands written as they come, replies matched in order.

redis-py's asyncio client checks a connection out of its pool for every command and parses each
reply through several layers: ~50 µs of Python per command here, ten times a pipelined one
(``docs/performance.md``). On a ``Pipe`` a command is one ``transport.write``, hiredis parses
what arrives, and each reply goes to the oldest waiter's callback: no task, no lock, no pool.

A pipe that fails in any way is finished: a reply later than the budget (a hung server, or a dead
link that the kernel has not noticed), the connection closed, bytes hiredis cannot parse, a reply
nobody asked for. Its waiters all get the failure (the replies still to come could no longer be
matched), its socket is closed, and its owner opens another.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ResponseError

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis.asyncio import Redis
    from redis.asyncio.connection import Connection

# A command's arguments in RESP (hiredis's stub types it for one argument only).
pack = cast("Callable[[tuple[str | bytes | int, ...]], bytes]", hiredis.pack_command)


class PipeFailed(ConnectionError):
    """The pipe is finished: lost, out of step, or a reply later than the budget."""


class Pipe(asyncio.Protocol):
    """The protocol of one connection; ``send`` a packed command with a callback for its reply.

    ``timeout_s`` bounds every reply: past it the pipe fails (``PipeFailed``) with every waiter.
    """

    def __init__(self, timeout_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout_s = timeout_s
        # Error replies come back as values (ResponseError), not raised: they end one command, not the pipe.
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._waiting: collections.deque[tuple[float, Callable[[Any], None]]] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.failure: PipeFailed | None = None  # why the pipe is finished, once it is

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # noqa: D102  (asyncio's)
        self._transport = cast("asyncio.Transport", transport)  # a stream: TCP, Unix or TLS

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102  (asyncio's)
        self._transport = None
        self._fail(f"connection lost ({type(exc).__name__ if exc else 'closed by the server'})")

    def data_received(self, data: bytes) -> None:  # noqa: D102  (asyncio's)
        reader, waiting = self._reader, self._waiting
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                if not waiting:
                    self._fail("a reply nobody asked for")
                    return
                waiting.popleft()[1](reply)
        except hiredis.ProtocolError:
            self._fail("a reply that is not RESP")

    def send(self, command: bytes, callback: Callable[[Any], None]) -> None:
        """Write a packed command (``pack``); ``callback`` gets its reply, or the pipe's failure."""
        if self.failure is not None or self._transport is None:
            callback(self.failure or PipeFailed("not connected"))
            return
        self._transport.write(command)
        deadline = self._loop.time() + self._timeout_s
        self._waiting.append((deadline, callback))
        if self._timer is None:  # one timer for the oldest waiter, not one per command
            self._timer = self._loop.call_at(deadline, self._expire)

    def call(self, *args: str | bytes | int) -> asyncio.Future[Any]:
        """Send one command; its reply as a future (an error reply or a failure raised)."""
        future: asyncio.Future[Any] = self._loop.create_future()

        def reply(value: Any) -> None:
            if not future.done():
                if isinstance(value, BaseException):
                    future.set_exception(value)
                else:
                    future.set_result(value)

        self.send(pack(args), reply)
        return future

    def close(self) -> None:
        """Close the connection; the waiters get ``PipeFailed``."""
        self._fail("closed")

    def _expire(self) -> None:
        self._timer = None
        if not self._waiting:
            return
        deadline = self._waiting[0][0]
        # Both asyncio and uvloop read their sockets between a busy stretch of callbacks and the
        # next timers: a reply that came in time has been handed over before this runs.
        if self._loop.time() >= deadline - 0.001:  # a timer may fire up to the clock's resolution early
            self._fail(f"no reply within {self._timeout_s:g}s")
        else:
            self._timer = self._loop.call_at(deadline, self._expire)

    def _fail(self, why: str) -> None:
        if self.failure is None:
            self.failure = PipeFailed(f"Redis pipe: {why}")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            transport, self._transport = self._transport, None
            transport.abort()
        waiting, self._waiting = self._waiting, collections.deque()
        for _, callback in waiting:
            callback(self.failure)


async def open_pipe(client: Redis, timeout_s: float) -> Pipe:
    """Connect a ``Pipe`` to the server ``client`` talks to (Sentinel's master for a Sentinel-made one).

    The client's own settings say where and how: host and port or Unix socket, TLS, user,
    password and database. Bounded by ``timeout_s`` in all (connect, TLS and handshake).

    Raises:
        OSError, TimeoutError, redis.RedisError: the server could not be reached, or refused us.
    """
    loop = asyncio.get_running_loop()
    pool = client.connection_pool
    # A connection object for its settings only: it is never connected.
    conn = cast("Connection", pool.make_connection())  # type: ignore[no-untyped-call]
    async with asyncio.timeout(timeout_s):
        if isinstance(conn, UnixDomainSocketConnection):
            _, pipe = await loop.create_unix_connection(lambda: Pipe(timeout_s), conn.path)
        else:
            host, port = conn.host, conn.port
            if isinstance(pool, SentinelConnectionPool):
                host, port = await pool.get_master_address()  # type: ignore[no-untyped-call]
            tls = conn.ssl_context.get() if isinstance(conn, SSLConnection) else None
            _, pipe = await loop.create_connection(lambda: Pipe(timeout_s), host, port, ssl=tls)
        try:
            await _handshake(pipe, conn.username, conn.password, int(conn.db))
        except BaseException:
            pipe.close()
            raise
    return pipe


async def _handshake(pipe: Pipe, username: str | None, password: str | None, db: int) -> None:
    """Log in and select the database (RESP2: the replies the hit path parses are plain arrays)."""
    steps = []
    if password:
        steps.append(pipe.call("AUTH", *([username] if username else []), password))
    if db:
        steps.append(pipe.call("SELECT", db))
    if steps:  # nothing to say otherwise: the first command is the first round trip, as with redis-py
        await asyncio.gather(*steps)  # sent together; replies come in order, so the first refusal is the error
