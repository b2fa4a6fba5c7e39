"""The ``gateway`` command: ``serve``, ``check-config``, ``install-triggers`` and ``demo``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.config import Settings, cookie_note, describe, load_settings
from gateway.core.errors import ConfigError, StoreUnavailable
from gateway.http.policy import rules_file_problems
from gateway.postgres.admin import budget_lines, check_database, run_sql, trigger_sql
from gateway.postgres.installer import ensure_triggers, startup_triggers
from gateway.postgres.pooler import require_direct
from gateway.telemetry.logs import configure_logging

if TYPE_CHECKING:
    from collections.abc import Mapping

EXIT_CONFIG = 2
log = logging.getLogger("gateway")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = argparse.ArgumentParser(prog="gateway", description="Validate Better Auth sessions, fast.")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "serve the gateway (configuration from the environment)"),
        ("demo", "serve against an embedded Postgres with a seeded demo session"),
    ):
        cmd = commands.add_parser(name, help=help_text)
        cmd.add_argument("--host", help="listen address (GATEWAY_HOST)")
        cmd.add_argument("--port", type=int, help="listen port (GATEWAY_PORT)")
        cmd.add_argument("--workers", type=int, help="worker processes (GATEWAY_WORKERS)")
    check = commands.add_parser("check-config", help="validate the configuration, print every problem; non-zero if any")
    check.add_argument("--instances", type=int, default=1, help="instances to state the connection budget for")
    triggers = commands.add_parser("install-triggers", help="install the invalidation triggers (idempotent)")
    triggers.add_argument("--print", action="store_true", help="print the SQL instead of running it")
    triggers.add_argument("--uninstall", action="store_true", help="remove the triggers and their functions")
    args = parser.parse_args(argv)
    configure_logging(fmt="text")
    if args.command == "check-config":
        return check_config(args.instances)
    if args.command == "install-triggers":
        return install_triggers(print_only=args.print, uninstall=args.uninstall)
    if args.command == "demo":
        from gateway.cli.demo import run_demo  # noqa: PLC0415  (pgserver is only needed here)

        return run_demo(args.host, args.port, args.workers)
    settings = settings_or_none(_cli_overrides(args))
    return EXIT_CONFIG if settings is None else serve(settings)


def _cli_overrides(args: argparse.Namespace) -> dict[str, object]:
    return {k: v for k in ("host", "port", "workers") if (v := getattr(args, k)) is not None}


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


def check_config(instances: int = 1) -> int:
    """Print the effective configuration (secrets masked) or every problem; 0 if usable."""
    settings = settings_or_none()
    if settings is None:
        return EXIT_CONFIG
    for key, value in describe(settings).items():
        print(f"{key} = {value}")  # noqa: T201
    if settings.secondary_storage_url is None:
        if not _listen_url_direct(settings):
            return EXIT_CONFIG
        findings = asyncio.run(check_database(settings))
        for finding in findings:
            print(f"{finding.level}: {finding.text}", file=sys.stdout if finding.level == "ok" else sys.stderr)
        if any(f.level == "problem" for f in findings):
            return EXIT_CONFIG
        statement, warning = budget_lines(settings, max(1, instances))
        print(statement)  # noqa: T201
    else:
        warning = None
    if warning:
        print(f"warning: {warning}", file=sys.stderr)  # noqa: T201
    note = cookie_note(settings)
    if note:
        print(f"note: {note}", file=sys.stderr)  # noqa: T201
    print("configuration OK")  # noqa: T201
    return 0


def _listen_url_direct(settings: Settings) -> bool:
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


def install_triggers(*, print_only: bool, uninstall: bool) -> int:
    """Print or run the trigger SQL (``--print`` needs no database)."""
    settings = settings_or_none(need=frozenset() if print_only else frozenset({"database"}), serving=False)
    if settings is None:
        return EXIT_CONFIG
    sql = trigger_sql(settings, uninstall=uninstall)
    if print_only:
        print(sql, end="")  # noqa: T201
        return 0
    if not uninstall:  # as serve does at startup (and upgrading), whatever GATEWAY_INSTALL_TRIGGERS says
        outcome = asyncio.run(ensure_triggers(settings, explicit=True))
        print(f"invalidation triggers: {outcome.message}", file=sys.stdout if outcome.current else sys.stderr)
        return 0 if outcome.current else 1
    try:
        asyncio.run(run_sql(settings, sql))
    except StoreUnavailable as exc:
        print(f"gateway: install-triggers failed: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    print("invalidation triggers removed")  # noqa: T201
    return 0


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
    if settings.secondary_storage_url is None and not _listen_url_direct(settings):
        return EXIT_CONFIG
    configure_logging(settings.log_level, settings.log_format)
    log.info("effective configuration", extra={"config": describe(settings)})
    note = cookie_note(settings)
    if note:
        log.warning(note)
    startup_triggers(settings)  # once, here, before the workers fork
    _prepare_metrics(settings)
    Granian(
        "gateway.http.app:create_app",
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
    ).serve()
    return 0
