#!/bin/bash
# The recall probe (issue 24), run from the repository root on one GPU: gpu/control/copy_probe.py
# in the suite's three variants, side by side, on rows of random tokens where one 24-frame span
# comes back at a lag drawn per row (24-136 frames of 160). Nothing can be learned by heart, so
# the answer is known for two variants: full attention (context 320) can copy at every lag, and
# attention of CONTEXT=16 frames (reach 4 layers x 16 = 64) cannot copy a source 96 or 136 frames
# back. The third, the same attention with In-Place TTT, is the measurement.
# Runs: SEEDS x VARIANTS, or RUNS="ttt:2 no_ttt:1" (variant:seed). Full attention's circuit forms
# later (a jump near step 7,000-7,500 on an H200, 2026-12-03), so it trains STEPS_FULL steps, the
# others STEPS. $OUT gets each run's curve (JSON) and log, then report.md, reading.json, curve.png
# (gpu/control/recall_probe_report.py, which also reads runs of several calls put in one folder).
# CPU dry run (80 s): DEVICE=cpu STEPS=4 STEPS_FULL=4 LOG_EVERY=2 BATCH=4 bash gpu/control/run_recall_probe.sh
# A run longer than one device call: start it with gpu/detached.sh and wait for it in calls that
# follow each other within the machine's warm time (gpu/README.md).
set -euo pipefail
export NO_TORCH_COMPILE=1 PYTHONUNBUFFERED=1
P=${PYTHON:-python3}; DEVICE=${DEVICE:-cuda}; OUT=${OUT:-/tmp/recall-probe}
STEPS=${STEPS:-5000}; STEPS_FULL=${STEPS_FULL:-9000}; BATCH=${BATCH:-64}; LOG_EVERY=${LOG_EVERY:-250}
MAX_SECONDS=${MAX_SECONDS:-100000}; CONTEXT=${CONTEXT:-16}
SEEDS=${SEEDS:-"0 1 2"}; VARIANTS=${VARIANTS:-"full no_ttt ttt"}
if [ -z "${RUNS:-}" ]; then RUNS=""; for s in $SEEDS; do for v in $VARIANTS; do RUNS="$RUNS $v:$s"; done; done; fi
mkdir -p "$OUT"; t0=$(date +%s); say() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
. gpu/control/mps.sh
common="--frames 160 --length 24 --lag random --lag-min 24 --lag-max 136 --eval-lags 24,56,96,136
        --batch $BATCH --log-every $LOG_EVERY --max-seconds $MAX_SECONDS --device $DEVICE"
for run in $RUNS; do
  variant=${run%:*}; seed=${run#*:}
  case $variant in full) extra="--steps $STEPS_FULL" ;; no_ttt) extra="--steps $STEPS --context $CONTEXT" ;;
                   ttt) extra="--steps $STEPS --context $CONTEXT --ttt" ;; *) echo "unknown variant $variant" >&2; exit 2 ;; esac
  OMP_NUM_THREADS=2 $P gpu/control/copy_probe.py $common $extra --seed $seed --out "$OUT/$variant-s$seed.json" \
    > "$OUT/$variant-s$seed.log" 2>&1 &
done
say "runs:$RUNS"
fail=0; for job in $(jobs -p); do wait $job || fail=1; done
[ $fail = 0 ] || { say "a probe failed"; tail -n 5 "$OUT"/*.log; exit 1; }
$P gpu/control/recall_probe_report.py "$OUT"
say "done"
