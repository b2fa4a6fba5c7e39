"""The HTTP comparison's warm-up client against a real socket server that misbehaves as a starved one does.

Run: ``pytest benchmarks/test_http_load.py``.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING

import pytest

from benchmarks.http_load import Refused, each_once

if TYPE_CHECKING:
    from collections.abc import Callable

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"


async def serve(answer: Callable[[int, bytes], bytes | None]) -> tuple[asyncio.Server, int, list[bytes]]:
    """A server answering each request line with what ``answer(n, line)`` says: bytes, or None to hang up."""
    answered: list[bytes] = []
    count = itertools.count()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0]
                reply = answer(next(count), line)
                if reply is None:
                    return  # drop the connection without answering
                writer.write(reply)
                await writer.drain()
                if reply == OK:
                    answered.append(line)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], answered


def requests(n: int) -> list[bytes]:
    return [f"GET /validate?{i} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for i in range(n)]


async def test_dropped_connections_and_5xx_are_retried_until_every_request_is_answered() -> None:
    """Every 7th request hangs up, every 5th gets a 503: each request is still answered 200 exactly once."""

    def flaky(n: int, _line: bytes) -> bytes | None:
        if n % 7 == 3:
            return None
        if n % 5 == 1:
            return b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
        return OK

    server, port, answered = await serve(flaky)
    async with server:
        await each_once(port, requests(300), connections=8)
    assert sorted(answered) == sorted(r.split(b"\r\n", 1)[0] for r in requests(300))


@pytest.mark.parametrize(
    "reply",
    [b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnull"],
)
async def test_a_refusal_stops_the_warm_up(reply: bytes) -> None:
    """A 4xx, or get-session's null, means the row would measure refusals: raised at once, never retried."""
    server, port, _ = await serve(lambda _n, _line: reply)
    async with server:
        with pytest.raises(Refused):
            await each_once(port, requests(10), connections=2)


async def test_a_server_that_never_answers_ends_the_warm_up_after_the_stall_bound() -> None:
    """A dead server (every connection dropped) is given up on once nothing was answered for stall_s."""
    server, port, _ = await serve(lambda _n, _line: None)
    async with server:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(each_once(port, requests(10), connections=2, stall_s=0.5), 10)
