"""The cell engine on the embedded default: outputs, perplexity vs lm(codes), bad inputs."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from ttt.base.result import SCHEMA_VERSION
from ttt.base.result import load as load_result
from ttt.eval.cell import CellConfig, cell_items, run_cell
from conftest import CELL_TTT, make_cell
from ttt.data.conversations import DataError, read_manifest
from ttt.data.codes import conversation_codes
from ttt.data.demo import write_demo_conversation
from ttt.moshi.model import CheckpointError, load_checkpoint, resolve_model
from ttt.moshi.tiny import DEMO_WORDS

TTT = CELL_TTT


def cell(cache, **kw):
    return make_cell(cache, "t", [6.0], **kw)


def test_teacher_forced_cell_outputs_and_perplexity(cache, tmp_path):
    out = tmp_path / "cell"
    metrics = run_cell(cell(cache, ab=True), out, log=lambda m: None)
    assert sorted(p.name for p in out.iterdir()) == [
        "diagnostics.csv", "metrics.json", "perplexity.png", "telemetry.csv", "telemetry.png",
        "timeseries.csv", "token_nll.npz"]
    saved = json.loads((out / "metrics.json").read_text())
    typed = load_result(out / "metrics.json")  # what the reports read: every key checked
    assert typed.schema_version == SCHEMA_VERSION and typed.ab.pre_update_logits_rel_err < 1e-6
    for key in ("cell", "family", "mode", "ttt", "config", "provenance", "perplexity", "wer",
                "throughput", "memory", "ttt_telemetry", "diverged", "requeues"):
        assert key in saved, key
    assert saved["provenance"]["versions"]["moshi"] == "0.2.13"
    assert saved["ttt"] is True and saved["diverged"] is False
    assert saved["ttt_telemetry"]["updates"] == 2 * (math.ceil(6 * 12.5) // 8)  # 2 layers, 9 chunks
    assert saved["ab"]["pre_update_logits_rel_err"] < 1e-6
    timing = saved["timing"]  # wall seconds per phase, the run measured apart from the rest
    assert set(timing) == {"load_s", "prepare_s", "run_s", "write_s"}
    assert all(v > 0 for v in timing.values())
    assert timing["load_s"] == pytest.approx(saved["load_s"], abs=1e-3)
    thr = saved["throughput"]
    assert thr["frames_per_s"] == thr["tokens_per_s"] > 0 and thr["block"] % 8 == 0
    assert thr["ms_per_block_p90"] >= thr["ms_per_block_p50"] > 0
    # Independent: exp(mean CE) from lm(codes) on the same tokens, with moshi's masks.
    bundle = load_checkpoint(resolve_model("tiny-random", cache / "models"), ttt=TTT, seed=0)
    item = cell_items(cell(cache), cache)[0]
    codes = conversation_codes(bundle.mimi, bundle.tokenizer, item, cache / "codes", bundle.mimi_id)
    with torch.no_grad():
        lm_out = bundle.lm(codes)
    mask = lm_out.text_mask
    ce = F.cross_entropy(lm_out.text_logits[mask], codes[:, :1][mask])
    assert metrics["perplexity"]["text"] == pytest.approx(math.exp(ce.item()), rel=1e-5)
    rows = (out / "timeseries.csv").read_text().splitlines()
    assert rows[0].startswith("item,start_s,text_ppl,audio_ppl") and len(rows) > 2


def test_ttt_off_cell_has_no_telemetry(cache, tmp_path):
    metrics = run_cell(cell(cache, ttt={"enabled": False}), tmp_path / "off", log=lambda m: None)
    assert metrics["ttt"] is False and metrics["ttt_telemetry"] is None


def test_existing_output_directory_is_refused(cache, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="never shares a directory"):
        run_cell(cell(cache), tmp_path / "taken", log=lambda m: None)


def _manifest(tmp_path, wav_name="a.wav", duration=3.0):
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": wav_name, "duration": duration}) + "\n")
    return tmp_path / "m.jsonl"


@pytest.mark.parametrize("problem,message", [
    ("missing_audio", "audio file not found"),
    ("corrupt_audio", "unreadable or unsupported audio"),
    ("unsupported_format", "unreadable or unsupported audio"),
    ("mono", "1 channel"),
    ("empty_manifest", "empty manifest"),
    ("malformed_alignments", "expected {\"alignments\": [[word, [start, end], speaker]"),
    ("no_alignments", "alignments file missing"),
])
def test_bad_inputs_fail_with_one_line_error_and_no_output(cache, tmp_path, problem, message):
    wav = tmp_path / "a.wav"
    write_demo_conversation(wav, 3.0, seed=1, words=DEMO_WORDS)
    manifest = _manifest(tmp_path)
    if problem == "missing_audio":
        wav.unlink()
    elif problem == "corrupt_audio":
        wav.write_bytes(b"RIFF\x00\x00not really a wav file")
    elif problem == "unsupported_format":
        wav.write_bytes(b"%PDF-1.4 this is a document, not audio")
    elif problem == "mono":
        sf.write(str(wav), np.zeros(24000, dtype=np.float32), 24000)
    elif problem == "empty_manifest":
        manifest.write_text("\n")
    elif problem == "malformed_alignments":  # (words past the end are dropped: test_finetune_data)
        (tmp_path / "a.json").write_text(json.dumps({"alignments": [["hi", 2.0, "SPEAKER_MAIN"]]}))
    elif problem == "no_alignments":
        (tmp_path / "a.json").unlink()
    config = tmp_path / "cell.yaml"
    config.write_text(json.dumps({"cell": "bad", "model": "tiny-random", "data": {"manifest": str(manifest)},
                                  "cache_dir": str(cache)}))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "ttt", "run-cell", "--config", str(config),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert message in error and ("a.wav" in error or "a.json" in error or "m.jsonl" in error), error
    assert not out.exists() and not list(tmp_path.glob(".out.tmp*"))


def test_bad_cell_config_and_checkpoint_errors(cache, tmp_path):
    with pytest.raises(ValueError, match="^mode:"):
        CellConfig.from_dict({"cell": "x", "mode": "dance"})
    with pytest.raises(ValueError, match="unknown key.*windows"):
        CellConfig.from_dict({"cell": "x", "windows": 3})
    with pytest.raises(ValueError, match="^chunk_size:"):
        CellConfig.from_dict({"cell": "x", "ttt": {"chunk_size": 0}})
    with pytest.raises(CheckpointError, match="no LM weights \\(consolidated.safetensors or model.safetensors\\)$"):
        load_checkpoint(tmp_path)
    tiny = resolve_model("tiny-random", cache / "models")
    with pytest.raises(CheckpointError, match="ttt.layers: \\[7\\] out of range for a model with 4 layers"):
        load_checkpoint(tiny, ttt={"layers": [7]})
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


def test_divergence_ends_the_cell_cleanly_with_partial_results(cache, tmp_path):
    """An absurd learning rate without clipping blows the fast weights up: the cell stops at the
    first non-finite telemetry, records diverged, and still writes its directory."""
    boom = {**TTT, "lr": 1e30, "delta_clip_fro_norm": None}
    # blocks of 2 chunks: the cell checks after each block (telemetry has a row per chunk)
    metrics = run_cell(cell(cache, ttt=boom, block=16), tmp_path / "boom", log=lambda m: None)
    assert metrics["diverged"] is True
    rows = (tmp_path / "boom" / "telemetry.csv").read_text().splitlines()
    assert 1 < len(rows) < 1 + 2 * 9  # stopped before the last of 9 chunks × 2 layers
    saturated = run_cell(cell(cache, ttt={**TTT, "delta_clip_fro_norm": 1e-9}, clip_saturation=0.9),
                         tmp_path / "sat", log=lambda m: None)
    assert saturated["diverged"] is True and saturated["ttt_telemetry"]["clip_events"] >= 8


def test_telemetry_totals_add_every_input(cache, tmp_path):
    """Each input streams from a fresh state; the cell's update count is the sum over inputs."""
    one = run_cell(make_cell(cache, "one", [4.0], diagnostics_every=0), tmp_path / "one",
                   log=lambda m: None)
    two = run_cell(make_cell(cache, "two", [4.0, 4.0], diagnostics_every=0), tmp_path / "two",
                   log=lambda m: None)
    assert one["ttt_telemetry"]["updates"] > 0
    assert two["ttt_telemetry"]["updates"] == 2 * one["ttt_telemetry"]["updates"]


