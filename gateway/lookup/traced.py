"""The ports with spans around the lookups that leave the process (``gateway.telemetry.tracing``).

Wired in only when tracing is on (``gateway.resources``): otherwise the tiers hold the adapters
themselves and nothing here runs. Only reads are traced (a shared-cache ``get``, a source's
``fetch_many``): the L1 never is, and writes and revocations run in the background.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from gateway.telemetry.tracing import open_tracing

if TYPE_CHECKING:
    from collections.abc import Awaitable, Mapping, Sequence
    from contextlib import AsyncExitStack

    from gateway.core.sessions import Session
    from gateway.lookup.protocols import SessionSource, SharedCache, SharedRead
    from gateway.telemetry.tracing import Tracing


class TracedSource:
    """A ``SessionSource`` whose every bulk read is a span (``postgres lookup``)."""

    def __init__(self, source: SessionSource, tracing: Tracing, system: str = "postgresql") -> None:
        self._source = source
        self._tracing = tracing
        self._system = system

    async def fetch_many(self, tokens: Sequence[str]) -> Mapping[str, Session]:
        """The source's ``fetch_many``, in a span saying how many tokens it asked for (never which)."""
        name = "postgres lookup" if self._system == "postgresql" else "secondary storage lookup"
        attributes: dict[str, str | int] = {"db.system.name": self._system, "gateway.batch_size": len(tokens)}
        with self._tracing.span(name, attributes):
            return await self._source.fetch_many(tokens)


class TracedShared:
    """A ``SharedCache`` whose reads are spans (``redis lookup``); the rest passes straight through."""

    def __init__(self, shared: SharedCache, tracing: Tracing) -> None:
        self._shared = shared
        self._tracing = tracing

    async def get(self, token_digest: str) -> SharedRead | None:
        """The shared cache's ``get``, in a span; an unavailable cache (``None``) marks it failed."""
        with self._tracing.span("redis lookup", {"db.system.name": "redis", "db.operation.name": "MGET"}) as span:
            found = await self._shared.get(token_digest)
            if found is None:
                self._tracing.failed(span, "unavailable")
            return found

    def put(self, token_digest: str, session: Session, generation: int) -> None:
        """Passed through."""
        self._shared.put(token_digest, session, generation)

    def revoke(self, token_digests: Sequence[str]) -> Awaitable[object]:
        """Passed through."""
        return self._shared.revoke(token_digests)

    def revoke_users(self, user_ids: Sequence[str]) -> Awaitable[object]:
        """Passed through."""
        return self._shared.revoke_users(user_ids)

    def bump_generation(self) -> Awaitable[bool]:
        """Passed through."""
        return self._shared.bump_generation()


def traced(
    stack: AsyncExitStack, environ: Mapping[str, str], source: SessionSource, shared: SharedCache | None, system: str
) -> tuple[SessionSource, SharedCache | None]:
    """The ports in spans if the ``OTEL_*`` variables in ``environ`` turn tracing on, else as they are.

    ``system``: the source's (``postgresql``, or ``redis`` for secondary storage). The tracer is
    shut down when ``stack`` closes (what is left exported), after whatever it opens later.

    Raises:
        ConfigError: tracing is asked for but can't start (``tracing.problems``).
    """
    tracing = open_tracing(environ)
    if tracing is None:
        return source, shared
    stack.push_async_callback(asyncio.to_thread, tracing.shutdown)
    return TracedSource(source, tracing, system), None if shared is None else TracedShared(shared, tracing)
