"""The test-plan gates (ttt.verdicts): each passes on healthy constructed results and fails on a
planted fault; strict exit codes; thresholds from the config schema."""
import csv
from pathlib import Path

import pytest
import yaml

from results_factory import healthy_specs, modified, telemetry_rows, windows, write_results
from ttt import verdicts
from ttt.cli import main

REPO = Path(__file__).resolve().parent.parent
ON = "long_form/duration~60/ttt~on"
OFF = "long_form/duration~60/ttt~off"


def judge(tmp_path, specs, cfg=None):
    write_results(tmp_path, specs)
    summary, checks = verdicts.evaluate(tmp_path, cfg)
    return {r["signal"]: r for r in summary}, checks


def failed(summary):
    return sorted(s for s, r in summary.items() if r["verdict"] == "fail")


def test_healthy_results_pass_every_gate(tmp_path):
    summary, checks = judge(tmp_path, healthy_specs())
    assert failed(summary) == []
    judged = {s for s, r in summary.items() if r["verdict"] == "pass"}
    no_cell = {"responsiveness.wer",  # no transcribe cell here
               "quality.consistency_wer", "quality.consistency_wer_vs_off"}  # no ASR output here
    assert judged == set(verdicts.SIGNALS) - no_cell
    assert all(summary[s]["verdict"] == "n/a" for s in no_cell)
    assert summary["cost.throughput"]["value"] == pytest.approx(0.01)
    # lr_grid is not judged by the families that leave it out, but observability covers it
    plateau_cells = {c["cell"] for c in checks if c["signal"] == "stability.w_norm_plateau"}
    assert plateau_cells == {ON}
    assert any(c["cell"].startswith("lr_grid/") for c in checks
               if c["signal"] == "observability.log_line")


@pytest.mark.parametrize("name,changes,signal,needle", [
    ("nan run", dict(telemetry=[{**r, "w_norm": float("nan")} if r["step"] == 80 else r
                                for r in telemetry_rows()]), "stability.finite", "w_norm=nan"),
    ("diverged", dict(diverged=True), "stability.finite", "marked diverged"),
    ("drifting W", dict(telemetry=telemetry_rows(drift=1.0)), "stability.w_norm_plateau", "‖W‖"),
    ("saturated clip", dict(telemetry=telemetry_rows(clips=99)), "stability.clip_saturation",
     "10 of 10 updates clipped"),
    ("missing layer", dict(telemetry=telemetry_rows(layers=(1,))), "observability.telemetry_layers",
     "missing [3]"),
    ("extra layer", dict(telemetry=telemetry_rows(layers=(0, 1, 3))),
     "observability.telemetry_layers", "unexpected [0]"),
    ("idle layer", dict(telemetry=[{**r, "updates": 0} if r["layer"] == 3 else r
                                   for r in telemetry_rows()]), "observability.telemetry_layers",
     "never updated [3]"),
    ("counter reset", dict(telemetry=[{**r, "clip_events": 5 if r["step"] == 48 else 0}
                                      for r in telemetry_rows()]),
     "observability.counters_monotonic", "2 decreases"),  # one per layer
    ("no log line", dict(log=["[cell] item 1/1: step 160/160"]), "observability.log_line",
     "0 TTT-TELEMETRY lines"),
    ("malformed log line", dict(log=['TTT-TELEMETRY {"step": 16, "layers": {"1": {"updates": 1}}}']),
     "observability.log_line", "malformed"),
    ("no plumbing", dict(plumbing=None), "correctness.embedding_plumbing", "no plumbing check"),
    ("bad plumbing", dict(plumbing={"layers": [1, 3], "max_abs_diff": 1e-3, "steps": 16}),
     "correctness.embedding_plumbing", "0.001"),
    ("worse ppl", dict(timeseries=windows(21.0, noise=0.01)), "responsiveness.perplexity_text",
     "+5.00%"),
    ("slower twin", dict(throughput={"ms_per_step_p50": 1.2}), "cost.throughput", "+20.0%"),
])
def test_each_gate_fails_on_its_planted_fault(tmp_path, name, changes, signal, needle):
    summary, _ = judge(tmp_path, modified(healthy_specs(), ON, **changes))
    row = summary[signal]
    assert row["verdict"] == "fail", (name, row)
    assert needle in row["explanation"], row["explanation"]
    assert ON in row["cells"]
    others = set(failed(summary)) - {signal}
    allowed = {"nan run": {"stability.w_norm_plateau"},  # the NaN point also breaks the trend
               "worse ppl": {"responsiveness.perplexity_audio"}}.get(name, set())
    assert others <= allowed, others


def test_correctness_gates_fail_on_yarn_and_regression_faults(tmp_path):
    specs = modified(healthy_specs(), "yarn/tokens~64/ttt~on", ab={"pre_update_logits_rel_err": 2e-4})
    specs = modified(specs, "regression/ttt~off",
                     regression={"bitwise_equal": False, "max_abs_diff": 1e-7, "steps": 16})
    summary, _ = judge(tmp_path, specs)
    assert failed(summary) == ["correctness.pre_update_logits", "correctness.ttt_off_bitwise"]
    assert summary["correctness.pre_update_logits"]["value"] == 2e-4


