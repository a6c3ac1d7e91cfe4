#!/usr/bin/env bash
# Time from a fresh clone to a serving /healthz and to the first finished job (the README's numbers).
# usage: deploy/time_to_first_job.sh [REPO] [WORKDIR]   (REPO: a path or URL to clone; default: this repo)
# Needs port 8000 free (make run serves there). Leaves the service running in WORKDIR until killed:
# the script stops it at the end. Prints both times and the service's first log lines.
set -euo pipefail
repo=${1:-$(cd "$(dirname "$0")/.." && pwd)}
work=${2:-$(mktemp -d)/fresh}
curl -sf localhost:8000/healthz >/dev/null 2>&1 && { echo "port 8000 is in use: stop that service first"; exit 1; }
t0=$(date +%s.%N)
git clone -q "$repo" "$work"
cd "$work"
setsid make run > make-run.log 2>&1 &
pid=$!
trap 'kill -- -$pid 2>/dev/null || true' EXIT
until curl -sf localhost:8000/healthz >/dev/null; do
  kill -0 $pid 2>/dev/null || { tail -20 make-run.log; exit 1; }
  sleep 0.5
done
t1=$(date +%s.%N)
id=$(curl -s -X POST localhost:8000/v1/multiview -H 'content-type: application/json' \
       -d '{"prompt": "a red cube", "num_views": 4, "steps": 30, "schedule": "0.4,blocks=6"}' \
     | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
while true; do
  status=$(curl -s localhost:8000/v1/jobs/$id | grep -oE '"status":"[a-z]+"' | head -1)
  [ "$status" = '"status":"succeeded"' ] && break
  case $status in *failed*|*canceled*) echo "job $status"; exit 1;; esac
  sleep 0.5
done
t2=$(date +%s.%N)
python3 -c "print(f'fresh clone -> /healthz {$t1 - $t0:.1f} s; -> first job succeeded {$t2 - $t0:.1f} s')"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GB, $(python3.11 --version 2>&1), load average $(cut -d' ' -f1-3 /proc/loadavg)"
grep -E '^==>|realiz3d\.(serve|embedded)' make-run.log | cut -c1-160
