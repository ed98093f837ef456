#!/usr/bin/env bash
# Hyperband against no fidelity on the real problem at equal time: starts
#
#   cthpo run --method ibp --time-budget 15m --epochs EPOCHS --min-epochs 1 --seed SEED
#             --fidelity hyperband | none   [EXTRA...]
#
# side by side, each with one thread (RAYON_NUM_THREADS=1), so both see the same load on a
# shared machine, each in its own study directory OUT/<fidelity>-seed<SEED> (logs beside
# them), then prints both studies' configurations, full-budget trials, best validation
# objective and front hypervolume (examples/study_summary.rs).
#
#   benches/fidelity_pair.sh SEED OUT [EXTRA...]      e.g. EXTRA = --objective pareto
#
# Only trials that ended within WITHIN seconds (default 900) of their study's start count in
# the summary: a study lets its last trial finish after the budget. BUDGET (default 15m)
# overrides the time budget; set WITHIN to match. EPOCHS (default 9) is the largest budget;
# CTHPO_BIN (default target/release/cthpo) the binary, e.g. a copy that later builds leave
# alone while the pair runs. HYPERBAND_ARGS (default none) are arguments for the Hyperband run
# only, e.g. HYPERBAND_ARGS="--rung-scoring share" (a `none` study refuses rung settings).
set -euo pipefail
seed=${1:?usage: $0 SEED OUT [extra cthpo run arguments]}
out=${2:?usage: $0 SEED OUT [extra cthpo run arguments]}
shift 2
root=$(dirname "$0")/..
bin=${CTHPO_BIN:-$root/target/release/cthpo}
mkdir -p "$out"
out=$(cd "$out" && pwd)
read -r -a hyperband_args <<<"${HYPERBAND_ARGS:-}"
for fidelity in hyperband none; do
    only=()
    if [ "$fidelity" = hyperband ]; then only=("${hyperband_args[@]}"); fi
    RAYON_NUM_THREADS=1 "$bin" run --method ibp --time-budget "${BUDGET:-15m}" --epochs "${EPOCHS:-9}" \
        --min-epochs 1 --fidelity "$fidelity" --seed "$seed" \
        --dir "$out/$fidelity-seed$seed" "${only[@]}" "$@" >"$out/$fidelity-seed$seed.log" 2>&1 &
done
wait
cd "$root" && cargo run --release --quiet --example study_summary -- --within "${WITHIN:-900}" \
    "$out/hyperband-seed$seed" "$out/none-seed$seed"
