"""Benchmarks reuse the tests' real services: Postgres and Redis, never mocks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import uvloop

from tests.conftest import database, postgres_admin_dsn, redis_server, redis_url  # noqa: F401  (fixtures)

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Iterator


@pytest.fixture(scope="session")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A uvloop event loop, as the gateway's workers run on, driven by the benchmark rounds."""
    event_loop = uvloop.new_event_loop()
    yield event_loop
    event_loop.close()
