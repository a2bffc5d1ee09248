#!/bin/bash
# Natural English conversations for the control suite (issue 24 item 4), built where Festival is
# (a CPU machine: `make speech-deps`) and packed for a GPU machine that has neither Festival nor
# room for the audio: run from the repository root, then carry $OUT and run there
#   PACK=$OUT SUITES=natural gpu/control/run_suite.sh
# Steps: a base whose tokenizer covers English (ttt.data.english_tokenizer, trained on the WordNet
# train part) → natural conversations (ttt.data.natural): train and validation from the train text
# in Festival's ked voice, test from the held-out text in slt and kal (text and voices unseen in
# training) → Mimi codebooks fitted to the training speech → every conversation encoded → packed
# (ttt.data.codes_pack: codes, alignments, the base with its Mimi as a delta over tiny-random).
# Encoding dominates: about 0.4 s of CPU per second of stereo audio on the shared 2-core machine,
# so the default (2 × 100 training conversations of 36 s) takes about an hour; run it niced in the
# background. Toy: TRAIN_COUNT=2 VAL_COUNT=1 TEST_COUNT=1 FIT_COUNT=2 DURATION=16 (3 min).
set -euo pipefail
export PYTHONUNBUFFERED=1
W=${WORK:-/tmp/natural-build}; P=${PYTHON:-python3}; OUT=${OUT:-$W/pack}
TRAIN_COUNT=${TRAIN_COUNT:-100}; VAL_COUNT=${VAL_COUNT:-4}; TEST_COUNT=${TEST_COUNT:-12}  # of each kind
DURATION=${DURATION:-36}; FIT_COUNT=${FIT_COUNT:-40}; RECUR_AFTER=${RECUR_AFTER:-12}
mkdir -p "$W"
t0=$(date +%s); say() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
$P -m ttt.data.english_tokenizer --base tiny-random --out "$W/english" --cache-dir "$W/cache" > "$W/tokenizer.json"
say "English tokenizer, held-out coverage: $($P -c "import json, sys; print(json.load(open(sys.argv[1]))['heldout_coverage'])" "$W/tokenizer.json")"
recur=(--recur-after "$RECUR_AFTER" --duration "$DURATION")
$P -m ttt.data.natural --out "$W/data/train" --count "$TRAIN_COUNT" --text-part train --voices ked ked --seed 0 "${recur[@]}" > /dev/null
$P -m ttt.data.natural --out "$W/data/val" --count "$VAL_COUNT" --text-part train --voices ked ked --seed 1 "${recur[@]}" > /dev/null
$P -m ttt.data.natural --out "$W/data/test" --count "$TEST_COUNT" --text-part heldout --seed 2 "${recur[@]}" > /dev/null
say "conversations: $(cat "$W"/data/{train,val,test}/manifest.jsonl | wc -l)"
$P -m ttt.data.codebooks fit --base "$W/english" --manifest "$W/data/train/manifest.jsonl" \
   --conversations "$FIT_COUNT" --out "$W/fitted" --cache-dir "$W/cache" > /dev/null
say "codebooks fitted"
$P -m ttt.control encode "$W/data/test/manifest.jsonl" "$W/data/val/manifest.jsonl" "$W/data/train/manifest.jsonl" \
   --base "$W/fitted" --cache-dir "$W/cache" --batch "${MIMI_BATCH:-4}"
say "encoded"
$P -m ttt.data.codes_pack pack --base "$W/fitted" --reference tiny-random --cache-dir "$W/cache" \
   --manifest "train=$W/data/train/manifest.jsonl" --manifest "val=$W/data/val/manifest.jsonl" \
   --manifest "test=$W/data/test/manifest.jsonl" --out "$OUT"
say "packed: $OUT ($(du -sh "$OUT" | cut -f1))"
