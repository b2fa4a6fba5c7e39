"""The revocations on their way to the shared cache, sent in batches.

Revocations heard in one loop tick go out together, one batch at a time, by one task: a flood of
notifications is a few requests to the shared cache (each well inside its time budget), not a
task or a request each.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.lookup.protocols import SharedCache

CHUNK = 500  # revocations per request to the shared cache: well inside its time budget


class Outbox:
    """Queues token and user revocations for the shared cache; one task sends them, in chunks.

    Args:
        shared: the shared cache; its ``revoke`` and ``revoke_users`` never raise.
        chunk: the most revocations of one kind per request.
    """

    __slots__ = ("_chunk", "_sending", "_shared", "_tokens", "_users")

    def __init__(self, shared: SharedCache, chunk: int = CHUNK) -> None:
        self._shared = shared
        self._chunk = chunk
        self._tokens: list[str] = []
        self._users: list[str] = []
        self._sending: asyncio.Task[None] | None = None

    def token(self, digest: str) -> asyncio.Task[None]:
        """Queue a token's revocation; return the task sending the queue (it ends once all is sent)."""
        self._tokens.append(digest)
        return self._send()

    def user(self, user_id: str) -> asyncio.Task[None]:
        """Queue a user's revocation; return the task sending the queue."""
        self._users.append(user_id)
        return self._send()

    def _send(self) -> asyncio.Task[None]:
        if self._sending is None or self._sending.done():
            # Its first step runs after the callbacks already scheduled: the rest of this tick's
            # notifications join the first batch.
            self._sending = asyncio.ensure_future(self._drain())
        return self._sending

    async def _drain(self) -> None:
        tokens, users, n = self._tokens, self._users, self._chunk
        while tokens or users:
            if tokens:
                batch = tokens[:n]
                del tokens[:n]
                await self._shared.revoke(batch)
            if users:
                batch = users[:n]
                del users[:n]
                await self._shared.revoke_users(batch)
