"""The ``gateway`` command: ``serve``, ``check-config``, ``install-triggers`` and ``demo``."""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway import __version__
from gateway.cli.serve import EXIT_CONFIG, listen_url_direct, serve, settings_or_none
from gateway.config import cookie_note, describe
from gateway.core.errors import StoreUnavailable
from gateway.postgres.admin import budget_lines, check_database, run_sql, trigger_sql
from gateway.postgres.installer import ensure_triggers
from gateway.telemetry.logs import configure_logging


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


def check_config(instances: int = 1) -> int:
    """Print the effective configuration (secrets masked) or every problem; 0 if usable."""
    settings = settings_or_none()
    if settings is None:
        return EXIT_CONFIG
    for key, value in describe(settings).items():
        print(f"{key} = {value}")  # noqa: T201
    if settings.secondary_storage_url is None:
        if not listen_url_direct(settings):
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
