"""The real Better Auth 1.7 (npm ``better-auth`` with ``pg``), as a peer for the tests."""

from __future__ import annotations

import http.cookiejar
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.credentials import SECRET
from tests.support.ports import free_port

PEER = Path(__file__).parent.parent / "better_auth"


def stateless_client() -> httpx.AsyncClient:
    """An HTTP client that never keeps a cookie: every request states the credential it sends.

    (httpx's default jar would send Better Auth's Set-Cookie back on the next request.)
    """
    return httpx.AsyncClient(timeout=10, cookies=_NoCookies())


class _NoCookies(http.cookiejar.CookieJar):
    def extract_cookies(self, response: object, request: object) -> None:
        """Keep nothing."""


PASSWORD = "correct-horse-battery-staple"


def install_peer() -> Path:
    """The pinned Better Auth install (``npm ci`` on first use); skip, or fail, without Node.js.

    Without ``node`` the tests that need the peer skip, unless ``GATEWAY_TEST_REQUIRE_NODE`` is set
    (CI): then they fail.
    """
    if shutil.which("node") is None:
        if os.environ.get("GATEWAY_TEST_REQUIRE_NODE"):
            pytest.fail("node is required (GATEWAY_TEST_REQUIRE_NODE is set) but not installed")
        pytest.skip("Node.js is not installed: the real Better Auth cannot run here")
    if not (PEER / "node_modules" / "better-auth").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=PEER, check=True, timeout=600)
    return PEER / "node_modules"


class BetterAuth:
    """A real Better Auth server process on a free port."""

    def __init__(self, database: str, base_url_scheme: str = "http", env: dict[str, str] | None = None) -> None:
        """Start it; ``env`` adds to or replaces the defaults (``PLUGINS``, ``OPTIONS``, secrets)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.origin = f"{base_url_scheme}://127.0.0.1:{self.port}"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("BETTER_AUTH", "AUTH_SECRET"))}
        env = (
            inherited
            | {
                "DATABASE_URL": database,
                "BETTER_AUTH_SECRET": SECRET,
                "PORT": str(self.port),
                "BASE_URL": self.origin,
                "PLUGINS": "bearer,admin",
            }
            | (env or {})
        )
        env = {k: v for k, v in env.items() if v}  # an empty value removes a default
        self.proc = subprocess.Popen(
            ["node", "server.mjs"],
            cwd=PEER,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "ready":
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(
                f"Better Auth did not start: {line}{self.proc.stdout.read() if self.proc.stdout else ''}"
            )

    async def sign_up(self, client: httpx.AsyncClient, email: str) -> httpx.Response:
        r = await client.post(
            self.url + "/api/auth/sign-up/email",
            json={"email": email, "password": PASSWORD, "name": email.split("@", maxsplit=1)[0]},
            headers={"origin": self.origin},
        )
        r.raise_for_status()
        return r

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()
