#!/bin/bash
# The speech positive control, end to end on one GPU (run from the repository root, with the
# bundle of `python -m ttt.data.speech_bundle pack` in $BUNDLE): unpack the synthesis cache
# (sha256-checked) → spoken-word conversations by `python -m ttt speech --unit word` (no Festival
# needed: every word is cached) → Mimi codes (strict fp32) → `ttt train` → the held-out test
# table (trained TTT settings, production flags, untrained). $OUT gets the checkpoint's LM files,
# the training config and log, and control.json (+ extra.tgz: full training log, 2 test codes).
# A CPU dry run (docs/controls.md): DEVICE=cpu STEPS=5 TRAIN_COUNT=4 VAL_COUNT=1 TEST_COUNT=2
# JOBS=2 DURATION=16 PYTHON=.../.venv/bin/python BUNDLE=... WORK=... OUT=... gpu/control/run_speech.sh
set -euo pipefail
export NO_TORCH_COMPILE=1 PYTHONUNBUFFERED=1
B=${BUNDLE:-.ctl-speech}; W=${WORK:-/tmp/ctls}; DEVICE=${DEVICE:-cuda}; P=${PYTHON:-python3}
# STEPS: optimizer steps (default: the committed H100 run's 2390). Never wall time: the step count,
# and so the model, must not depend on how fast the machine encodes or trains (issue 24).
STEPS=${STEPS:-2390}; TRAIN_COUNT=${TRAIN_COUNT:-1200}; JOBS=${JOBS:-12}
VAL_COUNT=${VAL_COUNT:-16}; TEST_COUNT=${TEST_COUNT:-32}   # per group (recurrent, plain)
DURATION=${DURATION:-32}; RECUR_AFTER=${RECUR_AFTER:-5}; BATCH=${BATCH:-16}
# STOP_AFTER=encode: stop once the Mimi codes are cached (a later run with the same settings and
# WORK finds them and goes straight to training)
OUT=${OUT:-$W/out}; mkdir -p "$W/data" "$OUT"
t0=$(date +%s)
$P -m ttt.data.speech_bundle unpack "$B" --cache "$W/sentences"
echo "unpacked $(( $(date +%s) - t0 )) s"
# DURATION-s conversations (32), turns of 3-8 words, repeats > RECUR_AFTER s (5 s = 62 frames,
# ~2x the context) after their source with probability 0.7; train words: the train part's 600 most frequent, held-out: the
# held-out part's 300 (115 of them not in the train list)
speech() { $P -m ttt speech --unit word --duration $DURATION --recur-after $RECUR_AFTER --recur-fraction 0.7 \
             --cache "$W/sentences" --text-source "$B/devil.dict.dz" "$@" > /dev/null; }
per=$(( (TRAIN_COUNT + JOBS - 1) / JOBS )); rec=$(( JOBS * 3 / 4 ))   # 3/4 of the shards recurrent
for k in $(seq 0 $((JOBS - 1))); do
  flag=$([ $k -lt $rec ] && echo --recurrence || true)
  speech --out "$W/data/train-$k" --count $per --seed $((100 + k)) --text-part train --vocabulary-size 600 $flag &
done
speech --out "$W/data/val-rec" --count $VAL_COUNT --seed 300 --text-part heldout --vocabulary-size 300 --recurrence &
speech --out "$W/data/val-plain" --count $VAL_COUNT --seed 301 --text-part heldout --vocabulary-size 300 &
speech --out "$W/data/test-rec" --count $TEST_COUNT --seed 400 --text-part heldout --vocabulary-size 300 --recurrence &
speech --out "$W/data/test-plain" --count $TEST_COUNT --seed 401 --text-part heldout --vocabulary-size 300 &
for job in $(jobs -p); do wait $job; done   # a failed shard fails the run (set -e)
$P -m ttt.data.speech_bundle merge --out "$W/data/train.jsonl" "$W"/data/train-*/manifest.jsonl > /dev/null
$P -m ttt.data.speech_bundle merge --out "$W/data/val.jsonl" "$W/data/val-rec/manifest.jsonl" "$W/data/val-plain/manifest.jsonl" > /dev/null
$P -m ttt.data.speech_bundle merge --out "$W/data/test.jsonl" "$W/data/test-rec/manifest.jsonl" "$W/data/test-plain/manifest.jsonl" > /dev/null
echo "data $(( $(date +%s) - t0 )) s: $(wc -l < "$W/data/train.jsonl") train, $(wc -l < "$W/data/test.jsonl") test"
$P -m ttt.data.speech_bundle base --out "$W/base" --tokenizer "$B/tokenizer.model" \
   --lm-kwargs '{"text_card": 1000}' --cache-root "$W/cache/models" > /dev/null
$P -m ttt.control encode "$W/data/test.jsonl" "$W/data/val.jsonl" "$W/data/train.jsonl" \
   --base "$W/base" --device "$DEVICE" --cache-dir "$W/cache" --batch ${MIMI_BATCH:-24}  # 24 x 32 s: run.sh's 32 x 24 s
