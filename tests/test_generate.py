"""generate / transcribe cells on the embedded default, collapse indicators, resume."""
import json
import subprocess
import sys

import jiwer
import pytest
import soundfile as sf

from ttt.base.result import load as load_result
from ttt.eval.cell import run_cell
from conftest import CELL_TTT, make_cell
from ttt.eval.generate import collapse_indicators
from ttt.eval.metrics import normalize

TTT = CELL_TTT


def cell(cache, **kw):
    return make_cell(cache, "g", [4.0], **kw)


def test_generate_cell(cache, tmp_path):
    out = tmp_path / "gen"
    metrics = run_cell(cell(cache, mode="generate"), out, log=lambda m: None)
    assert {"metrics.json", "out.wav", "transcript.jsonl", "transcript.txt", "telemetry.csv"} <= {
        p.name for p in out.iterdir()}
    audio, rate = sf.read(out / "out.wav")
    assert rate == 24000 and len(audio) > 24000  # most of 4 s decoded by Mimi
    assert metrics["wer"] is None and metrics["perplexity"] is None
    assert metrics["ttt_telemetry"]["updates"] == 2 * (50 // 8)  # 50 steps, 2 TTT layers
    c = metrics["collapse"]
    assert 0 <= c["pad_fraction"] <= 1 and c["words_per_min"] >= 0
    assert metrics["throughput"]["ms_per_step_p50"] > 0
    typed = load_result(out / "metrics.json")  # what the reports read: every key checked
    assert typed.collapse.pad_fraction == c["pad_fraction"] and typed.audio.file == "out.wav"


def test_transcribe_cell_wer_matches_jiwer(cache, tmp_path):
    out = tmp_path / "tr"
    metrics = run_cell(cell(cache, mode="transcribe", ttt={"enabled": False}), out, log=lambda m: None)
    rows = [json.loads(line) for line in (out / "transcript.jsonl").read_text().splitlines()]
    refs = [normalize(r["reference"]) for r in rows if normalize(r["reference"])]
    hyps = [normalize(r["hypothesis"]) for r in rows if normalize(r["reference"])]
    want = jiwer.process_words(refs, hyps)
    extra = sum(len(normalize(r["hypothesis"]).split()) for r in rows if not normalize(r["reference"]))
    assert metrics["wer"]["substitutions"] == want.substitutions
    assert metrics["wer"]["insertions"] == want.insertions + extra
    assert not (out / "out.wav").exists()
    assert load_result(out / "metrics.json").wer.ref_words == want.hits + want.substitutions + want.deletions


def test_collapse_indicators_on_known_text():
    words = "a b c a b c a b c d".split()
    tokens = [(i, 3 if i % 4 == 0 else 10) for i in range(8)]
    c = collapse_indicators(tokens, words, minutes=0.5)
    assert c["words_per_min"] == 20
    assert c["distinct_1"] == pytest.approx(4 / 10)
    assert c["distinct_2"] == pytest.approx(4 / 9)  # ab bc ca cd
    assert c["longest_repeated_ngram"] == 6  # "a b c a b c" occurs at 0 and 3
    assert c["pad_fraction"] == pytest.approx(2 / 8)


RESUME = r"""
import json, sys, torch
from moshi.utils.compile import no_compile
from ttt.moshi.model import load_checkpoint, resolve_model
from ttt.eval.generate import stream_user_channel
from ttt.data.codes import conversation_codes
from ttt.eval.cell import CellConfig, cell_items
cache, snap, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
from pathlib import Path
cache = Path(cache)
b = load_checkpoint(resolve_model("tiny-random", cache / "models"), ttt=%r, seed=0)
item = cell_items(CellConfig(cell="r", data={"demo": {"durations": [4.0], "seed": 3}}), cache)[0]
codes = conversation_codes(b.mimi, b.tokenizer, item, cache / "codes", b.mimi_id)
user = codes[:, 9:, :steps]
with no_compile():
    r = stream_user_channel(b.lm, b.mimi, user, seed=7, chunk=8, log=lambda m: None,
                            snapshot_path=Path(snap) if snap != "-" else None, snapshot_every=13)
print(json.dumps({"tokens": r.text_tokens, "telemetry": r.telemetry, "requeues": r.requeues,
                  "pcm": [float(abs(p).sum()) for p in r.pcm]}))
""" % (TTT,)


def test_resume_from_snapshot_in_new_process_is_identical(cache, tmp_path):
    run_cell(cell(cache, mode="transcribe"), tmp_path / "warm", log=lambda m: None)  # data cache

    def worker(snap, steps):
        done = subprocess.run([sys.executable, "-c", RESUME, str(cache), str(snap), str(steps)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    full = worker("-", 50)
    snap = tmp_path / "s.pt"
    worker(snap, 26)          # "preempted" after step 26: last snapshot at 26 (2 × 13)
    resumed = worker(snap, 50)
    assert resumed["requeues"] == 1
    assert resumed["tokens"] == full["tokens"]
    assert resumed["telemetry"] == full["telemetry"]
    assert resumed["pcm"] == pytest.approx(full["pcm"], rel=1e-5)


def test_mono_recording_with_reference_text(cache, tmp_path):
    import numpy as np
    t = np.arange(int(3.0 * 16000)) / 16000  # 16 kHz on purpose: resampled to 24 kHz
    sf.write(str(tmp_path / "u.wav"), (0.1 * np.sin(2 * np.pi * 220 * t)).astype("float32"), 16000)
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "u.wav", "duration": 3.0,
                                                  "text": "Hello there, Mr. Smith"}) + "\n")
    metrics = run_cell(cell(cache, mode="transcribe", ttt={"enabled": False},
                            data={"manifest": str(tmp_path / "m.jsonl")}), tmp_path / "mono",
                       log=lambda m: None)
    assert metrics["wer"]["ref_words"] == 4  # "hello there mister smith"
    assert metrics["steps"] == int(np.ceil(3.0 * 12.5))
    with pytest.raises(Exception, match="teacher_forced needs stereo"):
        run_cell(cell(cache, data={"manifest": str(tmp_path / "m.jsonl")}), tmp_path / "x",
                 log=lambda m: None)
