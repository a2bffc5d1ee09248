#!/bin/bash
# The control suite (issue 24), end to end on one GPU, run from the repository root:
# plain word-tone conversations → Mimi codebooks fitted by k-means to their latents → codes →
# offset test sets → SEEDS × {ttt, no_ttt, full} trained side by side for STEPS steps each (no
# wall-clock budget: the same config gives the same models on any machine) → each run's selected
# checkpoint (lowest held-out loss) scored on the offset sets → table, plots, per suite. $OUT gets
# report-<suite>.md, <suite>.tgz (report.json, offsets.png, curve.png, each run's config, log,
# summary and per-row scores; no weights), codes_stats.json and codebooks.json.
# Default suite: fresh (every training row a new word order, a repeat in every row), 3000 steps at
# batch 64: the random-lag copying circuit forms only after ~100k-190k rows (docs/controls.md, the
# H200 copy probe), so fewer steps leave even full attention at chance and the report's reading
# "inconclusive". The training conversations only lend their encoded words.
# Runs go round-robin over every visible GPU (CUDA_VISIBLE_DEVICES per run). 9 runs of 3000 x 64
# rows do not fit one 10-minute call on one H200: split them by VARIANTS and SEEDS over calls (the
# ceiling first: VARIANTS=full, to see that it copies at all) or use a machine of several GPUs.
# Training is by steps and reproducible across machines, so runs of different calls can be
# reported together: unpack their <suite>.tgz into one folder and run
#   python -m ttt.control.suite_report --runs <folder>/runs-<suite> --set <folder>/offsets --out R
# PACK=DIR: the data come from a codes pack (python -m ttt.data.codes_pack; natural English built on
# a machine with Festival by gpu/control/build_natural_pack.sh): no data building, fitting or
# encoding here; its data/{train,val,test} and base are used as built. Natural data: SUITES=natural
# (fresh rows whose turns are phrases as spoken: ttt/training/word_rows.py, fresh_unit phrase).
# CPU dry run (80 s on the shared 2-core machine):
#   DEVICE=cpu DURATION=6 TRAIN_COUNT=3 VAL_COUNT=2 TEST_COUNT=2 FIT_COUNT=2 STEPS=4 LOG_EVERY=2
#   SEEDS=0 OFFSETS=10,20,40 LENGTH=16 OFFSET_MIN=10 OFFSET_MAX=40 COPY_MIN=8 COPY_MAX=16 JOBS=1 BATCH=4
#   MIMI_BATCH=2 PYTHON=python
set -euo pipefail
export NO_TORCH_COMPILE=1 PYTHONUNBUFFERED=1
W=${WORK:-/tmp/suite}; DEVICE=${DEVICE:-cuda}; P=${PYTHON:-python3}; OUT=${OUT:-$W/out}
TRAIN_COUNT=${TRAIN_COUNT:-320}; VAL_COUNT=${VAL_COUNT:-16}; TEST_COUNT=${TEST_COUNT:-24}
FIT_COUNT=${FIT_COUNT:-60}; DURATION=${DURATION:-36}; JOBS=${JOBS:-12}
STEPS=${STEPS:-3000}; LOG_EVERY=${LOG_EVERY:-250}; SEEDS=${SEEDS:-"0 1 2"}; VARIANTS=${VARIANTS:-"ttt no_ttt full"}
OFFSETS=${OFFSETS:-40,80,120,160,240,320,400}; LENGTH=${LENGTH:-48}
OFFSET_MIN=${OFFSET_MIN:-40}; OFFSET_MAX=${OFFSET_MAX:-400}; FULL_CONTEXT=${FULL_CONTEXT:-512}
FRACTION=${FRACTION:-1.0}; COPY_MIN=${COPY_MIN:-32}; COPY_MAX=${COPY_MAX:-64}
BATCH=${BATCH:-64}; LR=${LR:-0.003}; WARMUP=${WARMUP:-100}
FRESH_FRAMES=${FRESH_FRAMES:-$($P -c "print(int($DURATION * 12.5))")}
mkdir -p "$W/runs" "$OUT"; [ -n "${PACK:-}" ] || mkdir -p "$W/data"
t0=$(date +%s); say() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
if [ -n "${PACK:-}" ]; then  # data encoded elsewhere (gpu/control/build_natural_pack.sh): no audio here
  for name in data cache fitted pack; do
    [ -e "$W/$name" ] && [ ! -L "$W/$name" ] && { echo "$W/$name exists: PACK needs a new WORK" >&2; exit 2; }
  done
  # a copy: unpacking rebuilds the base's Mimi (385 MB) and the runs fill the cache, which would
  # otherwise land in the pack itself (and push a carried .whl over the device's 64 MiB)
  mkdir -p "$W/pack" && cp -r "$PACK"/. "$W/pack"/
  $P -m ttt.data.codes_pack unpack "$W/pack" > /dev/null  # rebuilds the base's Mimi, sha256 checked
  pack=$(cd "$W/pack" && pwd)
  ln -sfn "$pack/data" "$W/data"; ln -sfn "$pack/base" "$W/fitted"; ln -sfn "$pack/cache" "$W/cache"
  say "pack $PACK: $(wc -l < "$W/data/train/manifest.jsonl") train conversations, base rebuilt"
