"""Plain helpers for the tests, by concern; the fixtures built on them live in ``tests/conftest.py``.

- ``credentials``: the test secret, and the cookies and credentials a client sends.
- ``ports``: free TCP ports.
- ``waiting``: polling for a condition that cannot be awaited directly.
- ``postgres``: databases of the tests' own, the triggers, seeded sessions.
- ``redis``: ``redis-server`` processes of the tests' own.
- ``resources``: the gateway's resources opened in-process (no HTTP).
- ``server``: real ``gateway serve`` processes, and what is asked of them over HTTP.
- ``better_auth``: the real Better Auth, as a peer.
- ``tcp_proxy``: a TCP proxy whose link the tests cut.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
"""The repository's root (examples/, scripts/, loadtests/)."""
