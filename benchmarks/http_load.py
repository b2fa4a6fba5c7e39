"""The HTTP comparison's load, and the server it loads: wrk for the measurement, a bare asyncio client for the rest.

- ``wrk``: one configuration's figures (``wrk -t1 --latency`` pinned to CPU 1, a Lua script that
  sends each request with a credential drawn at random from a file, and in a mixed run 4 % unknown
  sessions and 1 % garbage).
- ``each_once``: every request sent exactly once over keep-alive connections, each answer checked
  (the warm-up that fills the caches, and the cold start's timing; wrk can't stop after a number of
  requests). A dropped connection (a reset, a close under load) is reopened and its request sent
  again while the server keeps answering: the FastAPI reference's warm-up once died of one (see
  ``each_once``).
- ``start_server``: the server under that load, pinned to CPU 0 (wrk has CPU 1), returned once
  ``/healthz`` answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import time
from collections import deque
from typing import TYPE_CHECKING, NamedTuple

import httpx

if TYPE_CHECKING:
    from pathlib import Path

# What the server must not inherit from this shell: its configuration is the benchmark's alone.
INHERITED = ("GATEWAY_", "DATABASE_URL", "REDIS_URL")

LUA = """
local valid, unknown = {}, {}
for line in io.lines("%(valid)s") do valid[#valid + 1] = line end
for line in io.lines("%(unknown)s") do unknown[#unknown + 1] = line end
local mixed = %(mixed)s
local method, path, header, garbage = "%(method)s", "%(path)s", "%(header)s", "%(garbage)s"
local body = %(body)s
math.randomseed(os.time())
request = function()
  local r = math.random(100)
  local value
  if not mixed or r <= 95 then value = valid[math.random(#valid)]
  elseif r <= 99 then value = unknown[math.random(#unknown)]
  else value = garbage end
  return wrk.format(method, path, {[header] = value}, body)
end
"""


class Result(NamedTuple):
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int = 0  # answers wrk counted as neither 2xx nor 3xx (expected only in a mixed run)
    tier_share: float = 1.0  # of the lookups, the share the row's tier answered (``http_compare``)


def lua(  # noqa: PLR0913  (what the script needs, by name)
    valid: Path, unknown: Path, *, garbage: str, method: str, path: str, header: str, mixed: bool
) -> str:
    """The wrk script sending ``method path`` with ``header: <a line of valid>`` (and, mixed, the rest)."""
    body = '""' if method == "POST" else "nil"  # wrk then sends Content-Length: 0
    values = {"valid": valid, "unknown": unknown, "garbage": garbage, "method": method, "path": path}
    return LUA % (values | {"header": header, "mixed": str(mixed).lower(), "body": body})


def start_server(  # noqa: PLR0913  (what a benchmark varies, by name)
    command: list[str],
    env: dict[str, str],
    port: int,
    tree: Path,
    *,
    log: Path | None = None,
    timeout_s: float = 30.0,
    drop: tuple[str, ...] = INHERITED,
    name: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``command`` pinned to CPU 0 from ``tree``; return it once ``/healthz`` answers (anything).

    Its environment is this process's without the variables starting with one of ``drop``, then
    ``env``, then ``PYTHONPATH=tree`` (so that ``tree``'s gateway is the one that runs). Its output
    is appended to ``log``, or left on this process's. If nothing answers within ``timeout_s``,
    the process is killed and ``RuntimeError`` names it (``name``, else the command).
    """
    full = {k: v for k, v in os.environ.items() if not k.startswith(drop)} | env | {"PYTHONPATH": str(tree)}
    with log.open("ab") if log else contextlib.nullcontext() as out:
        proc = subprocess.Popen(["taskset", "-c", "0", *command], env=full, cwd=tree, stdout=out, stderr=out)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        except httpx.TransportError:
            time.sleep(0.1)
        else:
            return proc
    proc.kill()
    msg = f"{name or command} did not start" + (f": see {log}" if log else "")
    raise RuntimeError(msg)


def wrk(port: int, script: Path, duration: float, connections: int) -> Result:
    """Run wrk pinned to CPU 1 for ``duration`` seconds; its throughput and latency percentiles."""
    command = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{round(duration)}s", "--latency"]
    out = subprocess.run(
        [*command, "-s", str(script), f"http://127.0.0.1:{port}"], capture_output=True, text=True, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def latency(pct: str) -> float:
        value, unit = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return Result(rps, latency("50"), latency("99"), int(non_2xx.group(1)) if non_2xx else 0)


class Refused(Exception):
    """The server answered a request of the warm-up with something other than a valid session."""


async def each_once(port: int, requests: list[bytes], connections: int, stall_s: float = 30.0) -> float:
    """Send every request once over ``connections`` keep-alive connections; the seconds it took.

    Every answer must be a 200 naming a session (get-session's ``null`` is a refusal): a 4xx
    raises ``Refused`` at once. A dropped connection, or a 5xx, is retried (the request goes back
    in the queue, the connection is reopened) for as long as the server keeps answering: after
    ``stall_s`` with no answer at all, ``TimeoutError`` (a slow server is waited for, a dead one not).

    What this replaces: httpx with 500 requests in flight at a time over a 64-connection pool,
    which under a CPU-starved server (uvicorn pinned to a CPU other processes share) failed two
    ways: ``PoolTimeout`` (a request waited over httpx's 10 s for a pooled connection) and
    ``ReadError`` (seen once, not reproduced: what httpx raises on reusing a keep-alive connection
    the server is closing, as uvicorn closes one idle past its 5 s keep-alive timeout while the
    last of a slow batch finishes). Neither is the server refusing; both ended the whole run.
    """
    queue = deque(requests)
    progress = [time.monotonic()]  # when the last answer came

    async def connection() -> None:
        while queue:
            if time.monotonic() - progress[0] > stall_s:
                msg = f"no answer for {stall_s:.0f} s, {len(queue)} requests still to send"
                raise TimeoutError(msg)
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            try:
                await serve_queue(queue, reader, writer, progress)
            except (OSError, asyncio.IncompleteReadError, Unavailable):
                await asyncio.sleep(0.05)  # the request is back in the queue: a new connection sends it
            finally:
                writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    return time.perf_counter() - started


class Unavailable(Exception):
    """A 5xx: the server could not answer now (retried)."""


async def serve_queue(
    queue: deque[bytes], reader: asyncio.StreamReader, writer: asyncio.StreamWriter, progress: list[float]
) -> None:
    """Send the queue's requests one after the other on one connection, checking each answer."""
    while queue:
        request = queue.popleft()
        try:
            writer.write(request)
            status, body = await read_answer(reader)
        except BaseException:
            queue.append(request)
            raise
        progress[0] = time.monotonic()
        if status >= 500:
            queue.append(request)
            raise Unavailable(status)
        if status != 200 or body == b"null":
            line = request.split(b"\r\n", 1)[0]
            msg = f"{line!r} answered {status} {body[:80]!r}"
            raise Refused(msg)


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 answer with a Content-Length (or none: an empty body): its status and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
    if length is None and re.search(rb"\r\ntransfer-encoding:", head, re.IGNORECASE):
        msg = "chunked answers are not read here"
        raise Refused(msg)
    return status, await reader.readexactly(int(length.group(1))) if length else b""