else
  $P -m ttt.control data --out "$W/data/train" --count $TRAIN_COUNT --duration $DURATION --recurrent-fraction 0 --seed 0 --workers $JOBS > /dev/null &
  $P -m ttt.control data --out "$W/data/val" --count $VAL_COUNT --duration $DURATION --recurrent-fraction 0 --seed 1 > /dev/null &
  $P -m ttt.control data --out "$W/data/test" --count $TEST_COUNT --duration $DURATION --recurrent-fraction 0 --seed 2 > /dev/null &
  for job in $(jobs -p); do wait $job; done
  say "data: $(wc -l < "$W/data/train/manifest.jsonl") train conversations of $DURATION s"
  $P -m ttt.data.codebooks fit --base tiny-random --manifest "$W/data/train/manifest.jsonl" \
     --conversations $FIT_COUNT --out "$W/fitted" --device "$DEVICE" --cache-dir "$W/cache"
  say "codebooks fitted"
  $P -m ttt.control encode "$W/data/test/manifest.jsonl" "$W/data/val/manifest.jsonl" "$W/data/train/manifest.jsonl" \
     --base "$W/fitted" --device "$DEVICE" --cache-dir "$W/cache" --batch ${MIMI_BATCH:-24}
  $P -m ttt.data.codebooks stats --base tiny-random --base "$W/fitted" --manifest "$W/data/test/manifest.jsonl" \
     --out "$OUT/codes_stats.json" --device "$DEVICE" --cache-dir "$W/cache" > /dev/null
fi
$P -m ttt.data.recurrence build --manifest "$W/data/test/manifest.jsonl" --base "$W/fitted" \
   --cache-dir "$W/cache" --offsets $OFFSETS --length $LENGTH --out "$W/offsets"
