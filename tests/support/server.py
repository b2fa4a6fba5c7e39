"""Real ``gateway serve`` processes on free ports, and what the tests ask of them over HTTP.

``Server`` is the one way the tests start a gateway process: through the ``start_gateway``
fixture (stopped at the end of the test), or ``running_gateway`` where a fixture of wider scope,
a proxy suite or a benchmark owns its lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import httpx

from tests.support import ROOT
from tests.support.credentials import SECRET
from tests.support.ports import free_port
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

DEFAULTS = {
    "BETTER_AUTH_SECRET": SECRET,
    # Tests send floods of forged credentials on purpose; the rate limit has tests of its own.
    "GATEWAY_RATE_LIMIT_PER_MINUTE": "0",
    # The tests' Better Auth serves http, whose cookies have plain names (no __Secure-).
    "GATEWAY_SECURE_COOKIES": "false",
}
"""What every test gateway runs with, unless its ``env`` says otherwise."""


class Server:
    """A real ``gateway serve`` process on a free port, started at once (not yet ready).

    Its environment is this process's without any ``GATEWAY_*``, ``BETTER_AUTH*`` or
    ``DATABASE_URL``, then ``DEFAULTS``, then ``env``. Its output goes to ``log``.
    """

    def __init__(self, env: dict[str, str], workers: int = 1) -> None:
        """Start ``gateway serve`` with ``workers`` worker processes."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        inherited = ("GATEWAY_", "BETTER_AUTH", "DATABASE_URL")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
        full_env |= {"GATEWAY_PORT": str(self.port), "GATEWAY_WORKERS": str(workers)} | DEFAULTS | env
        self.log: Path = ROOT / ".pytest_cache" / f"gateway-{self.port}.log"
        self.log.parent.mkdir(exist_ok=True)
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve"], env=full_env, stdout=self._log_file, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 20) -> None:
        """Return once ``/healthz`` answers 200; stop it and raise (with its output) if it exits or never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gateway did not come up:\n{self.output()}")

    def output(self) -> str:
        """Everything the process wrote so far."""
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, SIGKILL after 15 s; the exit status (idempotent)."""
        if self.proc.poll() is not None:
            self._log_file.close()
            return self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._log_file.close()


@contextlib.contextmanager
def running_gateway(env: dict[str, str], workers: int = 1) -> Iterator[Server]:
    """A ready ``Server`` for the ``with`` block; stopped when it ends."""
    server = Server(env, workers)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


async def wait_listening(client: httpx.AsyncClient, *servers: Server) -> None:
    """Wait until each server's listener is connected (its first connect flushes the caches)."""

    async def listening(server: Server) -> bool:
        body = (await client.get(server.url + "/readyz")).json()
        return "listener" in body["ok"] or "triggers" in body["degraded"].get("listener", "")

    for server in servers:
        await eventually(functools.partial(listening, server), within=10)


async def statuses(url: str, headers: dict[str, str], n: int = 24) -> set[int]:
    """Status codes of ``n`` requests, each on a connection of its own (so they spread over workers)."""

    async def one() -> int:
        async with httpx.AsyncClient(timeout=5) as c:
            return (await c.get(url + "/validate", headers=headers)).status_code

    return set(await asyncio.gather(*(one() for _ in range(n))))


async def every_worker_listening(url: str, probes: int = 16) -> bool:
    """Whether /readyz, asked on fresh connections (spread over the workers), always lists the listener."""

    async def one() -> bool:
        async with httpx.AsyncClient(timeout=5) as c:
            return "listener" in (await c.get(url + "/readyz")).json()["ok"]

    return all(await asyncio.gather(*(one() for _ in range(probes))))
