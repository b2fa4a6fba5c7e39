"""Tests of ``gateway.config``; what several of its modules share."""

from __future__ import annotations

import subprocess
import sys

BASE = {"DATABASE_URL": "postgresql://gw:hunter2@db/app", "BETTER_AUTH_SECRET": "x" * 32}


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``python -m gateway`` with exactly ``env``; its exit code and output, never raising on failure."""
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "gateway", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
