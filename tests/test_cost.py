"""The matrix's GPU cost (ttt/launch/cost.py, ``python -m ttt cost``): each cell priced linearly in
its length from measured per-step costs, summed per family. Expected figures are computed here
from the cost model's definition, not read back from the code."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ttt.launch import cost, matrix

REPO = Path(__file__).resolve().parent.parent

MEASURED = {
    "fixed_s_per_cell": 20.0,
    "generate_ms_per_step": {"off": 14.0, "on": 15.0},
    "decode_ms_per_frame": 0.5,
    "teacher_forced_ms_per_frame": {
        "context_3000": {"off": 0.05, "on": {"128": 0.08, "256": 0.06, "512": 0.055},
                         "ablation": {"no_conv": 0.058, "no_target": 0.059, "neither": 0.057}},
        "yarn": {"8192": {"off": 0.06, "on": 0.07}, "32768": {"off": 0.10, "on": 0.11}}},
    "peak_gb": {"tf_off": 17.0, "tf_on": 21.0, "generate_off": 17.5, "generate_on": 21.6,
                "regression": 17.2, "yarn_8192_off": 20.0, "yarn_8192_on": 24.0,
                "yarn_32768_off": 34.0, "yarn_32768_on": 38.0}}


@pytest.fixture
def full_cells():
    from snakemake.utils import validate
    from ttt.cli.cost import SCHEMA, _merged
    config = _merged(yaml.safe_load((REPO / "config" / "config.yaml").read_text()),
                     yaml.safe_load((REPO / "config" / "full.yaml").read_text()))
    validate(config, str(SCHEMA))
    return matrix.build_matrix(config)


def test_cells_are_priced_linearly_in_their_length(full_cells):
    m = MEASURED
    by_path = {p: cost.cell_seconds(c, m) for p, c in full_cells.items()}
    # a 60-minute generate cell, TTT on: 45,000 steps per conversation + Mimi's decode of the
    # first conversation's 45,000 frames
    [long_on] = [p for p, c in full_cells.items() if c["family"] == "long_form"
                 and c["data"]["demo"]["durations"][0] == 3600.0 and c["ttt"] != {"enabled": False}
                 and "stabiliser" not in p]
    n = len(full_cells[long_on]["data"]["demo"]["durations"])
    assert by_path[long_on] == pytest.approx(20 + n * 45000 * 15.0 / 1e3 + 45000 * 0.5 / 1e3)
    # the 16k YaRN cell with its A/B twin: halfway between the measured contexts, both passes
    [yarn16] = [p for p, c in full_cells.items() if c.get("yarn") and c["yarn"]["context"] == 16384 and c["ab"]]
    frames = (16384 / 12.5 + 1) * 12.5
    on = 0.07 + (0.11 - 0.07) * (16384 - 8192) / (32768 - 8192)
    off = 0.06 + (0.10 - 0.06) * (16384 - 8192) / (32768 - 8192)
    assert by_path[yarn16] == pytest.approx(20 + frames * (on + off) / 1e3)
    # lr grid at chunk 512 and the ablation without conv, 600 s each
    [c512] = [p for p, c in full_cells.items() if c["family"] == "lr_grid" and (c["ttt"] or {}).get("chunk_size") == 512][:1]
    assert by_path[c512] == pytest.approx(20 + 7500 * 0.055 / 1e3)
    [no_conv] = [p for p, c in full_cells.items() if c["family"] == "ablation" and "no_conv" in p]
    assert by_path[no_conv] == pytest.approx(20 + 7500 * 0.058 / 1e3)


def test_family_rows_sum_their_cells(full_cells):
    rows = cost.estimate(full_cells, MEASURED)
    assert set(rows) == {c["family"] for c in full_cells.values()}
    for family, row in rows.items():
        cells = {p: c for p, c in full_cells.items() if c["family"] == family}
        seconds = {p: cost.cell_seconds(c, MEASURED) for p, c in cells.items()}
        assert row["cells"] == len(cells)
        assert row["gpu_hours"] == pytest.approx(sum(seconds.values()) / 3600)
        assert row["longest_cell"] == max(seconds, key=seconds.get)
    assert rows["long_form"]["peak_gb"] == 21.6 and rows["yarn"]["peak_gb"] == 38.0
    assert rows["regression"]["peak_gb"] == 17.2


def test_cli_prints_a_line_per_family_and_refuses_a_bad_config(tmp_path, full_cells):
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({"device": "GPU X", "date": "2026-12-02", "measured": MEASURED}))
    cmd = [sys.executable, "-m", "ttt", "cost", "config/config.yaml", "config/full.yaml", "--costs", str(costs)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    families = {c["family"] for c in full_cells.values()}
    assert {ln.split(":")[0] for ln in lines} == {f"cost {f}" for f in families} | {"cost total"}
    assert "GPU X" in lines[-1]
    bad = tmp_path / "bad.yaml"
    bad.write_text("families: [nonsense_family]\n")
    done = subprocess.run(cmd[:4] + [str(bad)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_cpu_config_is_not_priced_with_gpu_costs():
    from snakemake.utils import validate
    from ttt.cli.cost import SCHEMA
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate(config, str(SCHEMA))
    lines = cost.lines(matrix.build_matrix(config), {"measured": MEASURED})
    assert len(lines) == 1 and "CPU" in lines[0]
