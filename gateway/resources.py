"""Everything a worker opens, opened in one place in order and closed in reverse."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, NamedTuple

from gateway.decision import Decider
from gateway.errors import BackendUnavailable
from gateway.lru import LRU
from gateway.schema import mapping_from
from gateway.store import Store
from gateway.tiers import Entry, Tiers
from gateway.tokens import Verifier

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from gateway.config import Settings

log = logging.getLogger("gateway")


class Resources(NamedTuple):
    """The wired-up parts one worker serves from."""

    store: Store
    tiers: Tiers
    decider: Decider

    async def pings(self) -> tuple[list[str], dict[str, str]]:
        """Ping every dependency: the names that answered, and the failing ones with why."""
        try:
            await self.store.ping()
        except BackendUnavailable as exc:
            return [], {"postgres": str(exc)}
        return ["postgres"], {}


@contextlib.asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    """Open the pool and build the tiers; close them in reverse order on exit."""
    store = Store(settings, mapping_from(settings))
    await store.open()
    try:
        with contextlib.suppress(BackendUnavailable):
            await store.ping()  # read the catalogue now if Postgres is there; else on first use
        verifier = Verifier(
            settings.secret.reveal(),
            accept_unsigned=settings.accept_unsigned_bearer,
            legacy_ids=settings.token_field == "id",  # noqa: S105  (a column name)
        )
        tiers = Tiers(LRU[Entry](settings.l1_max_entries), store, settings.l1_ttl_s)
        yield Resources(store, tiers, Decider(verifier, tiers))
    finally:
        await store.close()
