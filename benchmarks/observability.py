"""What observability costs on the hit path: the /validate L1 hit's ratio to the floor, features off and on.

    python -m benchmarks.observability [--runs 3] [--duration 8] [--connections 64] [--before <commit>]
                                       [--before-all-on]

One run measures, each as ``benchmarks.http_compare`` does (server pinned to CPU 0, wrk to CPU 1,
alternating order, medians): the floor; the gateway at ``--before`` (the commit before the
observability work, checked out into a temporary folder); this tree with its defaults (the
decision-latency histogram, the in-flight gauge, build_info and process series: always on);
with OpenTelemetry tracing on as well (an OTLP endpoint set: no span is made on an L1 hit);
with the request ID echoed as well (``GATEWAY_REQUEST_ID_HEADER=on``: all but the access log); and
with everything on (tracing, ``GATEWAY_ACCESS_LOG=on``, ``GATEWAY_REQUEST_ID_HEADER=on``: each
hit, still on the hit path, echoes its ID and writes an access line, to a file); with
``--before-all-on``, the ``--before`` commit with everything on too (to compare what a line costs
before and after a change, in the same run). Only ratios to the floor
of the same run are compared: throughput, and, steadier on a shared machine, the server's CPU
time per request (every process of it, from ``/proc``): the floor's CPU per request over the
configuration's is the share of the floor's speed it would reach on a core of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import httpx
import psutil

from benchmarks.http_compare import ROOT, SESSIONS, granian, setup_database
from benchmarks.http_load import INHERITED, lua, start_server
from tests.support.credentials import SECRET
from tests.support.ports import free_port
from tests.support.postgres import drop_database


async def warm(port: int, tokens: list[str]) -> None:
    """Every token validated once (so every measured request is an L1 hit), with patience for a busy machine."""
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=16)) as c:
        for i in range(0, len(tokens), 200):
            batch = tokens[i : i + 200]
            answers = await asyncio.gather(
                *(c.get(f"http://127.0.0.1:{port}/validate", headers={"authorization": f"Bearer {t}"}) for t in batch)
            )
            assert {r.status_code for r in answers} == {200}


class Result(NamedTuple):
    rps: float
    cpu_us: float  # the server's CPU time (every process of it) per request answered
    p99_ms: float


def cpu_seconds(proc: subprocess.Popen[bytes]) -> float:
    """User + system CPU time of the server: the process and its workers."""
    root = psutil.Process(proc.pid)
    return sum(sum(p.cpu_times()[:2]) for p in [root, *root.children(recursive=True)])


def measure(proc: subprocess.Popen[bytes], port: int, script: Path, duration: float, connections: int) -> Result:
    """wrk pinned to CPU 1 (``-t1 --latency``): throughput, the server's CPU per request, p99."""
    before = cpu_seconds(proc)
    command = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{round(duration)}s", "--latency"]
    out = subprocess.run(
        [*command, "-s", str(script), f"http://127.0.0.1:{port}"], capture_output=True, text=True, check=True
    ).stdout
    spent = cpu_seconds(proc) - before
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"\s99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return Result(rps, spent / requests * 1e6, p99)


def checkout(commit: str, folder: Path) -> Path:
    """The tree at ``commit``, exported into ``folder`` (the gateway as it was)."""
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def arguments() -> argparse.Namespace:
    """The command line; ``--before`` defaults to where this branch left main."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=2000, help="distinct sessions the load cycles through")
    parser.add_argument("--before", default=None, help="default: where this branch left main")
    parser.add_argument("--before-all-on", action="store_true", help="also run --before with everything on")
    args = parser.parse_args()
    if args.before is None:
        base = subprocess.run(
            ["git", "merge-base", "HEAD", "main"], cwd=ROOT, check=True, capture_output=True, text=True
        )
        args.before = base.stdout.strip()[:10]
    return args


def main() -> None:
    args = arguments()
    os.sched_setaffinity(0, {1})
    admin_dsn, dsn, tokens = asyncio.run(setup_database())
    tokens = tokens[: args.tokens]
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="gw-obs-bench-"))
    (folder / "before").mkdir()
    before = checkout(args.before, folder / "before")
    (folder / "tokens").write_text("".join(f"Bearer {token}\n" for token in tokens))
    (folder / "unknown").write_text("Bearer x\n")
    script = folder / "plain.lua"
    script.write_text(
        lua(
            folder / "tokens",
            folder / "unknown",
            garbage="Bearer x",
            method="GET",
            path="/validate",
            header="Authorization",
            mixed=False,
        )
    )
    gateway = {
        "DATABASE_URL": dsn,
        "BETTER_AUTH_SECRET": SECRET,
        "GATEWAY_RATE_LIMIT_PER_MINUTE": "0",
        "GATEWAY_LOG_LEVEL": "info",
        "GATEWAY_LOG_FORMAT": "json",
        "GATEWAY_L1_MAX_ENTRIES": str(2 * SESSIONS),
    }
    tracing = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    serve = [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", "1"]
    everything = gateway | tracing | {"GATEWAY_ACCESS_LOG": "on", "GATEWAY_REQUEST_ID_HEADER": "on"}
    configs = [
        ("floor", granian("benchmarks.apps.floor:app", port), {}, ROOT),
        (f"before ({args.before})", serve, gateway, before),
        ("defaults (metrics on)", serve, gateway, ROOT),
        ("+ tracing on", serve, gateway | tracing, ROOT),
        ("+ request ID header", serve, gateway | tracing | {"GATEWAY_REQUEST_ID_HEADER": "on"}, ROOT),
        ("+ access log (everything on)", serve, everything, ROOT),
    ]
    if args.before_all_on:
        configs.append((f"before ({args.before}), everything on", serve, everything, before))
    results: dict[str, list[Result]] = {}
    try:
        for run in range(args.runs):
            for name, command, env, tree in configs if run % 2 == 0 else reversed(configs):
                # OTEL_* too: only the tracing rows set them. 60 s: patience for a busy machine, as in ``warm``.
                proc = start_server(
                    command, env, port, tree, log=folder / "server.log", timeout_s=60, drop=(*INHERITED, "OTEL_")
                )
                try:
                    if name != "floor":
                        asyncio.run(warm(port, tokens))
                    measure(proc, port, script, 3, args.connections)  # warm-up
                    results.setdefault(name, []).append(measure(proc, port, script, args.duration, args.connections))
                finally:
                    proc.terminate()
                    proc.wait(15)
                last = results[name][-1]
                print(
                    f"run {run + 1}: {name}: {last.rps:,.0f} req/s, {last.cpu_us:.1f} us CPU/request", file=sys.stderr
                )
    finally:
        asyncio.run(drop_database(admin_dsn, dsn))
        logged = (folder / "server.log").stat().st_size if (folder / "server.log").exists() else 0
        shutil.rmtree(folder, ignore_errors=True)
    floor = {f: statistics.median(getattr(r, f) for r in results["floor"]) for f in Result._fields}
    print(
        f"\n| configuration (median of {args.runs}) | req/s | vs floor | CPU us/request | floor CPU / its | p99 ms |"
        "\n|---|---:|---:|---:|---:|---:|"
    )
    for name, *_ in configs:
        m = {f: statistics.median(getattr(r, f) for r in results[name]) for f in Result._fields}
        print(
            f"| {name} | {m['rps']:,.0f} | {m['rps'] / floor['rps']:.1%} | {m['cpu_us']:.1f} | "
            f"{floor['cpu_us'] / m['cpu_us']:.1%} | {m['p99_ms']:.2f} |"
        )
    print(f"\n(server log: {logged:,} bytes)")


if __name__ == "__main__":
    main()
