"""``gateway demo``: with no DATABASE_URL it brings up an embedded Postgres and a working session."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import httpx
import psutil

from tests.support.ports import free_port

if TYPE_CHECKING:
    from pathlib import Path


def test_demo_curl_works_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    """The printed curl gets 200, a forged cookie 401, and Ctrl-C stops the gateway and its Postgres."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "BETTER_AUTH", "DATABASE_URL"))}
    env["XDG_DATA_HOME"] = str(tmp_path)  # the per-user data folder, kept out of the real one
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "gateway", "demo", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("curl "), line
        args = shlex.split(line)
        cookie = args[args.index("-H") + 1].removeprefix("Cookie: ")
        url = args[-1]
        ok = _retry_get(url, cookie)
        assert ok.status_code == 200
        assert ok.headers["x-auth-request-email"] == "demo@example.com"
        forged = re.sub(r"\.[^.]+$", ".AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA%3D", cookie)
        assert httpx.get(url, headers={"cookie": forged}).status_code == 401
        postgres = [
            p for p in psutil.process_iter(["name", "cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])
        ]
        assert postgres, "the embedded Postgres should be running"
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
        if proc.stdout:
            proc.stdout.close()
    assert code == 0
    psutil.wait_procs(postgres, timeout=10)
    assert not any(p.is_running() for p in postgres), "Ctrl-C should stop the embedded Postgres"


def _retry_get(url: str, cookie: str) -> httpx.Response:
    import time  # noqa: PLC0415

    deadline = time.monotonic() + 30
    while True:
        try:
            return httpx.get(url, headers={"cookie": cookie}, timeout=5)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
