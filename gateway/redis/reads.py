"""The shared tier's hit path: the keys asked for in one loop tick, read in one ``MGET`` with the generation.

- ``PipelinedReads`` (one server, or Sentinel's master): the ``MGET`` commands go out on one
  ``pipe.Pipe``, as many in flight as ticks have asked; no task, no pool, hiredis parsing. The
  pipe is opened on first use, and again (by the next read or ``ping``) once it failed. The
  tier's writes (``execute``) share it: a pool of a few connections, each held for a whole
  pipeline, is what made writes under load wait past their budget.
- ``ClusterReads`` (Redis Cluster, whose keys spread over nodes): redis-py's ``mget_nonatomic``,
  batched per tick (``lookup.batching``).

Both hand what they read to ``decode(keys, values)`` (the tier checks the generation and opens the
values) and a failure to ``failed(error)`` (the tier degrades); the keys of a failed read resolve
to ``None``, never to an error.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import TYPE_CHECKING, Any

from gateway.core.errors import CacheUnavailable
from gateway.lookup.batching import Batcher
from gateway.redis.client import answering, describe
from gateway.redis.pipe import open_pipe, pack

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    from gateway.lookup.protocols import SharedRead
    from gateway.redis.pipe import Pipe

    Decode = Callable[[Sequence[str], list[Any]], Sequence[SharedRead] | None]

log = logging.getLogger("gateway.redis")


def _decoded(decode: Decode, keys: Sequence[str], reply: list[Any]) -> Sequence[SharedRead] | None:
    """``decode(keys, reply)``; one that raises (a bug, a value no one foresaw) is logged, and a miss for each key.

    Raised out of a pipe's callback it stranded that ``MGET``'s reads and failed the pipe; out of
    a batch, it was every waiter's exception.
    """
    try:
        return decode(keys, reply)
    except Exception:
        log.exception("an MGET's reply could not be decoded: its reads are misses")
        return None


class PipelinedReads:
    """Reads of one server over one pipelined connection (``get``, ``ping``, ``close``)."""

    def __init__(  # noqa: PLR0913  (what the tier hands over)
        self,
        client: Redis,
        generation_key: str,
        *,
        timeout_s: float,
        max_size: int,
        decode: Decode,
        failed: Callable[[CacheUnavailable], None],
        observe: Callable[[float], None],
    ) -> None:
        self._client = client
        self._head = ("MGET", generation_key)
        self._timeout_s, self._max = timeout_s, max_size
        self._decode, self._failed, self._observe = decode, failed, observe
        self._pipe: Pipe | None = None
        self._connecting: asyncio.Future[Pipe] | None = None
        self._keys: list[str] = []  # asked for this tick, and their futures
        self._futures: list[asyncio.Future[SharedRead | None]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, key: str) -> asyncio.Future[SharedRead | None]:
        """The value at ``key`` with the generation read, sent with the rest of this tick's keys."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SharedRead | None] = loop.create_future()
        self._keys.append(key)
        self._futures.append(future)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)  # after the rest of this tick has asked too
        return future

    async def ping(self) -> None:
        """Return once the server answers ``PING`` on the pipe (opening one if needed).

        Raises:
            CacheUnavailable: the pipe could not be opened, or failed (the cause chained).
        """
        async with answering(None, CacheUnavailable):
            await (await self._connection()).call("PING")

    async def execute(self, commands: Sequence[tuple[str | bytes | int, ...]]) -> list[Any]:
        """Send ``commands`` on the pipe (opening one if needed); their replies, in order.

        Raises:
            CacheUnavailable: the pipe could not be opened or failed, or a command got an error reply.
        """
        async with answering(None, CacheUnavailable):
            pipe = await self._connection()
            return await asyncio.gather(*(pipe.call(*command) for command in commands))

    async def close(self) -> None:
        """Close the pipe; reads waiting resolve to ``None``."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pipe is not None:
            self._pipe.close()
        self._settle(self._take(), None)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._keys:  # sent already (by a reconnection): no connection to open for them
            return
        pipe = self._pipe
        if pipe is None or pipe.failure is not None:
            self._pipe = None
            # Else a reconnection is on its way, and flushes once done. One that has just ended is
            # still in the set until its done-callback runs: a flush in between would strand the
            # keys asked meanwhile (nothing would flush them), so only a running one counts.
            if all(task.done() for task in self._tasks):
                task = asyncio.ensure_future(self._reconnect())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return
        self._send(pipe)

    def _send(self, pipe: Pipe) -> None:
        """Send the reads asked so far on ``pipe``; a failed one answers them with its failure at once."""
        keys, futures = self._take()
        head, size, started = self._head, self._max, time.perf_counter()
        for i in range(0, len(keys), size):
            batch = keys[i : i + size]
            pipe.send(pack((*head, *batch)), functools.partial(self._reply, batch, futures[i : i + size], started))

    def _take(self) -> tuple[list[str], list[asyncio.Future[SharedRead | None]]]:
        taken = self._keys, self._futures
        self._keys, self._futures = [], []
        return taken

    def _reply(
        self, keys: list[str], futures: list[asyncio.Future[SharedRead | None]], started: float, reply: Any
    ) -> None:
        self._observe(time.perf_counter() - started)
        if isinstance(reply, list) and len(reply) == len(keys) + 1:
            self._settle((keys, futures), _decoded(self._decode, keys, reply))
            return
        if isinstance(reply, BaseException):  # the pipe failed, or an error reply
            error = CacheUnavailable(describe(reply))
            error.__cause__ = reply
        else:
            error = CacheUnavailable(f"MGET answered {type(reply).__name__}")
        self._failed(error)
        self._settle((keys, futures), None)

    @staticmethod
    def _settle(
        asked: tuple[list[str], list[asyncio.Future[SharedRead | None]]], found: Sequence[SharedRead] | None
    ) -> None:
        futures = asked[1]
        if found is None:
            for future in futures:
                if not future.done():  # its waiter may have gone
                    future.set_result(None)
            return
        for future, value in zip(futures, found, strict=True):
            if not future.done():
                future.set_result(value)

    async def _reconnect(self) -> None:
        """Open a pipe for the reads waiting, then send them; if it can't be opened (or is lost first), misses."""
        try:
            pipe = await self._connection()
        except Exception as exc:  # CacheUnavailable; anything else too: its reads must not wait for ever
            if not isinstance(exc, CacheUnavailable):
                log.exception("connecting to Redis failed unforeseen: its reads are misses")
            self._failed(exc if isinstance(exc, CacheUnavailable) else CacheUnavailable(describe(exc)))
            self._settle(self._take(), None)
            return
        # On this pipe even if it was lost since it opened (a link that accepts then drops): a
        # flush would find it failed and defer to a reconnection, this one, and strand the reads.
        self._send(pipe)

    async def _connection(self) -> Pipe:
        """The open pipe, or a new one (one attempt at a time, shared by whoever asks meanwhile)."""
        pipe = self._pipe
        if pipe is not None and pipe.failure is None:
            return pipe
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(self._opened)
        return await asyncio.shield(self._connecting)

    async def _open(self) -> Pipe:
        async with answering(None, CacheUnavailable, "connecting"):  # open_pipe applies the budget
            return await open_pipe(self._client, self._timeout_s)

    def _opened(self, attempt: asyncio.Future[Pipe]) -> None:
        self._connecting = None
        if not attempt.cancelled() and attempt.exception() is None:
            self._pipe = attempt.result()


