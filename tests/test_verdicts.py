"""The test-plan gates (ttt.report.verdicts): each passes on healthy constructed results and fails on a
planted fault; strict exit codes; thresholds from the config schema."""
import csv
import shutil
from pathlib import Path

import pytest
import yaml

from results_factory import (STRESS, cell_spec, speed, healthy_specs, inert_spec, modified, telemetry_rows,
                             token_nll, write_results)
from ttt.report import verdicts
from ttt.cli.main import main

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
    judged = {s for s, r in summary.items() if r["verdict"] in ("pass", "helps")}
    no_cell = {"responsiveness.wer",  # no transcribe cell here
               "quality.consistency_wer", "quality.consistency_wer_vs_off"}  # no ASR output here
    assert judged == set(verdicts.SIGNALS) - no_cell - {"diagnostic.next_chunk_gain"}
    assert summary["diagnostic.next_chunk_gain"]["verdict"] == "diagnostic"
    assert summary["responsiveness.perplexity_text"]["verdict"] == "helps"
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
    ("slower twin", dict(throughput=speed(1.2)), "cost.throughput", "+20.0%"),
])
def test_each_gate_fails_on_its_planted_fault(tmp_path, name, changes, signal, needle):
    summary, _ = judge(tmp_path, modified(healthy_specs(), ON, **changes))
    row = summary[signal]
    assert row["verdict"] == "fail", (name, row)
    assert needle in row["explanation"], row["explanation"]
    assert ON in row["cells"]
    others = set(failed(summary)) - {signal}
    allowed = {"nan run": {"stability.w_norm_plateau"}}.get(name, set())  # NaN breaks the trend
    assert others <= allowed, others


def test_correctness_gates_fail_on_yarn_and_regression_faults(tmp_path):
    specs = modified(healthy_specs(), "yarn/tokens~64/ttt~on", ab={"pre_update_logits_rel_err": 2e-4})
    specs = modified(specs, "regression/ttt~off",
                     regression={"bitwise_equal": False, "max_abs_diff": 1e-7, "steps": 16})
    summary, _ = judge(tmp_path, specs)
    assert failed(summary) == ["correctness.pre_update_logits", "correctness.ttt_off_bitwise"]
    assert summary["correctness.pre_update_logits"]["value"] == 2e-4


# ---- inert TTT: "no effect", never "pass" ----------------------------------------------------

def replaced(specs, spec):
    return [spec if s["path"] == spec["path"] else s for s in specs]


def test_inert_ttt_says_no_effect_not_pass(tmp_path, capsys):
    """The production flags (lr 1e-3, τ 1e-5): every update clipped to ≤ 1e-8, ‖W − W₀‖/‖W₀‖ ~ 2e-9,
    windows equal to the TTT-off twin's. Every responsiveness signal and the next-chunk gain say
    "no effect"; the effect signal names lr·τ; strict mode does not pass it."""
    summary, checks = judge(tmp_path, replaced(healthy_specs(), inert_spec(ON, nll=token_nll(3.0))))
    for signal in ("responsiveness.effect", "responsiveness.perplexity_text",
                   "responsiveness.perplexity_audio", "stability.usefulness"):
        assert summary[signal]["verdict"] == "no effect", (signal, summary[signal])
    why = summary["responsiveness.effect"]["explanation"]
    assert "lr·τ = 0.001·1e-05 = 1e-08" in why and "below float32 resolution" in why
    assert "outputs equal the TTT-off twin's" in why
    assert failed(summary) == ["stability.clip_saturation"]  # every update clipped
    assert summary["diagnostic.next_chunk_gain"]["verdict"] == "diagnostic"  # never judged
    effect = {c["cell"]: c for c in checks if c["signal"] == "responsiveness.effect"}
    assert effect["yarn/tokens~64/ttt~on"]["passed"] is True  # the working cell still passes
    assert main(["verdicts", "--results", str(tmp_path)]) == 0
    assert "NO EFFECT responsiveness.effect" in capsys.readouterr().out
    assert main(["verdicts", "--results", str(tmp_path), "--strict"]) == 1
    with open(tmp_path / "tables" / "verdicts_cells.csv") as f:
        assert {r["passed"] for r in csv.DictReader(f) if r["cell"] == ON} >= {"no effect"}


def test_stress_family_must_clip_and_be_inert(tmp_path):
    summary, _ = judge(tmp_path, replaced(healthy_specs(), cell_spec(STRESS, True, ppl=19.0)))
    row = summary["stress.clips"]
    assert row["verdict"] == "fail" and "0 of 20 updates clipped" in row["explanation"]
    good, _ = judge(tmp_path / "good", healthy_specs())
    assert good["stress.clips"]["verdict"] == "pass"
    assert "20 of 20 updates clipped; effect: no effect" in good["stress.clips"]["explanation"]


GRID = "lr_grid/lr~{}/chunk~16/ttt~on"


