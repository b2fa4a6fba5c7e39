"""CPU cost of one cached hit per endpoint, in process, for this tree and another: less noise than wrk.

    python -m benchmarks.hit_cost [--before DIR] [--rounds 7] [--calls 20000] [--sessions 1]

The app is opened on a fresh database (one real session) and called through its RSGI interface
with a recording protocol (as ``tests/http/test_pipeline.py`` does), no sockets: what is measured
is the gateway's own work on a hit (finding the credential, the cache, rendering or not), which
the HTTP comparison can only see through granian and wrk. Each row: the best of ``--rounds``
rounds of ``--calls`` calls, in µs per call; trees are run alternately in subprocesses.
``--sessions 10000`` cycles the calls through that many cached sessions, as the HTTP comparison's
wrk does (a memo smaller than the sessions in use shows only then).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).parent.parent
COOKIE = "better-auth.session_token"
ROWS = [
    ("/validate (bearer)", "GET", "/validate", "authorization"),
    ("/validate (cookie)", "GET", "/validate", "cookie"),
    ("get-session (cookie)", "GET", "/api/auth/get-session", "cookie"),
    ("get-session (bearer)", "GET", "/api/auth/get-session", "authorization"),
    ("/v1/validate (bearer)", "POST", "/v1/validate", "authorization"),
]


async def _measure(dsn: str, tokens: list[str], rounds: int, calls: int) -> dict[str, float]:
    from gateway.config import load_settings  # noqa: PLC0415  (the tree under test, from PYTHONPATH)
    from gateway.credentials.tokens import sign  # noqa: PLC0415
    from gateway.http.app import App  # noqa: PLC0415
    from gateway.resources import open_resources  # noqa: PLC0415
    from tests.http.test_pipeline import Protocol, Scope  # noqa: PLC0415
    from tests.support.credentials import SECRET  # noqa: PLC0415

    settings = load_settings(
        {"DATABASE_URL": dsn, "BETTER_AUTH_SECRET": SECRET, "GATEWAY_RATE_LIMIT_PER_MINUTE": "0"},
        {"listen": False, "secure_cookies": "false"},
    )
    app = App(settings, open_resources)
    await app.open()

    def values(token: str) -> dict[str, str]:
        signed = sign(token, SECRET)
        return {"authorization": f"Bearer {signed}", "cookie": f"theme=dark; {COOKIE}={quote(signed, safe='')}; x=1"}

    out: dict[str, float] = {}
    try:
        for name, method, path, header in ROWS:
            extra = {"content-length": "0"} if method == "POST" else {}
            scopes: list[Any] = [Scope(method, path, {header: values(t)[header]} | extra) for t in tokens]
            proto: Any = Protocol()
            for scope in scopes:
                await app.__rsgi__(scope, proto)  # the miss that fills the cache
                await app.__rsgi__(scope, proto)  # the first hit, which renders
                assert proto.status == 200, (name, proto.status)
            best = float("inf")
            cycle = (scopes * (calls // len(scopes) + 1))[:calls]
            for _ in range(rounds):
                started = time.perf_counter()
                for scope in cycle:
                    await app.__rsgi__(scope, proto)
                best = min(best, (time.perf_counter() - started) / calls)
            out[name] = best * 1e6
    finally:
        await app.close()
    return out


def _child() -> None:
    dsn, tokens, rounds, calls = sys.argv[2], Path(sys.argv[3]).read_text().split(), int(sys.argv[4]), int(sys.argv[5])
    print(json.dumps(asyncio.run(_measure(dsn, tokens, rounds, calls))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--sessions", type=int, default=1, help="cycle through this many cached sessions")
    args = parser.parse_args()
    from benchmarks.http_compare import setup_database  # noqa: PLC0415
    from tests.support.postgres import drop_database  # noqa: PLC0415

    admin_dsn, dsn, tokens = asyncio.run(setup_database())
    trees = {"before": Path(args.before), "after": ROOT} if args.before else {"after": ROOT}
    results: dict[str, list[dict[str, float]]] = {}
    sessions = Path(tempfile.mkdtemp(prefix="gw-hit-cost-")) / "tokens"  # too many for one argument
    sessions.write_text("\n".join(tokens[: args.sessions]))
    try:
        for _ in range(3):  # alternately, three times: the best of each
            for label, tree in trees.items():
                env = os.environ | {"PYTHONPATH": str(tree)}
                command = [sys.executable, str(Path(__file__)), "--child", dsn, str(sessions), str(args.rounds)]
                command.append(str(args.calls))
                done = subprocess.run(command, check=False, env=env, cwd=tree, capture_output=True, text=True)
                if done.returncode:
                    raise RuntimeError(done.stderr)
                results.setdefault(label, []).append(json.loads(done.stdout.splitlines()[-1]))
    finally:
        asyncio.run(drop_database(admin_dsn, dsn))
    best = {label: {name: min(r[name] for r in runs) for name, *_ in ROWS} for label, runs in results.items()}
    lines = ["| hit | " + " | ".join(f"{label} µs" for label in best) + " |", "|---|" + "---:|" * len(best)]
    lines += [f"| {name} | " + " | ".join(f"{best[label][name]:.2f}" for label in best) + " |" for name, *_ in ROWS]
    print("\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.path.insert(0, str(Path.cwd()))
        _child()
    else:
        main()
