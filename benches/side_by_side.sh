#!/usr/bin/env bash
# Alternates cthpo's bench_train and PyTorch's reference on the same step, ROUNDS times, and
# prints each round and the median and minimum of both (run by hand, never by CI). A virtual
# machine's speed can drift by ±15 % within minutes, so only alternating runs compare fairly.
#
#   benches/side_by_side.sh cnn7 ibp [rounds=3] [steps=4]
#   PYTHON (default python3) must be a Python with torch installed, e.g. a virtualenv's
#   bin/python (set-up: see benches/pytorch_reference.py). METHOD: standard, ibp, pgd, sabr,
#   mtl_ibp, crown_ibp, taps or staps. On a machine shared with other
#   work, export OMP_WAIT_POLICY=PASSIVE: PyTorch's OpenMP threads otherwise spin and lose
#   several-fold to the other processes (cthpo's pools block instead of spinning).
set -euo pipefail
arch=${1:?arch}; method=${2:?method}; rounds=${3:-3}; steps=${4:-20}
python=${PYTHON:-python3}
here=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet --example bench_train --manifest-path "$here/Cargo.toml"
ours=() theirs=()
for round in $(seq "$rounds"); do
  a=$("$here/target/release/examples/bench_train" --arch "$arch" --method "$method" --batch 256 --threads 2 --steps "$steps" --json | sed -E 's/.*"ms_per_step": ([0-9.]+).*/\1/')
  b=$("$python" "$here/benches/pytorch_reference.py" --arch "$arch" --method "$method" --batch 256 --threads 2 --steps "$steps" 2>/dev/null | sed -E 's/.*"ms_per_step": ([0-9.]+).*/\1/')
  echo "round $round: cthpo $a ms, pytorch $b ms"
  ours+=("$a"); theirs+=("$b")
done
python3 - "${ours[*]}" "${theirs[*]}" "$arch" "$method" <<'PY'
import statistics, sys
ours, theirs = ([float(v) for v in s.split()] for s in sys.argv[1:3])
m, p = statistics.median(ours), statistics.median(theirs)
print(f"{sys.argv[3]} {sys.argv[4]}: cthpo median {m:.1f} (min {min(ours):.1f}) ms, "
      f"pytorch median {p:.1f} (min {min(theirs):.1f}) ms, ratio of medians {m / p:.2f}")
PY