def test_teacher_forced_cell_loads_mimi_only_to_encode(cache, tmp_path, monkeypatch):
    """Mimi is loaded on first use: a cell whose codes the prepare job cached never loads it
    (its weights never sit beside the LM on the device), and a cell that had to encode drops it
    before the measured pass. ``load_mimi`` is wrapped to count calls, still loading for real."""
    import ttt.moshi.model as model
    from ttt.eval.prepare import prepare

    loads = []
    real = model.load_mimi
    monkeypatch.setattr(model, "load_mimi", lambda *a, **k: loads.append(a) or real(*a, **k))
    encode = make_cell(cache, "t", [3.0], data={"demo": {"durations": [3.0], "seed": 11}})
    seen = {}
    original = model.Bundle.release_mimi

    def release(self):
        seen["loaded before release"] = self.loaded_mimi is not None
        original(self)
    monkeypatch.setattr(model.Bundle, "release_mimi", release)
    run_cell(encode, tmp_path / "encoded", log=lambda m: None)
    assert len(loads) == 1 and seen["loaded before release"]
    cached = make_cell(cache, "t", [3.0], data={"demo": {"durations": [3.0], "seed": 12}})
    prepare(cached)  # the workflow's prepare job: Mimi and the tokenizer alone
    loads.clear()
    metrics = run_cell(cached, tmp_path / "cached", log=lambda m: None)
    assert loads == [] and seen["loaded before release"] is False
    assert math.isfinite(metrics["perplexity"]["text"])
