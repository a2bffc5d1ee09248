#!/bin/bash
# Issue 27's GPU measurements at Moshi 7B (random bf16), in one device call (< 10 min):
#  1. the GPU tests: the fused W pass and the CUDA-graphed block update against the eager one
#     (tests/test_fused_w.py, tests/test_block_graphs.py);
#  2. bench_cells teacher-forced 2k/8k/32k, 3 rounds of >= 2 s each (the on/off targets; a 2k
#     pass lasts 0.08 s: fewer passes per measurement did not settle it);
#  3. bench_cells generate, 3 rounds (≤ 1.02 × LMGen);
#  4. the regression cell's peak vs upstream's (gpu/regression_memory.py);
#  5. the matrix's per-step costs (→ matrix-cost.json);
#  6. one TTT layer's block update with the graphs off and on (bench/profile_stream_chunks.py:
#     ms per block and peak memory), if time is left.
# Each step gets its own limit, cut to what is left of a 570-s budget, so a slow step leaves the
# next ones their time and the call ends inside the device's 600 s. Wheels (moshi and its missing
# deps) are carried in .whl; results in $OUT.
#   bash gpu/run_issue27.sh          # everything
#   bash gpu/run_issue27.sh again    # again without the tests and generate (their JSON from an
#                                    # earlier call, carried in .whl/keep/cells-gen.json)
set -uo pipefail
OUT=${OUT:-/tmp/issue27-out}
mkdir -p "$OUT"
[ -d /tmp/site/moshi ] || python3 -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
C=/tmp/bc
BUDGET=570
# cap N: N seconds, or what is left of the budget (at least 1)
cap() { local left=$((BUDGET - SECONDS)); [ "$left" -lt "$1" ] && echo $((left > 1 ? left : 1)) || echo "$1"; }
step() { echo "== $1 at ${SECONDS}s" | tee -a "$OUT/steps.txt"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,power.limit --format=csv | tee "$OUT/gpu.txt"
GEN="$OUT/cells-gen.json"
[ "${1:-}" = again ] && GEN=.whl/keep/cells-gen.json
if [ "${1:-}" != again ]; then
    step "gpu tests"
    timeout "$(cap 100)" python3 -m pytest -q -rw -s -m gpu tests/test_fused_w.py tests/test_block_graphs.py \
        -p no:cacheprovider 2>&1 | tail -12 | tee -a "$OUT/gpu.txt"
fi
step "teacher-forced"
timeout "$(cap 300)" python3 bench/bench_cells.py --parts teacher_forced --reuse-checkpoint \
    --lengths 2048 8192 32768 --rounds 3 --min-seconds 2 --cache $C --out "$OUT/cells-tf.json"
if [ "${1:-}" != again ]; then
    step "generate"
    timeout "$(cap 130)" python3 bench/bench_cells.py --parts generate --reuse-checkpoint --rounds 3 \
        --cache $C --out "$OUT/cells-gen.json"
fi
step "regression memory"
timeout "$(cap 150)" python3 gpu/regression_memory.py --checkpoint $C/checkpoint-7b --out "$OUT/regression.json"
step "matrix cost"
timeout "$(cap 90)" python3 bench/matrix_cost.py --cells "$OUT/cells-tf.json" "$GEN" \
    --regression "$OUT/regression.json" --cache $C --out "$OUT/matrix-cost.json"
for graphs in 0 1; do
    [ $((BUDGET - SECONDS)) -gt 40 ] || break
    step "block update, TTT_BLOCK_GRAPHS=$graphs"
    TTT_BLOCK_GRAPHS=$graphs timeout "$(cap 40)" python3 bench/profile_stream_chunks.py --reps 5 \
        --warmup 2 --rows 15 --out "$OUT/stream-chunks-graphs$graphs" | sed -n '1,12p'
done
step "done"
date
