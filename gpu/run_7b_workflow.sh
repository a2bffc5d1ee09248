#!/usr/bin/env bash
# The Snakemake workflow (the DAG `make run` drives) on Moshi's 7B config with random bf16 weights,
# on one GPU: builds the checkpoint directory (moshi's HF layout, bench/bench_load.py's `build`),
# runs `snakemake --profile profiles/local --configfile gpu/config-7b.yaml` and copies 5 files
# to $OUT. Run from the repository root, e.g. through the device tool (see gpu/README.md):
#
#   bash gpu/run_7b_workflow.sh                   # H100: about 5 minutes, ~16 GB written to /tmp
#   MODEL_CONFIG=tiny bash gpu/run_7b_workflow.sh # the same on CPU with the tiny config (a proof)
#
# Environment: OUT (default /tmp/ttt-7b-out), MODEL_CONFIG (7b | tiny), MODEL_DIR, CORES (cells at
# once, default 2), EXTRA_CONFIG (a config file merged last), WHEELS (default .whl-smk: installed into /tmp/ttt-site first when the
# workflow's packages are missing), NO_TORCH_COMPILE (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 NO_TORCH_COMPILE="${NO_TORCH_COMPILE:-1}"
OUT="${OUT:-/tmp/ttt-7b-out}"
MODEL_CONFIG="${MODEL_CONFIG:-7b}"
CORES="${CORES:-2}"
WHEELS="${WHEELS:-.whl-smk}"
mkdir -p "$OUT"
t_start=$(date +%s)
log() { echo "[run_7b_workflow $(date -u +%H:%M:%S)] $*"; }

NEEDED="import snakemake, submitit, matplotlib, moshi, soundfile, torch, numpy, pandas, yaml, safetensors, sentencepiece, einops"
if ! python3 -c "$NEEDED" 2>/dev/null; then
  [ -d "$WHEELS" ] || { echo "error: $WHEELS: no wheels, and the workflow's packages are missing" >&2; exit 2; }
  log "installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into /tmp/ttt-site"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/ttt-site "$WHEELS"/*.whl
  export PYTHONPATH="/tmp/ttt-site${PYTHONPATH:+:$PYTHONPATH}"
  python3 -c "$NEEDED" || { echo "error: packages still missing after installing $WHEELS" >&2; exit 2; }
fi
# The workflow's rules call `python`: the python3 that holds torch and the packages above (a
# wrapper, not a link: a link to a venv's python loses the venv's site-packages).
mkdir -p /tmp/ttt-bin
printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > /tmp/ttt-bin/python
chmod +x /tmp/ttt-bin/python
export PATH="/tmp/ttt-bin:$PATH"

case "$MODEL_CONFIG" in
  7b) MODEL_DIR="${MODEL_DIR:-/tmp/moshi7b-random/moshiko}"; BUILD_DEVICE=cuda; OVERRIDES=() ;;
  tiny) MODEL_DIR="${MODEL_DIR:-/tmp/moshi-tiny-random/moshiko}"; BUILD_DEVICE=cpu
        OVERRIDES=(device=cpu dtype=float32) ;;
  *) echo "error: MODEL_CONFIG must be 7b or tiny, got '$MODEL_CONFIG'" >&2; exit 2 ;;
esac

log "building the random $MODEL_CONFIG checkpoint in $MODEL_DIR"
t0=$(date +%s)
python3 - "$MODEL_DIR" "$MODEL_CONFIG" "$BUILD_DEVICE" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "bench")
from bench_load import build
from ttt.moshi.tiny import DEFAULT_LM_KWARGS
directory, config, device = sys.argv[1:]
size = build(Path(directory), None if config == "7b" else DEFAULT_LM_KWARGS, device)
print(f"{directory}: model.safetensors {size / 1e9:.2f} GB")
EOF
build_s=$(( $(date +%s) - t0 ))

log "snakemake: gpu/config-7b.yaml, model $MODEL_DIR ${OVERRIDES[*]:-}, $CORES cores"
t0=$(date +%s)
set +e
python3 -m snakemake --profile profiles/local --configfile gpu/config-7b.yaml ${EXTRA_CONFIG:-} \
  --config model="$MODEL_DIR" "${OVERRIDES[@]}" --cores "$CORES" --scheduler greedy \
  2>&1 | tee "$OUT/snakemake.log"
rc=${PIPESTATUS[0]}
set -e
workflow_s=$(( $(date +%s) - t0 ))

log "collecting results into $OUT (snakemake exit $rc)"
for f in cells.csv verdicts.csv; do
  [ -f "results/tables/$f" ] && cp "results/tables/$f" "$OUT/$f"
done
# Tables, plots, and each cell's small files (metrics, status, logs): one archive.
find results/tables results/plots results/cells results/prepare -type f -size -4M \
  \( -name '*.csv' -o -name '*.json' -o -name '*.log' -o -name '*.rst' -o -name '*.png' \
     -o -name '*.yaml' -o -name '*.out' -o -name '*.err' \) 2>/dev/null \
  | tar -czf "$OUT/results.tar.gz" -T -
python3 - "$OUT/summary.json" "$MODEL_CONFIG" "$MODEL_DIR" "$rc" "$build_s" "$workflow_s" \
  "$(( $(date +%s) - t_start ))" <<'EOF'
import json, platform, sys
import torch
out, config, model, rc, build_s, workflow_s, total_s = sys.argv[1:]
cuda = torch.cuda.is_available()
json.dump({"device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.machine()})",
           "torch": torch.__version__, "python": platform.python_version(),
           "model_config": config, "model_dir": model, "snakemake_exit": int(rc),
           "build_s": int(build_s), "workflow_s": int(workflow_s), "total_s": int(total_s)},
          open(out, "w"), indent=1)
EOF
cat "$OUT/summary.json"
python3 - <<'EOF' || true
import csv
for row in csv.DictReader(open("results/tables/verdicts.csv")):
    print(f"{row['signal']:34} {row['verdict']:10} {row['value'][:12]:12} {row['explanation'][:90]}")
EOF
exit "$rc"
