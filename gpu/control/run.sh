#!/bin/bash
# The positive control, end to end on one GPU (run from a folder holding this project's ttt/ and
# gpu/): data → Mimi codes (strict fp32, equal to a CPU encode) → training → the held-out test
# table (trained TTT settings, production flags, untrained). $OUT gets the checkpoint's LM files,
# the training log and control.json.
set -euo pipefail
export NO_TORCH_COMPILE=1 PYTHONUNBUFFERED=1
STEPS=${STEPS:-877}   # optimizer steps (the shipped default trained 877); never wall time
W=/tmp/ctl; mkdir -p $W
P=python3
t0=$(date +%s)
$P -m ttt.control data --out $W/data/train --count ${TRAIN_COUNT:-2500} --recurrent-fraction 0.75 --seed 0 --workers 13 &
$P -m ttt.control data --out $W/data/val --count 48 --seed 1 --workers 1 &
$P -m ttt.control data --out $W/data/test --count 64 --seed 2 --workers 2 &
wait
echo "data $(( $(date +%s) - t0 )) s"
$P -m ttt.control encode $W/data/train/manifest.jsonl $W/data/val/manifest.jsonl $W/data/test/manifest.jsonl --device cuda --cache-dir $W/cache --batch 32
echo "encoded $(( $(date +%s) - t0 )) s"; sha256sum $W/cache/models/tiny-seed0/mimi.safetensors
sed -e "s/TTT_LR/${TTT_LR:-0.01}/; s/CHUNK/${CHUNK:-8}/; s/__STEPS__/$STEPS/" gpu/control/variant.yaml > $W/train.yaml
$P -m ttt train --config $W/train.yaml --out $W/run > $W/train.log 2>&1
echo "trained $(( $(date +%s) - t0 )) s"; tail -n 2 $W/train.log
C=$W/run/checkpoint; M=$W/data/test/manifest.jsonl
$P -m ttt.control evaluate --checkpoint $C --manifest $M --out $W/test.json --cache-dir $W/cache --device cuda
$P -m ttt.control evaluate --checkpoint $C --manifest $M --out $W/test-prod.json --cache-dir $W/cache --device cuda --lr 1e-3 --tau 1e-5 > /dev/null
$P -m ttt.control evaluate --checkpoint $C --manifest $M --out $W/test-untrained.json --cache-dir $W/cache --device cuda --untrained-seed 0 > /dev/null
$P - <<'PY'
import json, hashlib, pathlib, shutil, torch
from ttt.base.identity import file_digest
from ttt.data.conversations import read_manifest
W = pathlib.Path("/tmp/ctl")
digest = lambda p: hashlib.sha256(pathlib.Path(p).read_bytes()).hexdigest()
out = {"test": json.load(open(W / "test.json")), "test_production_flags": json.load(open(W / "test-prod.json")),
       "test_untrained": json.load(open(W / "test-untrained.json")),
       "summary": json.load(open(W / "run/summary.json")),
       "mimi_sha256": digest(W / "cache/models/tiny-seed0/mimi.safetensors"),
       "data_sha256": {s: digest(W / f"data/{s}/manifest.jsonl") for s in ("train", "val", "test")},
       "data_content_sha256": {s: hashlib.sha256("".join(file_digest(i.path) for i in read_manifest(W / f"data/{s}/manifest.jsonl")).encode()).hexdigest() for s in ("train", "val", "test")}}
json.dump(out, open(W / "control.json", "w"), indent=1)
key = "mimi-" + out["mimi_sha256"][:12]
(W / "codes").mkdir(exist_ok=True)
for item in read_manifest(W / "data/test/manifest.jsonl")[:2]:
    shutil.copy(W / f"cache/codes/{file_digest(item.path)[:24]}-{key}.pt", W / "codes" / f"{item.path.stem}.pt")
PY
C=$W/run/checkpoint
cp $C/model.safetensors $C/config.json $C/tokenizer.model $W/control.json $W/train.yaml $W/run/train_log.csv "$OUT"/
tar czf "$OUT"/extra.tgz -C $W train.log codes
echo "done $(( $(date +%s) - t0 )) s"
