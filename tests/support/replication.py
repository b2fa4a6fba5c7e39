"""A Postgres primary and a streaming replica, started by the tests (``initdb``, ``pg_basebackup``).

Replication lag is injected by pausing the replica's replay (``pg_wal_replay_pause()``): the
replica keeps receiving WAL but shows nothing new until ``resume``. Run as root (CI), the servers
run as the ``postgres`` user (``runuser``), as Postgres refuses to run as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")
TOOLS = ("initdb", "pg_ctl", "pg_basebackup")


def postgres_bin() -> Path | None:
    """The folder with ``initdb``, ``pg_ctl`` and ``pg_basebackup``, or ``None`` if there is none."""
    for folder in BIN_DIRS:
        if all((Path(folder) / tool).exists() for tool in TOOLS):
            return Path(folder)
    found = shutil.which("pg_basebackup")
    return Path(found).parent if found and all(shutil.which(t) for t in TOOLS) else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replication:
    """A primary and one streaming replica on free ports, trust auth on 127.0.0.1, removed by ``stop``."""

    def __init__(self, max_connections: int = 200) -> None:
        folder = postgres_bin()
        if folder is None:
            msg = "initdb, pg_ctl and pg_basebackup are not installed"
            raise FileNotFoundError(msg)
        self._bin = folder
        self.root = Path(tempfile.mkdtemp(prefix="gateway-replication-"))
        self.root.chmod(0o755)
        self.primary_port, self.replica_port = _free_port(), _free_port()
        self._primary, self._replica = self.root / "primary", self.root / "replica"
        self._started: list[Path] = []
        self._as_owner = os.geteuid() == 0
        if self._as_owner:
            shutil.chown(self.root, "postgres", "postgres")
        try:
            self._run("initdb", "-D", str(self._primary), "-U", "postgres", "--auth=trust", "-E", "UTF8")
            conf = (
                f"port = {self.primary_port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n"
                f"max_connections = {max_connections}\nwal_level = replica\nmax_wal_senders = 4\n"
                "fsync = off\nfull_page_writes = off\n"
            )
            self._append(self._primary / "postgresql.conf", conf)
            self._append(self._primary / "pg_hba.conf", "host replication postgres 127.0.0.1/32 trust\n")
            self._start(self._primary)
            self._run(
                "pg_basebackup",
                *("-h", "127.0.0.1", "-p", str(self.primary_port), "-U", "postgres"),
                *("-D", str(self._replica), "-R", "-X", "stream"),
            )
            self._append(self._replica / "postgresql.conf", f"port = {self.replica_port}\nhot_standby = on\n")
            self._start(self._replica)
        except BaseException:
            self.stop()
            raise

    def add_replica(self) -> int:
        """Start another streaming replica of the primary; return its port."""
        port, data = _free_port(), self.root / f"replica{len(self._started)}"
        self._run(
            "pg_basebackup",
            *("-h", "127.0.0.1", "-p", str(self.primary_port), "-U", "postgres"),
            *("-D", str(data), "-R", "-X", "stream", "-c", "fast"),
        )
        self._append(data / "postgresql.conf", f"port = {port}\nhot_standby = on\n")
        self._start(data)
        return port

    def dsn(self, *, replica: bool = False, database: str = "postgres") -> str:
        """A DSN for the primary (or the replica)."""
        port = self.replica_port if replica else self.primary_port
        return f"postgresql://postgres@127.0.0.1:{port}/{database}"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self._bin / tool), *args]
        if self._as_owner:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)  # noqa: S603  (our own args)

    def _append(self, path: Path, text: str) -> None:
        with path.open("a") as f:
            f.write(text)

    def _start(self, data: Path) -> None:
        self._run("pg_ctl", "-D", str(data), "-l", str(data / "server.log"), "-w", "-t", "60", "start")
        self._started.append(data)

    def stop(self) -> None:
        """Stop both servers (fast) and remove their files."""
        for data in reversed(self._started):
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        self._started.clear()
        shutil.rmtree(self.root, ignore_errors=True)


async def caught_up(primary: asyncpg.Connection, replica: asyncpg.Connection, within: float = 10.0) -> None:
    """Wait until the replica has replayed everything the primary has written so far.

    The insert position can lie past the end of the last record (after a WAL switch, as a base
    backup's end makes, it is the next segment's first record, not yet written): the replica then
    shows it only once another record comes, which an idle primary writes every 15 s (its
    standby snapshot). So while waiting, the primary is given a record now and then.
    """
    loop = asyncio.get_running_loop()
    target = await primary.fetchval("select pg_current_wal_insert_lsn()")
    deadline, nudge = loop.time() + within, loop.time() + 0.2
    while not await replica.fetchval("select pg_last_wal_replay_lsn() >= $1", target):
        if loop.time() > deadline:
            msg = "the replica did not catch up"
            raise AssertionError(msg)
        if loop.time() > nudge:  # a transaction with an ID writes its commit record
            await primary.execute("select pg_catalog.txid_current()")
            nudge = loop.time() + 0.2
        await asyncio.sleep(0.01)


async def pause_replay(replica: asyncpg.Connection) -> None:
    """Lag from now on: the replica receives WAL but replays (shows) nothing new until ``resume_replay``."""
    await replica.execute("select pg_wal_replay_pause()")
    while await replica.fetchval("select pg_get_wal_replay_pause_state()") != "paused":  # noqa: ASYNC110  (Postgres has no event for it)
        await asyncio.sleep(0.01)


async def resume_replay(replica: asyncpg.Connection) -> None:
    """End the injected lag."""
    await replica.execute("select pg_wal_replay_resume()")