@pytest.mark.parametrize("case,ppls,verdict,needle", [
    ("healthy", {"0.001": 19.0, "0.01": 18.0, "0.1": 45.0}, "pass", "diverges from lr 0.1"),
    ("nothing diverges", {"0.001": 19.0, "0.01": 18.0, "0.1": 21.5}, "fail", "no lr diverged"),
    ("best on the edge", {"0.001": 17.0, "0.01": 18.0, "0.1": 45.0}, "fail", "extend lr_grid.lrs"),
    ("nothing helps", {"0.001": 20.0, "0.01": 21.0, "0.1": 45.0}, "no effect", "no lr beats TTT off"),
])
def test_lr_grid_must_bracket_best_lr_and_divergence(tmp_path, case, ppls, verdict, needle):
    specs = healthy_specs()
    for lr, ppl in ppls.items():
        specs = replaced(specs, cell_spec(GRID.format(lr), True, ppl=ppl))
    summary, _ = judge(tmp_path, specs)
    row = summary["lr_grid.boundary"]
    assert row["verdict"] == verdict and needle in row["explanation"], (case, row)


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    import numpy as np
    d = np.array([0.01, 0.03, -0.01, 0.02, 0.0, 0.05])
    lo, hi = verdicts.bootstrap_ci(d, 0.95, 2000)
    assert lo < d.mean() < hi and (lo, hi) == verdicts.bootstrap_ci(d, 0.95, 2000)
    assert hi - lo < d.max() - d.min()


def test_strict_exit_codes_and_threshold_file(tmp_path, capsys):
    good = write_results(tmp_path / "good", healthy_specs())
    bad = write_results(tmp_path / "bad", modified(healthy_specs(), ON,
                                                   throughput=speed(1.2)))
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
    specs = modified(healthy_specs(), ON, throughput=speed(5.0))
    specs = modified(specs, OFF, throughput=speed(4.0))
    at = verdicts.thresholds({"cost": {"max_regression": 0.25}})
    summary, _ = judge(tmp_path / "at", specs, at)
    assert summary["cost.throughput"]["value"] == 0.25
    assert summary["cost.throughput"]["verdict"] == "pass"
    below = verdicts.thresholds({"cost": {"max_regression": 0.2499}})
    summary, _ = judge(tmp_path / "above", specs, below)
    assert summary["cost.throughput"]["verdict"] == "fail"


def test_effect_on_real_tiny_runs_fails_inert_and_passes_working(tmp_path, cache):
    """Real cells on the untrained tiny model: the production flags (lr 1e-3, τ 1e-5) are judged
    "no effect" (fast weights move ~1e-9 relative; outputs equal the twin's), unclipped lr 1e-2
    has an effect and a positive next-chunk gain (whether it helps the untrained model's
    perplexity is another question)."""
    from conftest import CELL_TTT, make_cell
    from results_factory import aggregate_tables
    from ttt.eval.cell import run_cell
    runs = {"long_form/duration~4/ttt~on": {**CELL_TTT, "delta_clip_fro_norm": None},
            "long_form/duration~4/ttt~off": {"enabled": False},
            "telemetry/tau~1e-05/ttt~on": {**CELL_TTT, "lr": 1e-3, "delta_clip_fro_norm": 1e-5},
            "telemetry/tau~1e-05/ttt~off": {"enabled": False}}
    off = None
    for path, ttt_cfg in runs.items():
        d = tmp_path / "cells" / path
        d.mkdir(parents=True)
        (d / "status.json").write_text('{"status": "ok"}')
        if off is not None and not ttt_cfg.get("enabled", True):
            shutil.copytree(off, d / "cell")  # the same TTT-off run twice
            continue
        run_cell(make_cell(cache, path, [4.0], ttt=ttt_cfg, diagnostics_every=0), d / "cell",
                 log=lambda m: None)
        off = off or (d / "cell" if not ttt_cfg.get("enabled", True) else None)
    aggregate_tables(tmp_path)
    both = {"families": ["long_form", "telemetry"]}
    cfg = verdicts.thresholds({"effect": both, "next_chunk_gain": both, "responsiveness": both,
                               "usefulness": both})
    _, checks = verdicts.evaluate(tmp_path, cfg)
    by = {(c["signal"], c["cell"].split(" vs ")[0].split("/")[0]): c for c in checks}
    working, inert = by[("responsiveness.effect", "long_form")], by[("responsiveness.effect", "telemetry")]
    assert working["passed"] is True and working["value"] > 1e-4, working
    assert inert["no_effect"] and inert["value"] < 1e-7 and "lr·τ = 0.001·1e-05" in inert["explanation"]
    assert by[("responsiveness.perplexity_text", "telemetry")]["no_effect"]
    assert not by[("responsiveness.perplexity_text", "long_form")]["no_effect"]  # on ≠ off
    assert by[("diagnostic.next_chunk_gain", "long_form")]["value"] > 0
    stress = by[("stress.clips", "telemetry")]
    assert stress["passed"] is True and stress["value"] == 1.0


