"""The gateway's resources opened in-process, on the test's database: the decision core without HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from gateway.config import load_settings
from gateway.resources import Resources, open_resources
from tests.support.credentials import SECRET

Open = Callable[..., AbstractAsyncContextManager[Resources]]
"""What the test modules' ``gateway`` fixtures return: ``open_gateway`` with their defaults."""


def open_gateway(
    dsn: str, *, redis_url: str | None = None, clock: Callable[[], float] = time.time, **overrides: Any
) -> AbstractAsyncContextManager[Resources]:
    """``open_resources`` as ``gateway serve`` runs it, on ``dsn`` and signing with ``SECRET``.

    ``redis_url`` adds the shared tier (give a ``redis_prefix`` of the test's own with it), ``clock``
    replaces the wall clock (TTLs pass without sleeping), ``overrides`` are settings by field name.
    Each test module binds its own defaults with ``functools.partial`` (say ``listen=False`` where
    the listener's start-up flush would disturb what the module checks).
    """
    env = {"DATABASE_URL": dsn, "BETTER_AUTH_SECRET": SECRET}
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return open_resources(load_settings(env, overrides), clock)
