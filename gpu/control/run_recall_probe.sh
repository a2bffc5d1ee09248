#!/bin/bash
# The recall probe (issue 24), run from the repository root on one GPU: gpu/control/copy_probe.py
# in the suite's three variants, side by side, on rows of random tokens where one 24-frame span
# comes back at a lag drawn per row (24-136 frames of 160). Nothing can be learned by heart, so
# the answer is known for two variants: full attention (context 320) can copy at every lag, and
# attention of CONTEXT=16 frames (reach 4 layers x 16 = 64) cannot copy a source 96 or 136 frames
# back. The third, the same attention with In-Place TTT, is the measurement. Runs: full, no_ttt and
# ttt with seed 0, ttt with seed 1. $OUT gets each run's curve (JSON) and log.
# CPU dry run: DEVICE=cpu STEPS=4 LOG_EVERY=2 BATCH=4 bash gpu/control/run_recall_probe.sh
set -euo pipefail
export NO_TORCH_COMPILE=1 PYTHONUNBUFFERED=1
P=${PYTHON:-python3}; DEVICE=${DEVICE:-cuda}; OUT=${OUT:-/tmp/recall-probe}
STEPS=${STEPS:-8000}; BATCH=${BATCH:-64}; LOG_EVERY=${LOG_EVERY:-250}; MAX_SECONDS=${MAX_SECONDS:-100000}
CONTEXT=${CONTEXT:-16}
mkdir -p "$OUT"; t0=$(date +%s); say() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
. gpu/control/mps.sh
common="--frames 160 --length 24 --lag random --lag-min 24 --lag-max 136 --eval-lags 24,56,96,136
        --steps $STEPS --batch $BATCH --log-every $LOG_EVERY --max-seconds $MAX_SECONDS --device $DEVICE"
for run in "full 0" "no_ttt 0" "ttt 0" "ttt 1"; do
  set -- $run
  case $1 in full) variant="" ;; no_ttt) variant="--context $CONTEXT" ;; ttt) variant="--context $CONTEXT --ttt" ;; esac
  OMP_NUM_THREADS=2 $P gpu/control/copy_probe.py $common $variant --seed $2 --out "$OUT/$1-s$2.json" \
    > "$OUT/$1-s$2.log" 2>&1 &
done
fail=0; for job in $(jobs -p); do wait $job || fail=1; done
for f in "$OUT"/*.log; do echo "== $(basename $f)"; { grep '^{' "$f" || true; } | tail -n 2; done
[ $fail = 0 ] || { say "a probe failed"; tail -n 5 "$OUT"/*.log; exit 1; }
say "done"
