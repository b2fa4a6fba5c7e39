"""The hit paths of every endpoint, before and after a change, against the floor, in one run.

    python -m benchmarks.hot_path_http [--before DIR] [--duration 4] [--connections 64]

``--before``: a source tree of the code to compare with (``git archive main | tar -x -C DIR``);
without it only this tree is measured. Method as ``benchmarks.http_compare``: one server process
pinned to CPU 0, wrk pinned to CPU 1 (``-t1 -c64``), every session cached before measuring, the
floor (bare granian RSGI) measured first and last in the same run; figures are ratios to the mean
of its two measurements. Rows: ``/validate`` (bearer, cookie), get-session (cookie, bearer) and
``/v1/validate`` (bearer), all L1 hits over ``--sessions`` sessions of one user (default 1,000).
The table is printed and written to ``benchmarks/results/hot-path-<time>.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

import httpx

from benchmarks.http_compare import RESULTS, ROOT, granian, setup_database, wrk
from benchmarks.http_load import start_server
from benchmarks.revocation import git_commit
from gateway.credentials.tokens import sign
from tests.support.credentials import SECRET
from tests.support.ports import free_port
from tests.support.postgres import drop_database

COOKIE = "better-auth.session_token"
LUA = """
local values = {}
for line in io.lines("%(values)s") do values[#values + 1] = line end
request = function()
  local headers = {["%(header)s"] = values[math.random(#values)]}
  if "%(method)s" == "POST" then headers["Content-Length"] = "0" end
  return wrk.format("%(method)s", "%(path)s", headers)
end
"""


class Row(NamedTuple):
    name: str
    method: str
    path: str
    header: str
    target: float


ROWS = [
    Row("/validate, L1 hit (bearer)", "GET", "/validate", "Authorization", 0.90),
    Row("/validate, L1 hit (cookie)", "GET", "/validate", "Cookie", 0.90),
    Row("get-session, L1 hit (cookie)", "GET", "/api/auth/get-session", "Cookie", 0.75),
    Row("get-session, L1 hit (bearer)", "GET", "/api/auth/get-session", "Authorization", 0.75),
    Row("/v1/validate, L1 hit (bearer)", "POST", "/v1/validate", "Authorization", 0.70),
]


async def warm(port: int, row: Row, values: list[str]) -> None:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=16)) as c:
        for i in range(0, len(values), 100):
            answers = await asyncio.gather(
                *(
                    c.request(row.method, f"http://127.0.0.1:{port}{row.path}", headers={row.header: v})
                    for v in values[i : i + 100]
                )
            )
            if any(a.status_code != 200 or a.content == b"null" for a in answers):
                raise RuntimeError(f"{row.name}: not every session is valid")


def measure(args: argparse.Namespace) -> tuple[list[float], dict[str, dict[str, float]]]:
    admin_dsn, dsn, tokens = asyncio.run(setup_database())
    tokens = tokens[: args.sessions]
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="gw-hot-"))
    signed = [sign(t, SECRET) for t in tokens]
    values = {
        "Authorization": [f"Bearer {s}" for s in signed],
        "Cookie": [f"theme=dark; {COOKIE}={quote(s, safe='')}; _ga=GA1.2.3" for s in signed],
    }
    for header, lines in values.items():
        (folder / header).write_text("\n".join(lines) + "\n")
    env = {
        "DATABASE_URL": dsn,
        "BETTER_AUTH_SECRET": SECRET,
        "GATEWAY_RATE_LIMIT_PER_MINUTE": "0",
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_L1_MAX_ENTRIES": str(4 * len(tokens)),
        "GATEWAY_L1_TTL_S": "3600",
        "GATEWAY_SECURE_COOKIES": "false",
    }
    trees = {"before": Path(args.before), "after": ROOT} if args.before else {"after": ROOT}
    floors: list[float] = []
    results: dict[str, dict[str, float]] = {}

    def floor() -> None:
        proc = start_server(granian("benchmarks.apps.floor:app", port), {}, port, ROOT)
        try:
            script = folder / "floor.lua"
            script.write_text(LUA % {"values": folder / "Cookie", "method": "GET", "path": "/validate", "header": "X"})
            wrk(port, script, 2, args.connections)
            floors.append(wrk(port, script, args.duration, args.connections).rps)
        finally:
            proc.terminate()
            proc.wait(15)
        print(f"floor: {floors[-1]:,.0f} req/s", file=sys.stderr)

    try:
        floor()
        for label, tree in trees.items():
            serve = [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", "1"]
            proc = start_server(serve, env, port, tree)
            try:
                for row in ROWS:
                    asyncio.run(warm(port, row, values[row.header]))
                    script = folder / "row.lua"
                    fields = {
                        "values": folder / row.header,
                        "method": row.method,
                        "path": row.path,
                        "header": row.header,
                    }
                    script.write_text(LUA % fields)
                    wrk(port, script, 2, args.connections)  # warm-up
                    rps = wrk(port, script, args.duration, args.connections).rps
                    results.setdefault(row.name, {})[label] = rps
                    print(f"{label}: {row.name}: {rps:,.0f} req/s", file=sys.stderr)
            finally:
                proc.terminate()
                proc.wait(15)
        floor()
    finally:
        asyncio.run(drop_database(admin_dsn, dsn))
    return floors, results


def table(floors: list[float], results: dict[str, dict[str, float]]) -> str:
    base = statistics.mean(floors)
    labels = [label for label in ("before", "after") if any(label in r for r in results.values())]
    head = "| row | " + " | ".join(f"{label} req/s | {label} vs floor" for label in labels) + " | target |"
    lines = [head, "|---|" + "---:|---:|" * len(labels) + "---:|"]
    for row in ROWS:
        cells = []
        for label in labels:
            rps = results[row.name][label]
            cells += [f"{rps:,.0f}", f"{rps / base:.0%}"]
        lines.append(f"| {row.name} | " + " | ".join(cells) + f" | ≥ {row.target:.0%} |")
    lines.append("")
    lines.append(
        f"Floor (bare granian RSGI): {floors[0]:,.0f} then {floors[-1]:,.0f} req/s; ratios use the mean, {base:,.0f}."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="")
    parser.add_argument("--duration", type=float, default=4)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--sessions", type=int, default=1000, help="how many of the 10,000 sessions to send")
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})
    floors, results = measure(args)
    header = (
        f"# Hit paths, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
        f"Commit {git_commit()}{' vs ' + args.before if args.before else ''}; wrk -t1 -c{args.connections} "
        f"-d{args.duration}s; one process on CPU 0, wrk on CPU 1; {args.sessions:,} sessions of one user, "
        "all cached.\n\n"
    )
    text = header + table(floors, results)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"hot-path-{time.strftime('%Y%m%d-%H%M%S')}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
