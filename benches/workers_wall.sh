#!/usr/bin/env bash
# Wall time of one short IBP study run by 1 worker and by N workers on one PostgreSQL study.
#
#   benches/workers_wall.sh URL [N] [TRIALS]
#
# URL is a PostgreSQL storage (e.g. from `scripts/postgres-local.sh start DIR`); each run uses
# a new study and per-worker checkpoint directories under a temporary folder.
set -euo pipefail
url=${1:?usage: $0 postgresql://... [workers] [trials]}
workers=${2:-4}
trials=${3:-8}
bin=$(dirname "$0")/../target/release/cthpo
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for n in 1 "$workers"; do
    name="wall-$n-$(date +%s)"
    start=$(date +%s.%N)
    for i in $(seq 1 "$n"); do
        "$bin" run --method ibp --epochs 2 --train-samples 4000 --val-samples 200 \
            --trials "$trials" --heartbeat 5s --name "$name" --storage "$url" \
            --dir "$out/$n-$i" >"$out/$n-$i.log" 2>&1 &
    done
    wait
    end=$(date +%s.%N)
    python3 -c "print(f'{$n} worker(s): {$end - $start:.1f} s for $trials trials')"
done
