#!/bin/bash
# Issue 27's GPU measurements at Moshi 7B (random bf16), in one device call (< 10 min):
# the fused-pass test on CUDA; bench_cells teacher-forced (2k/8k/32k, 2 rounds, profile at 2k);
# the regression cell's peak vs upstream's; bench_cells generate (1 round); the matrix's
# per-step costs (→ matrix-cost.json). Each step has its own time limit, so a slow one leaves the
# others their time. Wheels (moshi, soundfile, cffi, pycparser) carried in .whl; results in $OUT.
#   bash gpu/run_issue27.sh          # everything
#   bash gpu/run_issue27.sh again    # again without the fused test and generate (their JSON from
#                                    # an earlier call, carried in .whl/keep/cells-gen.json)
set -uo pipefail
OUT=${OUT:-/tmp/issue27-out}
mkdir -p "$OUT"
[ -d /tmp/site/moshi ] || python3 -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
C=/tmp/bc
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,power.limit --format=csv | tee "$OUT/gpu.txt"
GEN="$OUT/cells-gen.json"
[ "${1:-}" = again ] && GEN=.whl/keep/cells-gen.json
[ "${1:-}" = again ] || timeout 60 python3 -m pytest -q -m gpu tests/test_fused_w.py -p no:cacheprovider 2>&1 | tail -3 | tee -a "$OUT/gpu.txt"
timeout 200 python3 bench/bench_cells.py --parts teacher_forced --reuse-checkpoint --lengths 2048 8192 32768 \
    --rounds 2 --cache $C --out "$OUT/cells-tf.json" --profile "$OUT/profile-2048.txt"
timeout 100 python3 gpu/regression_memory.py --checkpoint $C/checkpoint-7b --out "$OUT/regression.json"
[ "${1:-}" = again ] || timeout 90 python3 bench/bench_cells.py --parts generate --reuse-checkpoint --rounds 1 \
    --cache $C --out "$OUT/cells-gen.json"
timeout 100 python3 bench/matrix_cost.py --cells "$OUT/cells-tf.json" "$GEN" \
    --regression "$OUT/regression.json" --cache $C --out "$OUT/matrix-cost.json"
date
