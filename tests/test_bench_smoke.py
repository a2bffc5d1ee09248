"""The 7B benchmark script runs end to end on the tiny config (CPU) and reports what it promises."""
import json
import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "bench" / "bench_7b.py"


def test_bench_script_tiny_smoke(tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    monkeypatch.setattr(sys, "argv", ["bench_7b.py", "--config", "tiny", "--device", "cpu",
                                      "--dtype", "float32", "--steps", "16", "--warmup", "2",
                                      "--lengths", "32", "300", "--reps", "1", "--out", str(out)])
    runpy.run_path(str(BENCH), run_name="__main__")
    data = json.loads(out.read_text())
    for key in ("device", "upstream_step_ms", "ttt_off_step_ms", "ttt_on_step_ms",
                "teacher_forced", "peak_mem_bytes", "ratios"):
        assert key in data
    on = data["ttt_on_step_ms"]
    assert set(on) == {"every6_c256", "every6_c1024", "l10_20_30_c256"}
    # 18 streamed steps, chunk 8 → exactly 2 updates in every TTT layer
    assert set(on["every6_c256"]["updates_per_layer"].values()) == {2}
    assert set(data["teacher_forced"]["ttt_off"]) == {"32", "300"}


CELLS = Path(__file__).parent.parent / "bench" / "bench_cells.py"


def test_bench_cells_tiny_smoke(tmp_path, monkeypatch):
    """Every mode through the cell code beside its upstream equivalent, on the tiny config."""
    out = tmp_path / "cells.json"
    monkeypatch.setattr(sys, "argv", ["bench_cells.py", "--config", "tiny", "--device", "cpu",
                                      "--dtype", "float32", "--lengths", "24", "--gen-steps", "14",
                                      "--rounds", "1", "--reps", "1", "--load-rounds", "1",
                                      "--min-seconds", "1e9", "--max-repeats", "3",
                                      "--cache", str(tmp_path / "cache"), "--out", str(out),
                                      "--profile", str(tmp_path / "profile.txt")])
    runpy.run_path(str(CELLS), run_name="__main__")
    data = json.loads(out.read_text())
    # the profile splits a TTT-on cell pass into its warm-up (untimed), the monitor's reads
    # (untimed) and the TTT layers' block updates (timed)
    on = (tmp_path / "profile.txt").read_text().split("== cell_ttt_on (sections)")[1]
    assert all(f" {name} " in on for name in ("cell::warm_up", "cell::observe", "ttt::stream_chunks"))
    # and the ops TTT on adds, by op: the block update is time the TTT-off cell never spends
    added = on.split("== cell_ttt_on - cell_ttt_off, self CPU ms per pass")[1].splitlines()
    update = next(line.split() for line in added if line.endswith(" ttt::stream_chunks"))
    assert float(update[0]) > 0 and float(update[2]) == 0.0
    assert data["complete"] and data["device"] == "cpu"
    gen = data["generate"]
    assert {"cell_ttt_off", "cell_ttt_on", "upstream_lmgen", "upstream_lmgen_mimi"} <= set(gen)
    dec = gen["decode"]
    assert dec["one_frame_per_call_bitwise_equal_to_inline_decode"] is True
    # several frames per call (rings widened): the same samples up to float summation order
    assert dec["pcm_max_abs_diff_to_inline_decode"] <= 1e-4 * max(1.0, dec["pcm_max_abs_inline"])
    assert gen["decode"]["frames"] > 0
    tf = data["teacher_forced"]["24"]
    for key in ("cell_ttt_off", "cell_ttt_on", "cell_ttt_on_ab", "cell_ttt_on_w0_every_block",
                "cell_ttt_on_no_diagnostics"):
        assert tf[key]["frames_per_s"] > 0 and set(tf[key]["timing"]) == {
            "load_s", "prepare_s", "run_s", "write_s"}
        # a short pass is repeated (as the inputs of one cell); the A/B cell runs once
        repeats = 1 if key == "cell_ttt_on_ab" else 3
        assert tf[key]["repeats"] == repeats and tf[key]["frames"] == 24 * repeats
        assert tf[key]["run_frames_per_s"] == pytest.approx(24 * repeats / tf[key]["timing"]["run_s"], rel=2e-2)
        assert tf[key]["graph_captures"] == tf[key]["graph_replays"] == 0  # no CUDA graphs on the CPU
    # the diagnostics only read: the scores are the same without them
    assert tf["cell_ttt_on_no_diagnostics"]["text_ppl"] == tf["cell_ttt_on"]["text_ppl"]
    assert tf["repeats"] == 3
    assert tf["plain_frames_per_s"] > 0 and set(tf["ratios"]) == {
        "cell_off_vs_plain", "cell_on_vs_plain", "ttt_on_vs_off_in_cell", "ab_run_vs_one_pass",
        "w0_every_block_on_vs_off_in_cell", "w0_every_block_on_vs_plain", "no_diagnostics_on_vs_off_in_cell"}
    # the same frames scored by the cell with TTT off and by upstream's lm(codes): same model
    assert tf["cell_ttt_off"]["text_ppl"] > 0
    assert len(data["loading"]["upstream_get_moshi_lm_s"]) == 1


TRAIN_STEP = Path(__file__).parent.parent / "bench" / "profile_train_step.py"


def test_profile_train_step_smoke(tmp_path, monkeypatch):
    """The suite's training step per variant and phase; the variants differ as the suite's do."""
    out = tmp_path / "step.json"
    monkeypatch.setattr(sys, "argv", ["profile_train_step.py", "--device", "cpu", "--batch", "2",
                                      "--frames", "48", "--steps", "1", "--warmup", "0",
                                      "--out", str(out), "--profile", str(tmp_path / "p.txt")])
    module = runpy.run_path(str(TRAIN_STEP), run_name="__main__")
    data = json.loads(out.read_text())
    assert set(data["variants"]) == {"ttt", "no_ttt", "full"} and data["batch_build_ms"] > 0
    for row in data["variants"].values():
        assert row["step"] >= row["forward_loss"] > 0 and row["backward"] > 0
    assert "== full" in (tmp_path / "p.txt").read_text()
    from ttt.moshi.surgery import ttt_layers
    built = {v: module["build"](v, 64, "cpu")[0] for v in ("ttt", "full")}
    assert sorted(ttt_layers(built["ttt"])) == [1, 3] and not ttt_layers(built["full"])
    assert built["full"].transformer.layers[0].self_attn.context == 512