def test_ttt_off_twin_of_the_trained_default_is_ttt_with_lr_zero(cache):
    """The default run's TTT-off twins load the TTT-trained default with TTT off (its TTT-only
    tensors left out) and equal the same model with TTT on at lr 0."""
    import torch
    from conftest import random_sequence
    from ttt.moshi.model import load_checkpoint, resolve_model
    path = resolve_model("tiny", cache / "models")
    off = load_checkpoint(path, ttt={"enabled": False}).lm
    frozen = load_checkpoint(path, ttt={"lr": 0.0}).lm
    seq = random_sequence(1, 24, card=64)
    with torch.no_grad():
        a, b = off.forward_text(seq)[1], frozen.forward_text(seq)[1]
    assert not any("w_down" in k for k in off.state_dict())
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


# ---- the registry: one gate, one signal ---------------------------------------------------------

def test_every_signal_is_the_one_signal_of_its_registered_gate(tmp_path):
    """Each registered gate's checks carry its signal and no other; the README's table documents
    exactly the registered signals (a signal cannot exist, or be documented, without its gate)."""
    import re
    write_results(tmp_path, modified(healthy_specs(), ON, diverged=True))
    cells = verdicts.load_cells(tmp_path)
    by_name = {c.name: c for c in cells}
    seen = set()
    for signal, registered in verdicts.REGISTRY.gates.items():
        checks = registered.run(cells, verdicts.thresholds(), by_name)
        assert {c["signal"] for c in checks} <= {signal}, signal
        seen |= {c["signal"] for c in checks}
    assert seen and verdicts.SIGNALS == list(verdicts.REGISTRY.gates)
    _, checks = verdicts.evaluate(tmp_path)
    assert {c["signal"] for c in checks} <= set(verdicts.SIGNALS)
    doc = (REPO / "docs" / "verdicts.md").read_text().split("## The signals", 1)[1]
    documented = set()
    for line in doc.split("\n\n", 2)[1].splitlines()[2:]:
        documented |= set(re.findall(r"`([a-z_]+\.[a-z_]+)`", line.split("|")[1]))
    assert documented == set(verdicts.SIGNALS)


def test_registry_refuses_a_second_gate_a_foreign_signal_and_an_undocumented_gate(tmp_path):
    registry = verdicts.Registry()

    @registry.gate("cost.demo", section="cost")
    def demo(scope):
        """One check per cell in the cost families."""
        return [verdicts.check(c.name, 0.0, scope.g["max_regression"], True, "ok") for c in scope.cells]

    with pytest.raises(ValueError, match="'cost.demo' already has a gate"):
        registry.gate("cost.demo", section="cost")(lambda scope: [])
    with pytest.raises(ValueError, match="unknown thresholds section 'costs'"):
        registry.gate("cost.other", section="costs")(demo)
    with pytest.raises(ValueError, match="needs a docstring"):
        registry.gate("cost.other", section="cost")(lambda scope: [])
    assert registry.signals == ["cost.demo"]

    @registry.gate("cost.sneaky", section="cost")
    def sneaky(scope):
        """A gate that tries to emit a second signal."""
        return [{**verdicts.check(c.name, 0.0, 0.0, True, "ok"), "signal": "cost.other"}
                for c in scope.cells]

    write_results(tmp_path, healthy_specs())
    cells = verdicts.load_cells(tmp_path)
    with pytest.raises(TypeError, match="cost.sneaky: a check names a signal"):
        registry.gates["cost.sneaky"].run(cells, verdicts.thresholds(), {c.name: c for c in cells})
    del registry.gates["cost.sneaky"]
    summary, checks = registry.evaluate(tmp_path)
    assert [r["signal"] for r in summary] == ["cost.demo"] and summary[0]["verdict"] == "pass"
    assert {c["cell"] for c in checks} == {c.name for c in cells if c.family in DEFAULT_COST_FAMILIES}


DEFAULT_COST_FAMILIES = verdicts.DEFAULTS["cost"]["families"]


def test_judging_a_results_tree_loads_neither_torch_nor_moshi(tmp_path):
    """Issue 17: the verdicts run on a login node; parsing a TTT-TELEMETRY line or a telemetry
    table must not pull in the model stack (it did, through ttt.session.telemetry)."""
    import subprocess
    import sys
    write_results(tmp_path, healthy_specs())
    code = ("import sys\nfrom ttt.cli.main import main\n"
            f"assert main(['verdicts', '--results', {str(tmp_path)!r}]) == 0\n"
            "print(sorted(m for m in ('torch', 'moshi') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO).stdout
    assert "15 pass, 2 helps" in out and out.strip().splitlines()[-1] == "[]", out[-500:]