def test_noisy_but_not_significantly_worse_passes_and_failed_cell_fails_completion(tmp_path):
    # on − off alternates around +1 % ± 3 %: the CI straddles 0, so "not worse" holds
    specs = modified(healthy_specs(), ON, timeseries=windows(20.2, noise=0.03))
    specs = modified(specs, "regression/ttt~off", status="failed")
    summary, checks = judge(tmp_path, specs)
    resp = next(c for c in checks if c["signal"] == "responsiveness.perplexity_text"
                and c["cell"].startswith(ON))
    assert resp["passed"] and resp["value"] > 0 and "CI over 6 windows" in resp["explanation"]
    assert failed(summary) == ["run.completed"]
    assert "RuntimeError: boom" in summary["run.completed"]["explanation"]
    assert summary["correctness.ttt_off_bitwise"]["verdict"] == "n/a"


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    import numpy as np
    d = np.array([0.01, 0.03, -0.01, 0.02, 0.0, 0.05])
    lo, hi = verdicts.bootstrap_ci(d, 0.95, 2000)
    assert lo < d.mean() < hi and (lo, hi) == verdicts.bootstrap_ci(d, 0.95, 2000)
    assert hi - lo < d.max() - d.min()


def test_strict_exit_codes_and_threshold_file(tmp_path, capsys):
    good = write_results(tmp_path / "good", healthy_specs())
    bad = write_results(tmp_path / "bad", modified(healthy_specs(), ON,
                                                   throughput={"ms_per_step_p50": 1.2}))
    assert main(["verdicts", "--results", str(good), "--strict"]) == 0
    assert main(["verdicts", "--results", str(bad)]) == 0  # not strict: the table is the result
    assert main(["verdicts", "--results", str(bad), "--strict"]) == 1
    with open(bad / "tables" / "verdicts.csv") as f:
        rows = {r["signal"]: r for r in csv.DictReader(f)}
    assert rows["cost.throughput"]["verdict"] == "fail" and set(rows) == set(verdicts.SIGNALS)
    assert (bad / "tables" / "verdicts_cells.csv").is_file()
    loose = tmp_path / "loose.yaml"
    loose.write_text(yaml.safe_dump({"cost": {"max_regression": 0.5}}))
    assert main(["verdicts", "--results", str(bad), "--strict", "--thresholds", str(loose)]) == 0
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"cost": {"max_regresion": 0.5}}))
    capsys.readouterr()
    assert main(["verdicts", "--results", str(bad), "--thresholds", str(typo)]) == 2
    assert "unknown key(s) ['max_regresion']" in capsys.readouterr().err
    assert main(["verdicts", "--results", str(tmp_path / "nowhere")]) == 2


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_report_summary_is_rst_with_every_signal(tmp_path):
    write_results(tmp_path, modified(healthy_specs(), ON, diverged=True))
    rst = tmp_path / "front.rst"
    verdicts.write_verdicts(tmp_path, tmp_path / "tables", rst=rst)
    text = rst.read_text()
    assert text.startswith("Verdicts\n========") and "**FAIL**" in text and "{{" not in text
    from docutils.core import publish_parts  # what Snakemake's report renders it with
    html = publish_parts(text, writer_name="html")["html_body"]
    assert "stability.finite" in html and "system-message" not in html


def test_schema_and_config_carry_the_documented_defaults():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    gates = schema["properties"]["verdicts"]["properties"]
    assert set(gates) == set(verdicts.DEFAULTS)
    for gate, values in verdicts.DEFAULTS.items():
        props = gates[gate]["properties"]
        assert set(props) == set(values), gate
        for key, value in values.items():
            assert props[key]["default"] == value and props[key]["description"], (gate, key)
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    assert verdicts.thresholds(config["verdicts"]) == verdicts.DEFAULTS


def test_cost_at_exactly_the_threshold_passes_and_just_above_fails(tmp_path):
    """'A gate passes when its value is at most its threshold' (README): 5 vs 4 ms/step is +25 %."""
    specs = modified(healthy_specs(), ON, throughput={"ms_per_step_p50": 5.0})
    specs = modified(specs, OFF, throughput={"ms_per_step_p50": 4.0})
    at = verdicts.thresholds({"cost": {"max_regression": 0.25}})
    summary, _ = judge(tmp_path / "at", specs, at)
    assert summary["cost.throughput"]["value"] == 0.25
    assert summary["cost.throughput"]["verdict"] == "pass"
    below = verdicts.thresholds({"cost": {"max_regression": 0.2499}})
    summary, _ = judge(tmp_path / "above", specs, below)
    assert summary["cost.throughput"]["verdict"] == "fail"
