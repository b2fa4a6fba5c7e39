"""``gateway serve``: the settings (or every problem with them), then granian with the workers.

Also what ``gateway demo`` serves with, once it has a database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import Settings, cookie_note, describe, load_settings
from gateway.core.errors import ConfigError
from gateway.http.policy import rules_file_problems
from gateway.postgres.installer import startup_triggers
from gateway.postgres.pooler import require_direct
from gateway.telemetry.logs import configure_logging
from gateway.telemetry.tracing import problems as tracing_problems

if TYPE_CHECKING:
    from collections.abc import Mapping

EXIT_CONFIG = 2
log = logging.getLogger("gateway")


def settings_or_none(
    overrides: Mapping[str, object] | None = None,
    need: frozenset[str] = frozenset({"secret", "database"}),
    *,
    serving: bool = True,
) -> Settings | None:
    """Load the settings, or print every problem to stderr and return ``None``.

    ``serving``: also check what the HTTP adapter reads when it starts (the rules file), so that
    a bad one stops ``serve`` before it serves and ``check-config`` lists it.
    """
    checks = (rules_file_problems,) if serving else ()
    try:
        return load_settings(overrides=overrides, need=need, checks=checks)
    except ConfigError as exc:
        print("gateway: invalid configuration:", file=sys.stderr)  # noqa: T201
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)  # noqa: T201
        return None


def listen_url_direct(settings: Settings) -> bool:
    """Refuse (with the fix) a LISTEN URL that reaches a pooler; say nothing if Postgres is away."""
    url = settings.listen_database_url or settings.database_url
    if not settings.listen or url is None:
        return True
    variable = "GATEWAY_LISTEN_DATABASE_URL" if settings.listen_database_url else "DATABASE_URL"
    try:
        asyncio.run(require_direct(url.reveal(), settings.db_timeout_s, variable))
    except ConfigError as exc:
        print(f"gateway: invalid configuration:\n  - {exc}", file=sys.stderr)  # noqa: T201
        return False
    return True


def _prepare_metrics(settings: Settings) -> None:
    """Set up prometheus-client's multiprocess mode before the workers start.

    A fresh folder for the workers' numbers, and the separate metrics port, served by this
    (main) process.
    """
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="gateway-metrics-")
    for stale in Path(folder).glob("*.db"):  # a previous run's numbers would be added in
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    if settings.metrics_port:
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server  # noqa: PLC0415

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        start_http_server(settings.metrics_port, addr=settings.host, registry=registry)


def serve(settings: Settings) -> int:
    """Serve the app with granian (RSGI, uvloop, HTTP/1.1) until interrupted."""
    from granian import Granian  # noqa: PLC0415
    from granian.constants import HTTPModes, Interfaces, Loops  # noqa: PLC0415
    from granian.http import HTTP1Settings  # noqa: PLC0415

    # Workers rebuild the settings from the environment: pass the command-line values on.
    os.environ["GATEWAY_HOST"], os.environ["GATEWAY_PORT"] = settings.host, str(settings.port)
    os.environ["GATEWAY_WORKERS"] = str(settings.workers)
    if settings.secondary_storage_url is None and not listen_url_direct(settings):
        return EXIT_CONFIG
    for problem in tracing_problems(os.environ):  # before the workers, which would each stop on it
        print(f"gateway: invalid configuration:\n  - {problem}", file=sys.stderr)  # noqa: T201
        return EXIT_CONFIG
    configure_logging(settings.log_level, settings.log_format)
    log.info("effective configuration", extra={"config": describe(settings)})
    note = cookie_note(settings)
    if note:
        log.warning(note)
    startup_triggers(settings)  # once, here, before the workers fork
    _prepare_metrics(settings)
    server = Granian(
        "gateway.resources:create_app",
        factory=True,
        address=settings.host,
        port=settings.port,
        workers=settings.workers,
        interface=Interfaces.RSGI,
        loop=Loops.uvloop,
        http=HTTPModes.http1,
        websockets=False,
        http1_settings=HTTP1Settings(
            max_buffer_size=settings.max_header_bytes,
            header_read_timeout=round(settings.header_read_timeout_s * 1000),
        ),
        runtime_threads=1,
        # backpressure counts connections, not requests: keep it above the proxies' keep-alive pools.
        backpressure=max(1024, settings.pool_max_size * 64),
        log_access=False,
        # SIGTERM: stop accepting, let in-flight requests finish, kill what is left after the grace.
        workers_kill_timeout=max(1, round(settings.shutdown_grace_s)),
    )
    if settings.rules_file:
        server.on_startup(_forward_sighup)  # after granian's own handlers are set, before the workers start
    server.serve()
    return 0


def _forward_sighup() -> None:
    """SIGHUP: each worker reloads its rules file in place (``gateway.http.rules_file``).

    granian's own SIGHUP respawns every worker: a cold start, which a bad rules file would stop.
    """

    def forward(signum: int, _: object) -> None:
        for worker in multiprocessing.active_children():  # granian's workers
            if worker.pid is not None:
                with contextlib.suppress(ProcessLookupError):  # it has just exited
                    os.kill(worker.pid, signum)

    signal.signal(signal.SIGHUP, forward)
