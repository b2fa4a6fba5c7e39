"""Main's gateway and this branch's, side by side in one run, on http_compare's own parts (nothing added to it).

Rows: the floor, then for the Redis hit (L1 off) and the Postgres hit (caches off) main's code and the
branch's, alternating over ROUNDS rounds (order reversed every other round); medians; ratios to the floor
of the same run. The warm-up tolerates a machine many times slower than usual (timeouts 120 s).
"""
import asyncio, os, shutil, statistics, sys, tempfile, time
from pathlib import Path
import httpx
import benchmarks.http_compare as h
from tests.support.ports import free_port
from tests.support.postgres import drop_database

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 2
# The machine runs ~10x slower than usual (other sessions): budgets it cannot blow, the same for both trees.
SLOW = {"GATEWAY_REDIS_TIMEOUT_S": "2", "GATEWAY_DB_TIMEOUT_S": "5"}
TREES = {"main": "/tmp/mainsrc", "branch": "/work/wt/backends"}

async def warm(port, tokens):
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as c:
        for i in range(0, len(tokens), 200):
            await asyncio.gather(*(c.get(f"http://127.0.0.1:{port}/validate", headers={"authorization": f"Bearer {t}"}) for t in tokens[i : i + 200]))

def main():
    os.sched_setaffinity(0, {1})
    admin_dsn, dsn, tokens = asyncio.run(h.setup_database())
    redis_url = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="gw-same-"))
    (folder / "tokens").write_text("\n".join(tokens) + "\n")
    (folder / "unknown").write_text("x\n")
    script = folder / "plain.lua"
    script.write_text(h.LUA % {"tokens": folder / "tokens", "unknown": folder / "unknown", "mixed": "false"})
    base = h.configs(port, dsn, redis_url)
    floor, redis_hit, pg_hit = base[0], base[2], base[3]
    rows = [floor]
    for cfg in (redis_hit, pg_hit):
        for tree, root in TREES.items():
            env = cfg.env | SLOW | ({"GATEWAY_REDIS_PREFIX": f"gwsame{tree}{int(time.time())}"} if "REDIS_URL" in cfg.env else {})
            rows.append(h.Config(f"{cfg.name} [{tree}]", ["env", f"PYTHONPATH={root}", *cfg.command], env, cfg.warm))
    results = {}
    try:
        for rnd in range(ROUNDS):
            order = rows if rnd % 2 == 0 else [rows[0], *reversed(rows[1:])]
            for cfg in order:
                proc = h.start(cfg, port)
                try:
                    if cfg.warm:
                        asyncio.run(warm(port, tokens))
                    h.wrk(port, script, 3, 64)
                    results.setdefault(cfg.name, []).append(h.wrk(port, script, 4, 64))
                finally:
                    proc.terminate(); proc.wait(15)
                print(f"round {rnd + 1}: {cfg.name}: {results[cfg.name][-1].rps:,.0f} req/s", file=sys.stderr, flush=True)
    finally:
        asyncio.run(drop_database(admin_dsn, dsn))
        shutil.rmtree(folder, ignore_errors=True)
    med = {k: statistics.median(r.rps for r in v) for k, v in results.items()}
    p99 = {k: statistics.median(r.p99_ms for r in v) for k, v in results.items()}
    f = med[floor.name]
    print(f"# main vs branch in one run, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {ROUNDS} alternating rounds, wrk -t1 -c64 -d4s, medians\n")
    print("| configuration | req/s | p99 ms | vs floor | each round (req/s) |\n|---|---:|---:|---:|---|")
    for cfg in rows:
        each = ", ".join(f"{r.rps:,.0f}" for r in results[cfg.name])
        print(f"| {cfg.name} | {med[cfg.name]:,.0f} | {p99[cfg.name]:.2f} | {med[cfg.name] / f:.0%} | {each} |")

main()
