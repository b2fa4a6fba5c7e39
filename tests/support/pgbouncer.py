"""A real PgBouncer (the Debian package's binary) the tests start in front of their Postgres."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

BINARIES = ("/usr/sbin/pgbouncer", "pgbouncer")


def pgbouncer_binary() -> str | None:
    """The PgBouncer executable, or ``None`` if it is not installed."""
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as(host: str) -> str:
    """The user PgBouncer drops to as root: ``postgres``, or the owner of a socket directory it must enter.

    The embedded Postgres (``pgserver``) runs as a user of its own and keeps its socket in a
    directory only that user may enter.
    """
    if host.startswith("/"):
        owner = pwd.getpwuid(Path(host).stat().st_uid).pw_name
        if owner != "root":
            return owner
    return "postgres"


class PgBouncer:
    """PgBouncer on a free port, pooling every database of the Postgres ``dsn`` points at (trust auth).

    Run as root (CI), it drops to another user (``-u``: ``_run_as``), as PgBouncer refuses to run
    as root; its files live in a directory of its own that user can read.
    """

    def __init__(
        self, dsn: str, *, mode: str = "transaction", pool_size: int = 20, ignore: tuple[str, ...] = ()
    ) -> None:
        binary = pgbouncer_binary()
        if binary is None:
            msg = "pgbouncer is not installed"
            raise FileNotFoundError(msg)
        parts = urlsplit(dsn)
        socket_dir = parse_qs(parts.query).get("host", [""])[0]
        host = socket_dir if socket_dir.startswith("/") else parts.hostname or "127.0.0.1"
        self.port = _free_port()
        self._dsn = dsn
        self.directory = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
        self.directory.chmod(0o755)
        (self.directory / "users.txt").write_text('"postgres" ""\n')
        ini = self.directory / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host={host} port={parts.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.directory / 'users.txt'}\n"
            f"pool_mode = {mode}\ndefault_pool_size = {pool_size}\nmax_client_conn = 2000\n"
            + (f"ignore_startup_parameters = {', '.join(ignore)}\n" if ignore else "")
        )
        for path in self.directory.iterdir():
            path.chmod(0o644)
        self.log = self.directory / "pgbouncer.log"
        args = [binary, str(ini)]
        if os.geteuid() == 0:
            args[1:1] = ["-u", _run_as(host)]
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(args, stdout=self._log_file, stderr=subprocess.STDOUT)  # noqa: S603  (our own args)
        self._wait_listening()

    def _wait_listening(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                msg = f"pgbouncer exited with {self.proc.returncode}:\n{self.log.read_text(errors='replace')}"
                raise RuntimeError(msg)
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.02)
            else:
                return
        self.stop()
        raise RuntimeError("pgbouncer did not come up:\n" + self.log.read_text(errors="replace"))

    def dsn(self, database: str | None = None) -> str:
        """A DSN reaching ``database`` (default: the one of the DSN it was made with) through PgBouncer."""
        parts = urlsplit(self._dsn)
        path = "/" + database if database else parts.path
        return urlunsplit(("postgresql", f"{parts.username or 'postgres'}@127.0.0.1:{self.port}", path, "", ""))

    def stop(self) -> None:
        """Stop PgBouncer and remove its files."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        shutil.rmtree(self.directory, ignore_errors=True)
