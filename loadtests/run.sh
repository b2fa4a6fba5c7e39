#!/usr/bin/env bash
# Load-test a running gateway with realistic traffic and check every answer under load.
#
#   loadtests/run.sh --host URL --duration D --out DIR [--users N] [--spawn-rate R]
#
# DATABASE_URL: the database Better Auth (and the gateway) use; its sessions are seeded here
# and removed afterwards. BETTER_AUTH_SECRET (or BETTER_AUTH_SECRETS): what the gateway checks
# signatures with; the cookie settings as the gateway has them (GATEWAY_SECURE_COOKIES,
# GATEWAY_BASE_URL or BETTER_AUTH_URL, GATEWAY_COOKIE_PREFIX) name the cookie sent. Writes
# locust's CSV and HTML reports and summary.json to DIR, prints a summary, and exits non-zero
# on any failed request or any revoked session accepted.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
host="" duration="" out="" users=40 spawn_rate=20
while [[ $# -gt 0 ]]; do
  case "$1" in
    --host) host="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --users) users="$2"; shift 2 ;;
    --spawn-rate) spawn_rate="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ -z "$host" || -z "$duration" || -z "$out" ]]; then
  echo "usage: loadtests/run.sh --host URL --duration D --out DIR [--users N] [--spawn-rate R]" >&2
  exit 2
fi
: "${DATABASE_URL:?run.sh: set DATABASE_URL to the database Better Auth uses}"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
if ! "$python" -c 'import locust, psycopg' 2>/dev/null; then
  echo "run.sh: $python lacks locust or psycopg: pip install -e '.[demo]' --group bench" >&2
  exit 2
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$root"
"$python" -m loadtests.seed create --out "$out/seed.json"
trap '"$python" -m loadtests.seed drop "$out/seed.json"' EXIT

status=0
LOADTEST_SEED="$out/seed.json" LOADTEST_OUT="$out" "$python" -m locust \
  -f "$here/locustfile.py" --headless --host "$host" --run-time "$duration" \
  --users "$users" --spawn-rate "$spawn_rate" --stop-timeout 5 \
  --csv "$out/locust" --html "$out/report.html" --only-summary --loglevel WARNING || status=$?

"$python" - "$out" "$status" <<'PY'
import csv, json, sys
from pathlib import Path
out, status = Path(sys.argv[1]), int(sys.argv[2])
rows = list(csv.DictReader((out / "locust_stats.csv").open()))
summary = json.loads((out / "summary.json").read_text())
print(f"\n{'request':<28} {'count':>8} {'failed':>7} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}")
for r in rows:
    print(f"{r['Name']:<28} {r['Request Count']:>8} {r['Failure Count']:>7} {float(r['Requests/s']):>8.0f} "
          f"{r['50%']:>7} {r['99%']:>7}")
print(f"\nrevocations: {summary['revocations']} ({summary['sessions_revoked']} sessions); probes of revoked "
      f"sessions: {summary['probes']}; answers checked for sessions revoked over {summary['grace_ms']:.0f} ms "
      f"before: {summary['refusals_seen']} refused")
print(f"revoked sessions accepted more than {summary['grace_ms']:.0f} ms after revocation: {summary['accepted_revoked']}")
total = next(r for r in rows if r["Name"] == "Aggregated")
verdict = "PASS" if status == 0 and total["Failure Count"] == "0" and summary["accepted_revoked"] == 0 else "FAIL"
print(f"{verdict}: reports in {out}")
PY
exit "$status"
