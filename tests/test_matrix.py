"""The matrix builder (ttt/launch/matrix.py, issue 26 item 6): the workflow's config → every cell's
path and cell config, unit-tested without Snakemake. Expected counts and values are derived here
from the config (the paper's families as the README describes them), not from the builder."""
from pathlib import Path

import pytest
import yaml

from ttt.launch import matrix
from ttt.launch.calibration import SCENARIOS
from ttt.report.tables import cell_params

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def config():
    """The default config as the workflow holds it: validated, the schema's defaults filled in."""
    from snakemake.utils import validate
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate(cfg, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    return cfg


def by_family(cells):
    out = {}
    for path, cell in cells.items():
        family, params = cell_params(path)
        assert cell["family"] == family and cell["cell"] == path
        out.setdefault(family, []).append((params, cell))
    return out


def test_cell_count_per_family_follows_the_config(config):
    cells = matrix.build_matrix(config)
    fams = by_family(cells)
    expected = {
        "short_form": 2,  # TTT on and off
        # on, off, and stabilised when a stabiliser is configured
        "long_form": (2 + bool(config["long_form"].get("stabiliser"))) * len(config["long_form"]["durations_s"]),
        "yarn": 2 * len(config["yarn"]["tokens"]),
        "lr_grid": len(config["lr_grid"]["lrs"]) * len(config["lr_grid"]["chunks"]) + 1,  # + one off
        "regression": 1,  # TTT off only
        "telemetry": 2,
        "ablation": len(config["ablation"]["variants"]) + 1,
        "gate_override": len(config["gate_override"]["alphas"]) + 1,
        # one cell per scenario, plus the TTT-off cell of each data set a TTT-on scenario reads
        "calibration": len(SCENARIOS) + len({s.data for s in SCENARIOS if s.ttt is not None}),
    }
    assert {f: len(c) for f, c in fams.items()} == expected
    assert len(cells) == 36 + 2 + expected["calibration"]  # the default run's cells


def test_only_the_named_families_are_built(config):
    config["families"] = ["regression", "yarn"]
    fams = by_family(matrix.build_matrix(config))
    assert set(fams) == {"regression", "yarn"}
    config["families"] = []
    assert matrix.build_matrix(config) == {}


# Paper Fig. 3c's variants, written out here: which parts of the TTT target stay on.
VARIANTS = {"full": (True, True), "no_conv": (False, True), "no_target": (True, False),
            "neither": (False, False)}


def test_ttt_on_cells_merge_the_top_level_ttt_and_off_cells_switch_it_off(config):
    top = config["ttt"]
    for family, cells in by_family(matrix.build_matrix(config)).items():
        if family == "calibration":  # its own TTT per scenario: test_calibration.py
            continue
        for params, cell in cells:
            if params["ttt"] == "off":
                assert cell["ttt"] == {"enabled": False}, cell["cell"]
                continue
            own = {
                "short_form": {}, "yarn": {},
                "long_form": dict(config["long_form"].get("stabiliser") or {})
                if params.get("stabiliser") else {},
                "lr_grid": {"lr": float(params.get("lr", 0)), "chunk_size": int(params.get("chunk", 0)),
                            "delta_clip_fro_norm": config["lr_grid"]["delta_clip_fro_norm"]},
                "telemetry": {"delta_clip_fro_norm": config["telemetry"]["delta_clip_fro_norm"],
                              "lr": config["telemetry"]["lr"]},
                "ablation": dict(zip(("target_conv", "target_projection"),
                                     VARIANTS.get(params.get("ablation"), ()))),
                "gate_override": {**config["gate_override"]["ttt"],
                                  "gate_override": None if params.get("alpha") == "learned"
                                  else float(params.get("alpha", 0))},
            }[family]
            assert cell["ttt"] == {**top, **own}, cell["cell"]


def test_family_values_reach_their_cells(config):
    fams = by_family(matrix.build_matrix(config))
    lr = config["lr_grid"]
    grid = {(float(p["lr"]), int(p["chunk"])): c for p, c in fams["lr_grid"] if p["ttt"] == "on"}
    assert set(grid) == {(float(a), b) for a in lr["lrs"] for b in lr["chunks"]}
    for (a, b), cell in grid.items():
        assert cell["ttt"]["lr"] == a and cell["ttt"]["chunk_size"] == b
        assert cell["clip_saturation"] == lr["clip_saturation"] and cell["mode"] == "teacher_forced"
    y = config["yarn"]
    for params, cell in fams["yarn"]:
        tokens = int(params["tokens"])
        assert cell["yarn"] == {"scale": tokens / y["original_context"],
                                "original_context": y["original_context"], "context": tokens}
        assert cell["ab"] is (params["ttt"] == "on")
        assert cell["data"]["demo"]["durations"] == [tokens / 12.5 + 1]  # Mimi's 12.5 frames/s
    for params, cell in fams["long_form"]:
        n = config["long_form"].get("conversations", 1)  # conversations per cell
        assert cell["data"] == {"demo": {"durations": [float(params["duration"])] * n,
                                         "seed": config["long_form"]["seed"], "recurrent": True}}
    for params, cell in fams["ablation"]:
        if params["ttt"] == "on":
            assert cell["ttt"] | matrix.ABLATIONS[params["ablation"]] == cell["ttt"]
    (reg,) = fams["regression"]
    assert reg[1]["check_upstream"] is True and reg[1]["ttt"] == {"enabled": False}
    tau = config["telemetry"]["delta_clip_fro_norm"]
    for params, cell in fams["telemetry"]:
        assert float(params["tau"]) == tau
        if params["ttt"] == "on":
            assert cell["ttt"]["delta_clip_fro_norm"] == tau and cell["ttt"]["lr"] == config["telemetry"]["lr"]


def test_gate_override_alphas_and_its_own_model(config):
    fams = by_family(matrix.build_matrix(config))
    forced = {p.get("alpha"): c["ttt"].get("gate_override", "off") for p, c in fams["gate_override"]}
    assert forced == {"1e-05": 1e-5, "0.001": 1e-3, "learned": None, "1": 1.0, None: "off"}
    for _, cell in fams["gate_override"]:
        assert cell["model"] == "tiny-random" and cell["mode"] == "generate"
    for _, cell in fams["short_form"]:
        assert cell["model"] == config["model"]


def test_a_manifest_replaces_the_demo(config):
    config["regression"]["manifest"] = "data/m.jsonl"
    (reg,) = by_family(matrix.build_matrix(config))["regression"]
    assert reg[1]["data"] == {"manifest": "data/m.jsonl"}


def test_cells_with_the_same_inputs_share_one_dataset(config):
    cells = matrix.build_matrix(config)
    for c in cells.values():
        c["model_digest"] = "d" * 16
    ids = {p: matrix.dataset_id(c) for p, c in cells.items()}
    assert ids["long_form/duration~20/ttt~on"] == ids["long_form/duration~20/ttt~off"]
    assert ids["long_form/duration~20/ttt~on"] != ids["long_form/duration~40/ttt~on"]
    other = dict(cells["long_form/duration~20/ttt~on"], model_digest="e" * 16)
    assert matrix.dataset_id(other) != ids["long_form/duration~20/ttt~on"]


def test_panel_cells_and_their_errors(config):
    assert matrix.panel_cells(config) == {"ttt_on": "short_form/duration~8/ttt~on",
                                          "ttt_off": "short_form/duration~8/ttt~off"}
    config["families"] = ["regression"]
    assert matrix.panel_cells(config) == {}
    config["families"] = ["long_form"]
    config["panel"]["family"] = "long_form"
    with pytest.raises(matrix.MatrixError, match="config panel.family: long_form runs mode 'teacher_forced'"):
        matrix.panel_cells(config)
    config["families"] = ["short_form"]
    config["panel"].update(family="short_form", duration_s=99)
    with pytest.raises(matrix.MatrixError, match="config panel.duration_s: 99 is not one of"):
        matrix.panel_cells(config)


def test_every_default_cell_passes_the_cells_own_validators(config):
    """What the builder writes is what run-cell accepts (CellConfig, TTTConfig, YarnConfig)."""
    from ttt.launch.preflight import check_matrix
    cells = matrix.build_matrix(config)
    check_matrix(config, cells)


def test_the_builder_imports_no_snakemake():
    import subprocess
    import sys
    code = "import sys, ttt.launch.matrix; print('snakemake' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO)
    assert out.stdout.strip() == "False"
