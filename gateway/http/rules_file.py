"""The rules file as one worker holds it: loaded whole, swapped whole, reloaded without a restart.

**Atomic.** A worker's rules are one immutable ``policy.Rules``, replaced by one assignment once a
new file has loaded completely. A request reads ``current`` once (``ForwardAuth``), so it is judged
by the old rules or by the new ones, never by a mix: nothing runs between the parse and the
assignment, and the parse never touches the object in force.

**When.** On ``SIGHUP``, and when the file changes: every ``GATEWAY_RULES_RELOAD_S`` seconds
(0: never) the file is read again *by its path* and parsed if its bytes differ from the last ones
seen. Reading by path, rather than watching an inode or an inotify event on the file, also sees
Kubernetes' ConfigMap updates, which swap a ``..data`` symlink and never write the file itself.

**Refused.** A file that doesn't load (unreadable, not TOML/JSON, an unknown key, a rule that
can't match what it names: whatever ``policy.load_rules`` refuses at startup) is logged once, as
an error naming the file and the problem, and counted (``rules_reload_failed``); the rules in force
stay. The next change of the file (or the next ``SIGHUP``) is tried again.

``SIGHUP`` reaches the workers through ``gateway serve``'s main process, which forwards it to each
of them (``gateway.cli.serve``) instead of letting granian respawn every worker, as it does on
its own: a respawn is a cold start (new connections, empty caches), and a worker that started with
a bad file would not start at all. A worker takes ``SIGHUP`` once it is open (``watching``). One
that comes earlier is ignored under the ``fork`` start method (Linux, Python < 3.14: the worker
inherits the main process's handler, which has no workers of its own to forward to); under
``spawn`` (macOS, Python >= 3.14) it would stop that worker, as it would any process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.http.policy import Rules, parse_rules

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

log = logging.getLogger("gateway.http.rules_file")


class RulesFile:
    """A worker's rules from ``path``: ``current`` is the whole set in force."""

    def __init__(self, path: str, *, organizations: bool = False) -> None:
        """Load the file (``organizations``: whether ``allowed_org_roles`` can be met, see ``policy.parse_rules``).

        Raises:
            ValueError: it does not load (the settings' checks said so before any worker started).
        """
        self.path = path
        try:
            self._seen: bytes | None = Path(path).read_bytes()  # what the last read found; None: nothing
        except OSError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        self._organizations = organizations
        self.current: Rules = parse_rules(self._seen, path, organizations=organizations)
        self._event: Callable[[str], None] = _ignore

    def reload(self) -> bool:
        """Read and parse the file; take it whole if it loads, else log why and keep the rules in force."""
        try:
            raw = Path(self.path).read_bytes()
        except OSError as exc:
            return self._refuse(None, f"{self.path}: {exc}")
        self._seen = raw
        try:
            rules = parse_rules(raw, self.path, organizations=self._organizations)
        except ValueError as exc:
            return self._refuse(raw, str(exc))
        self.current = rules  # the one assignment: a request sees the old rules or these
        self._event("rules_reload")
        log.info("rules file reloaded", extra={"rules_file": self.path, "rules": len(rules.rules)})
        return True

    def check(self) -> bool:
        """Reload if the file's bytes differ from the last seen; whether it did (and took them)."""
        try:
            changed = Path(self.path).read_bytes() != self._seen
        except OSError:
            changed = self._seen is not None  # gone (or unreadable) since: say so once
        return changed and self.reload()

    def _refuse(self, raw: bytes | None, problem: str) -> bool:
        self._seen = raw  # logged once per change, not once per poll
        self._event("rules_reload_failed")
        log.error(
            "rules file refused, the rules in force stay: %s",
            problem,
            extra={"rules_file": self.path, "problem": problem},
        )
        return False

    @contextlib.asynccontextmanager
    async def watching(self, every_s: float, event: Callable[[str], None]) -> AsyncIterator[None]:
        """Reload on SIGHUP, and on a change every ``every_s`` seconds (0: never), while open.

        ``event`` counts ``rules_reload`` and ``rules_reload_failed`` (``Metrics.event``).
        Call from the worker's main thread, in its loop.
        """
        self._event = event
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        poller = asyncio.create_task(self._poll(every_s)) if every_s > 0 else None
        try:
            yield
        finally:
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            loop.remove_signal_handler(signal.SIGHUP)
            # Closing is not exiting: a SIGHUP forwarded while the worker drains must not kill it.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            self._event = _ignore

    async def _poll(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            self.check()


def _ignore(_: str) -> None:
    pass
