"""The _stream_chunks profiler runs on CPU in its smoke mode and covers both streamed paths."""
import json
import runpy
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "bench" / "profile_stream_chunks.py"


def test_profile_stream_chunks_cpu_smoke(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["profile_stream_chunks.py", "--device", "cpu", "--small",
                                      "--dtype", "float32", "--reps", "1", "--warmup", "0",
                                      "--out", str(tmp_path)])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    data = json.loads((tmp_path / "profile.json").read_text())
    assert data["device"] == "cpu" and data["size"]["block"] == 128
    assert {"ttt_on_layer_block1", "ttt_on_layer_block2", "stream_chunks_block1",
            "stream_chunks_block2", "ttt_off_layer", "parallel_form_layer"} <= set(data["ms_per_block"])
    launches = data["launches_per_block"]
    assert set(launches) == {"block1", "block2"} and min(launches.values()) > 20

    def z_w_products(block):  # Z·Wᵀ over the block's 128 tokens (hidden 704 → d 256)
        return sum(r["calls"] for r in data["top_ops"][block]
                   if r["op"] == "aten::mm" and r["input_shapes"].startswith("[[128, 704], [704, 256]"))
    # the first block reuses its output for ℓ(W⁽⁰⁾); the second is off the default cadence
    # (ttt.initial_loss_every 4): no z·W⁽⁰⁾ᵀ over its whole block, only the output's z·Wᵀ
    assert (z_w_products("block1"), z_w_products("block2")) == (1, 1)
    tables = (tmp_path / "tables.txt").read_text()
    assert "(a) ms per block" in tables and "(c) _stream_chunks block2" in tables
