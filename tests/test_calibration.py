"""The calibration family: its cells, and calibration.csv's agreement with the known verdicts
(a disagreeing or missing verdict fails the run)."""
import csv

import pytest

from ttt.base.files import write_csv
from ttt.cli.main import main
from ttt.launch.calibration import SCENARIOS, calibration_cells, calibration_rows, scenario_path, twin_path

F = {"model": "tiny", "conversations": 4, "duration_s": 20, "long_duration_s": 40, "seed": 1,
     "window_s": 4}
BASE = {"model": "tiny", "base": None, "device": "cpu", "dtype": "bfloat16", "cache_dir": "c"}


def test_every_ttt_on_scenario_has_a_ttt_off_twin_on_the_same_data():
    cells = calibration_cells(F, BASE)
    for s in SCENARIOS:
        cell = cells[scenario_path(s)]
        assert cell["dtype"] == "float32"  # the expected answers are float32 facts
        if s.ttt is not None:
            twin = cells[twin_path(s.data)]
            assert twin["data"] == cell["data"] and twin["ttt"] == {"enabled": False}
            assert cell["ttt"].get("enabled", True) is True
    recurrent = cells[twin_path("recurrent")]["data"]["demo"]
    assert recurrent["durations"] == [20.0] * 4 and recurrent["recurrent"] is True
    plain = cells[twin_path("plain")]["data"]["demo"]
    assert plain.get("recurrent") is not True and plain["seed"] != recurrent["seed"]


def test_each_effect_answer_and_each_fail_has_a_scenario():
    """A gate that no scenario can make say its fail is not a gate: the calibration covers
    helps, hurts and no effect on perplexity, fail and pass on the long-stream gates."""
    expected = {(sig, v) for s in SCENARIOS for sig, v in s.expected.items()}
    for pair in [("responsiveness.perplexity_text", "helps"), ("responsiveness.perplexity_text", "hurts"),
                 ("responsiveness.perplexity_text", "no effect"), ("responsiveness.effect", "no effect"),
                 ("responsiveness.effect", "pass"), ("stability.usefulness", "fail"),
                 ("stability.usefulness", "pass"), ("stability.w_norm_plateau", "fail"),
                 ("stability.w_norm_plateau", "pass"), ("stability.clip_saturation", "fail")]:
        assert pair in expected, pair


def checks_for(verdicts: dict) -> list[dict]:
    """verdicts_cells.csv rows as the verdicts write them (paired gates name "on vs off")."""
    rows = []
    for s in SCENARIOS:
        for signal, expected in s.expected.items():
            cell = scenario_path(s) + (f" vs {twin_path(s.data)}" if s.ttt is not None else "")
            rows.append({"signal": signal, "cell": cell,
                         "passed": verdicts.get((s.name, signal), expected.split("|")[0]),
                         "explanation": "x"})
    return rows


def test_rows_agree_disagree_and_missing():
    rows = calibration_rows(checks_for({}))
    assert rows and all(r["agree"] for r in rows)
    either = [r for r in rows if "|" in r["expected"]]
    assert either and all(r["agree"] for r in calibration_rows(checks_for(
        {(r["scenario"], r["signal"]): r["expected"].split("|")[1] for r in either})))
    rows = calibration_rows(checks_for({("harmful_lr", "responsiveness.perplexity_text"): "no significant difference"}))
    wrong = [r for r in rows if not r["agree"]]
    assert [(r["scenario"], r["verdict"]) for r in wrong] == [("harmful_lr", "no significant difference")]
    missing = [c for c in checks_for({}) if not c["cell"].startswith(scenario_path(SCENARIOS[0]))]
    rows = calibration_rows(missing)
    assert {r["verdict"] for r in rows if r["scenario"] == SCENARIOS[0].name} == {"missing"}


@pytest.mark.parametrize("flip,code", [(False, 0), (True, 1)])
def test_check_exits_1_when_a_verdict_disagrees(tmp_path, capsys, flip, code):
    wrong = {("lr_zero", "responsiveness.effect"): "pass"} if flip else {}
    write_csv(tmp_path / "tables" / "verdicts_cells.csv", checks_for(wrong))
    assert main(["calibration", "--results", str(tmp_path), "--check"]) == code
    out = capsys.readouterr().out
    assert ("DISAGREES lr_zero responsiveness.effect: expected no effect, got pass" in out) == flip
    with open(tmp_path / "tables" / "calibration.csv") as f:
        assert len(list(csv.DictReader(f))) == sum(len(s.expected) for s in SCENARIOS)
    assert main(["calibration", "--results", str(tmp_path)]) == 0  # without --check: the table


def test_missing_checks_table_is_one_line_exit_2(tmp_path, capsys):
    assert main(["calibration", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "verdicts_cells.csv" in err[0]


@pytest.mark.slow
def test_the_default_runs_calibration_agrees(tmp_path):
    """The default run's calibration family, outside Snakemake: every scenario a real cell on the
    embedded default, judged by the real gates with the default thresholds, every verdict the
    known one. This fails `make test` when a gate stops telling its answers apart."""
    import json

    import yaml
    from results_factory import aggregate_tables
    from ttt.eval.cell import CellConfig, run_cell
    from ttt.report import verdicts
    from ttt.report.verdicts.render import write_verdicts

    from pathlib import Path
    repo = Path(__file__).resolve().parent.parent
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    small = config["calibration"]
    base = {"model": small["model"], "base": None, "device": "cpu", "dtype": "float32",
            "cache_dir": str(tmp_path / "cache")}
    for path, cell in calibration_cells(small, base).items():
        if cell["mode"] == "playback":  # through the ASR stage: test_gibberish.py's slow test
            continue
        d = tmp_path / "cells" / path
        run_cell(CellConfig.from_dict(cell), d / "cell", log=lambda m: None)
        (d / "status.json").write_text(json.dumps({"status": "ok"}))
    aggregate_tables(tmp_path)
    write_verdicts(tmp_path, tmp_path / "tables", verdicts.thresholds(config["verdicts"]))
    rows = calibration_rows(list(csv.DictReader(open(tmp_path / "tables" / "verdicts_cells.csv"))))
    playback = {s.name for s in SCENARIOS if s.cell.get("mode") == "playback"}
    rows = [r for r in rows if r["scenario"] not in playback]
    wrong = [(r["scenario"], r["signal"], r["expected"], r["verdict"], r["explanation"])
             for r in rows if not r["agree"]]
    assert rows and not wrong, wrong