spent=$(( $(date +%s) - t0 )); echo "encoded $spent s"
[ "${STOP_AFTER:-}" = encode ] && exit 0
echo "training for $STEPS steps"
sed -e "s#WORK#$W#g; s/DEVICE/$DEVICE/; s/TTT_LR/${TTT_LR:-0.01}/; s/CHUNK/${CHUNK:-8}/; s/__STEPS__/$STEPS/; s/BATCH/$BATCH/; s/LOG_EVERY/${LOG_EVERY:-50}/" \
    gpu/control/variant_speech.yaml > "$W/train.yaml"
$P -m ttt train --config "$W/train.yaml" --out "$W/run" > "$W/train.log" 2>&1 || { tail -n 20 "$W/train.log"; exit 1; }
echo "trained $(( $(date +%s) - t0 )) s"; tail -n 2 "$W/train.log"
C=$W/run/checkpoint; M=$W/data/test.jsonl
ev() { $P -m ttt.control evaluate --checkpoint "$C" --manifest "$M" --cache-dir "$W/cache" --device "$DEVICE" "$@"; }
ev --out "$W/test.json" > "$W/test.txt"; grep -E "^(text|audio)\.(all|beyond_context)\." "$W/test.txt" || true
ev --out "$W/test-prod.json" --lr 1e-3 --tau 1e-5 > /dev/null
ev --out "$W/test-untrained.json" --untrained-seed 0 > /dev/null
echo "evaluated $(( $(date +%s) - t0 )) s"
COMPARABLE=$([ "$DURATION/$RECUR_AFTER/$VAL_COUNT/$TEST_COUNT" = 32/5/16/32 ] && echo 1 || echo 0) \
WORK=$W BUNDLE=$B $P - <<'PY'
import hashlib, json, os, pathlib, shutil, types
from ttt.data.conversations import read_manifest
from ttt.data.codes import _codes_key
from ttt.data.speech_bundle import content_digest
from ttt.base.identity import file_digest
from ttt.moshi.checkpoints import resolve_checkpoint
W, B = pathlib.Path(os.environ["WORK"]), pathlib.Path(os.environ["BUNDLE"])
digest = lambda p: hashlib.sha256(pathlib.Path(p).read_bytes()).hexdigest()
index = json.loads((B / "index.json").read_text())
data = {s: W / f"data/{s}.jsonl" for s in ("train", "val", "test")}
content = {s: content_digest(m) for s, m in data.items()}
expected = index.get("expected_content_sha256", {})
out = {"test": json.load(open(W / "test.json")), "test_production_flags": json.load(open(W / "test-prod.json")),
       "test_untrained": json.load(open(W / "test-untrained.json")),
       "summary": json.load(open(W / "run/summary.json")),
       "mimi_sha256": digest(W / "base/mimi.safetensors"),
       "tokenizer_sha256": digest(B / "tokenizer.model"),
       "bundle_index_sha256": digest(B / "index.json"),
       "data_sha256": {s: digest(m) for s, m in data.items()},
       "data_content_sha256": content,
       "data_equals_cpu_build": ({s: content[s] == v for s, v in expected.items() if s in content}
                                 if os.environ["COMPARABLE"] == "1" else
                                 "n/a: other set sizes than the bundle's CPU build (32 s, 16 + 32)")}
json.dump(out, open(W / "control.json", "w"), indent=1)
print("data equals the CPU build:", out["data_equals_cpu_build"])
sources = resolve_checkpoint(W / "base")  # the codes' cache key, as ttt train computes it
mimi = types.SimpleNamespace(num_codebooks=sources.num_codebooks)
(W / "codes").mkdir(exist_ok=True)
items = read_manifest(data["test"])
for item in items[:2]:
    key = _codes_key(mimi, item, file_digest(sources.mimi))[:32]
    shutil.copy(W / f"cache/codes/{key}.safetensors", W / "codes" / f"{item.path.stem}.safetensors")
# the first test conversation encoded again on this machine's CPU, one at a time: equal to the
# (batched, possibly GPU) codes the model was scored on?
import torch
from safetensors.torch import load_file
from ttt.data.conversations import load_audio
from ttt.moshi.model import load_mimi
cpu_mimi = load_mimi(sources, "cpu")
with torch.no_grad():
    again = cpu_mimi.encode(torch.from_numpy(load_audio(items[0].path))[:, None]).long()
used = load_file(str(W / "codes" / f"{items[0].path.stem}.safetensors"))["codes"]
out["codes_equal_cpu_encode"] = bool(torch.equal(again, used))
out["codes_cpu_mismatch_fraction"] = float((again != used).float().mean())
json.dump(out, open(W / "control.json", "w"), indent=1)
print("codes equal a CPU encode:", out["codes_equal_cpu_encode"], out["codes_cpu_mismatch_fraction"])
PY
cp "$C/model.safetensors" "$C/config.json" "$C/tokenizer.model" "$W/control.json" "$W/train.yaml" "$W/run/train_log.csv" "$OUT"/
tar czf "$OUT/extra.tgz" -C "$W" train.log test.txt codes data/test.jsonl
echo "done $(( $(date +%s) - t0 )) s"