[ -n "${PACK:-}" ] && say "offset sets (codes from the pack)" || say "encoded (fitted Mimi), code statistics, offset sets"
# the models' text vocabulary is the base tokenizer's (64 for the word tones, 1000 for English)
TEXT_CARD=$($P -c "import json, sys; c = json.load(open(sys.argv[1])); print(c.get('lm_kwargs', c)['text_card'])" "$W/fitted/config.json")
. gpu/control/mps.sh  # kernels of the runs side by side
GPUS=1; [ "$DEVICE" = cuda ] && GPUS=$(nvidia-smi -L | grep -c '^GPU' || echo 1)
[ "$DEVICE" = cuda ] && say "$GPUS GPU(s): runs go round-robin over them"
slot() { [ "$DEVICE" = cuda ] && echo "CUDA_VISIBLE_DEVICES=$(( $1 % GPUS ))" || echo "SUITE_SLOT=$1"; }
TTT_BLOCK="{start_layer: 1, layer_frequency: 2, chunk_size: 8, lr: 0.01, delta_clip_fro_norm: null, init_std: 0.5}"
# SUITES: fresh (rows of FRESH_FRAMES frames, new word orders built from the encoded training
# words, never seen twice: ttt/training/word_rows.py; copies COPY_MIN-COPY_MAX frames), plain (whole
# conversations; copies 32-64 frames) and mixed (rows of 10-frame spans of random conversations,
# copies 48-96 frames), trained side by side on the same data and codes. plain and mixed keep the
# first GPU run's recipe (repeats in 75 % of rows).
SUITES=${SUITES:-fresh}; n=0
for suite in $SUITES; do
  unit=word
  case $suite in fresh) mix=null; fresh=$FRESH_FRAMES; fraction=$FRACTION; lens="$COPY_MIN $COPY_MAX" ;;
               natural) mix=null; fresh=$FRESH_FRAMES; fraction=$FRACTION; lens="$COPY_MIN $COPY_MAX"; unit=phrase ;;
                 plain) mix=null; fresh=null; fraction=0.75; lens="32 64" ;;
                 mixed) mix=10; fresh=null; fraction=0.75; lens="48 96" ;;
                 *) echo "unknown suite $suite" >&2; exit 2 ;; esac
  set -- $lens
  for seed in $SEEDS; do
    for variant in $VARIANTS; do
      R="$W/runs-$suite/$variant-s$seed"; mkdir -p "$R"
      case $variant in ttt) block=$TTT_BLOCK; ctx=32 ;; no_ttt) block="{enabled: false}"; ctx=32 ;;
                       full) block="{enabled: false}"; ctx=$FULL_CONTEXT ;; esac
      sed -e "s#__WORK__#$W#g; s#__TTT__#$block#; s/__CONTEXT__/$ctx/; s/__STEPS__/$STEPS/; s/__SEED__/$seed/; s/__DEVICE__/$DEVICE/; s/__LOG_EVERY__/$LOG_EVERY/; s/__OFFSET_MIN__/$OFFSET_MIN/; s/__OFFSET_MAX__/$OFFSET_MAX/; s/__LEN_MIN__/$1/; s/__LEN_MAX__/$2/; s/__MIX__/$mix/; s/__FRESH__/$fresh/; s/__FRACTION__/$fraction/; s/__BATCH__/$BATCH/; s/__LR__/$LR/; s/__WARMUP__/$WARMUP/; s/__TEXT_CARD__/$TEXT_CARD/; s/__UNIT__/$unit/" \
          gpu/control/suite.yaml > "$R/train.yaml"
      gpu=$(slot $n); n=$((n + 1))
      env $gpu OMP_NUM_THREADS=1 $P -m ttt train --config "$R/train.yaml" --out "$R" > "$R/train.out" 2>&1 &
    done
  done
done
fail=0; for job in $(jobs -p); do wait $job || fail=1; done
for R in "$W"/runs-*/*; do echo "$(basename $(dirname $R))/$(basename $R): $(tail -n 1 $R/train.out)"; done
[ $fail = 0 ] || { say "a training run failed"; tail -n 5 "$W"/runs-*/*/train.out; exit 1; }
say "trained ($STEPS steps each)"
n=0; for R in "$W"/runs-*/*; do
  sel=$($P -c "import json,sys; print(json.load(open(sys.argv[1]))['selected']['checkpoint'])" "$R/summary.json")
  gpu=$(slot $n); n=$((n + 1))
  env $gpu $P -m ttt.control.offsets --checkpoint "$sel" --set "$W/offsets" --out "$R/offsets.json" --device "$DEVICE" &
done
fail=0; for job in $(jobs -p); do wait $job || fail=1; done; [ $fail = 0 ]
say "offset sets scored"
if [ -n "${PACK:-}" ]; then  # natural held-out conversations: TTT on vs its twin, plain vs recurrent
  for R in "$W"/runs-*/ttt-s*; do
    sel=$($P -c "import json,sys; print(json.load(open(sys.argv[1]))['selected']['checkpoint'])" "$R/summary.json")
    OMP_NUM_THREADS=2 $P -m ttt.control.natural --checkpoint "$sel" --manifest "$W/data/test/manifest.jsonl" \
      --cache-dir "$W/cache" --device "$DEVICE" --out "$R/natural.json" > "$R/natural.out" 2>&1 &
  done
  fail=0; for job in $(jobs -p); do wait $job || fail=1; done; [ $fail = 0 ]
  say "natural held-out set: $(cat "$W"/runs-*/ttt-s*/natural.out | tr '\n' ' ')"
fi
for suite in $SUITES; do
  $P -m ttt.control.suite_report --runs "$W/runs-$suite" --set "$W/offsets" --out "$W/report-$suite" > /dev/null &
done
for job in $(jobs -p); do wait $job || say "a report failed"; done
for suite in $SUITES; do
  cp "$W/report-$suite/report.md" "$OUT/report-$suite.md" && { echo "== $suite"; cat "$OUT/report-$suite.md"; } || true
  tar czf "$OUT/$suite.tgz" -C "$W" --exclude=checkpoint --exclude=best "report-$suite" "runs-$suite" offsets/manifest.json
done
cp "$W/fitted/codebooks.json" "$OUT/"
say "done"
