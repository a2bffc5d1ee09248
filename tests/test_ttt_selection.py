"""Issue 25 item 2: a TTT config that selects no layer is an error, not a silent TTT-off run: one
line naming the key, exit 2, before any job (preflight) or any heavy work (run-cell)."""
import os
import subprocess
import sys

import pytest

from ttt.base.config import TTTConfig
from ttt.launch.preflight import PreflightError, check_matrix


def test_selected_layers_refuses_an_enabled_ttt_on_no_layer():
    assert TTTConfig(start_layer=1, layer_frequency=2).selected_layers(4) == [1, 3]
    assert TTTConfig(enabled=False, start_layer=99).selected_layers(4) == []  # off is off
    with pytest.raises(ValueError, match=r"^start_layer: 4 selects no layer of a model with 4 layers"):
        TTTConfig(start_layer=4).selected_layers(4)
    with pytest.raises(ValueError, match=r"^layers: \[\] selects no layer"):
        TTTConfig(layers=()).selected_layers(4)
    with pytest.raises(ValueError, match=r"^layers: \[9\] out of range for a model with 4 layers"):
        TTTConfig(layers=(1, 9)).selected_layers(4)


CONFIG = {"families": ["f"], "f": {}}


def cell(ttt, model="ckpt"):
    return {"cell": "f/ttt~on", "family": "f", "model": model, "base": None, "mode": "teacher_forced",
            "data": {"demo": {"durations": [4.0], "seed": 0}}, "ttt": ttt, "window_s": 2}


def test_preflight_names_the_key_and_the_trained_layers_left_unused():
    trained = TTTConfig(start_layer=1, layer_frequency=2).to_dict()  # a TTT-trained checkpoint
    with pytest.raises(PreflightError) as info:
        check_matrix({**CONFIG, "ttt": {}}, {"c": cell({"start_layer": 12})}, trained, num_layers=12)
    assert str(info.value) == (
        "config ttt.start_layer: 12 selects no layer of a model with 12 layers (0-11); `enabled: "
        "false` runs without TTT; model ckpt's trained TTT layers [1, 3, 5, 7, 9, 11] would go "
        "unused (cell c)")
    with pytest.raises(PreflightError, match=r"^config ttt.layers: \[12\] out of range for a model "
                                             r"with 12 layers \(cell c\)$"):
        check_matrix({**CONFIG, "ttt": {}}, {"c": cell({"layers": [12]})}, None, num_layers=12)
    check_matrix(CONFIG, {"c": cell({"start_layer": 11})}, trained, num_layers=12)  # layer 11 only
    check_matrix(CONFIG, {"c": cell({"enabled": False, "start_layer": 99})}, trained, num_layers=12)


def test_run_cell_refuses_before_running(tmp_path):
    cfg = tmp_path / "cell.yaml"
    cfg.write_text(f"cell: sel\ndata: {{demo: {{durations: [4], seed: 0}}}}\nwindow_s: 2\n"
                   f"cache_dir: {tmp_path / 'cache'}\nttt: {{start_layer: 99}}\n")
    done = subprocess.run([sys.executable, "-m", "ttt", "run-cell", "--config", str(cfg), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_TORCH_COMPILE": "1"})
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: ttt.start_layer: 99 selects no layer of a model with 4 layers")
    assert not (tmp_path / "out").exists()
