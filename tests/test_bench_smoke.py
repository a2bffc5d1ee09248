"""The 7B benchmark script runs end to end on the tiny config (CPU) and reports what it promises."""
import json
import runpy
import sys
from pathlib import Path

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