class ClusterReads:
    """Reads of a Redis Cluster through redis-py, batched per tick (same ``get``, ``ping``, ``close``)."""

    def __init__(  # noqa: PLR0913  (what the tier hands over)
        self,
        client: RedisCluster,
        generation_key: str,
        *,
        timeout_s: float,
        max_size: int,
        decode: Decode,
        failed: Callable[[CacheUnavailable], None],
        observe: Callable[[float], None],
    ) -> None:
        self._client, self._generation_key, self._timeout_s = client, generation_key, timeout_s
        self._decode, self._failed, self._observe = decode, failed, observe
        self._reads: Batcher[str, SharedRead] = Batcher(self._read_many, max_size)

    def get(self, key: str) -> asyncio.Future[SharedRead | None]:
        """The value at ``key`` with the generation read, sent with the rest of this tick's keys."""
        return self._reads.get(key)

    async def ping(self) -> None:
        """Return once the cluster answers ``PING``.

        Raises:
            CacheUnavailable: it did not (the cause chained).
        """
        async with answering(None, CacheUnavailable):
            await self._client.ping()

    async def execute(self, commands: Sequence[tuple[str | bytes | int, ...]]) -> list[Any]:
        """Send ``commands`` in one redis-py pipeline; their replies, in order.

        Raises:
            CacheUnavailable: the cluster failed them (the cause chained).
        """
        async with answering(None, CacheUnavailable):
            pipe = self._client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute()

    async def close(self) -> None:
        """Nothing of its own to close (the client is the tier's)."""

    async def _read_many(self, keys: Sequence[str]) -> Mapping[str, SharedRead]:
        started = time.perf_counter()
        try:
            async with answering(self._timeout_s, CacheUnavailable):
                raw = await self._client.mget_nonatomic([self._generation_key, *keys])
        except CacheUnavailable as exc:
            self._failed(exc)
            return {}
        finally:
            self._observe(time.perf_counter() - started)
        found = _decoded(self._decode, keys, raw)
        return {} if found is None else dict(zip(keys, found, strict=True))
