"""The recall probe (gpu/control/copy_probe.py, recall_probe_report.py): its rows hold the repeat
where its spans say, and its reading says each answer on a planted scenario whose answer is known."""
import json
import math
import runpy
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

CHANCE_60 = 4.0943
CONTROL = Path(__file__).parent.parent / "gpu" / "control"
PROBE = runpy.run_path(str(CONTROL / "copy_probe.py"))
REPORT = runpy.run_path(str(CONTROL / "recall_probe_report.py"))


def test_rows_repeat_the_source_at_the_lag_their_spans_name():
    args = Namespace(vocab=60, codebooks=2, frames=160, length=24, lag="random", lag_min=24, lag_max=136)
    g = torch.Generator().manual_seed(3)
    for lag in (None, 24, 136):
        x, spans = PROBE["rows"](200, args, g, lag=lag)
        assert x.shape == (200, 5, 160) and int(x[:, 0].min()) >= 4
        seen = set()
        for row, (s, e) in zip(x, spans):
            start = s - 2  # spans skip the copy's first two frames
            found = [d for d in range(args.lag_min, args.lag_max + 1)
                     if start - d >= 0 and torch.equal(row[:, start:start + 24], row[:, start - d:start - d + 24])]
            assert found, "no source 24-136 frames before the span"
            assert e - start == 24 and e <= 160
            if lag is not None:
                assert lag in found
            seen.update(found)
        if lag is None:  # lags drawn over the whole range
            assert min(seen) < 40 and max(seen) > 120


def test_controls_shuffle_the_copy_or_replace_it_and_touch_nothing_else():
    args = Namespace(vocab=60, codebooks=2, frames=160, length=24, lag="random", lag_min=24, lag_max=136)
    g = torch.Generator().manual_seed(5)
    codes, spans = PROBE["rows"](64, args, g, lag=96)
    made = PROBE["controls"](codes, spans, 60, torch.Generator().manual_seed(1))
    for i, (s, e) in enumerate(spans):
        start = s - 2
        outside = torch.ones(160, dtype=torch.bool)
        outside[start:e] = False
        for kind in ("shuffled", "fresh"):
            assert torch.equal(made[kind][i][:, outside], codes[i][:, outside])
        copy, shuffled = codes[i, :, start:e], made["shuffled"][i, :, start:e]
        assert not torch.equal(shuffled, copy)
        blocks = sorted(tuple(b.flatten().tolist()) for b in copy.split(4, dim=-1))
        assert sorted(tuple(b.flatten().tolist()) for b in shuffled.split(4, dim=-1)) == blocks
        fresh = made["fresh"][i, :, start:e]
        assert (fresh != copy).float().mean() > 0.9  # new tokens: at most chance agreement
        assert 4 <= int(fresh[0].min()) and int(fresh[0].max()) <= 63 and int(fresh[1:].max()) < 60


def _run(variant, seed, on, off=None, steps=6000, context=16, vocab=60, lags=(24, 56, 96, 136), fresh=CHANCE_60):
    """A planted run: copy NLL ``on`` (and ``off``, the twin) at every lag, the probe's JSON form;
    ``fresh``: its NLL on the fresh control."""
    row = {"step": steps, **{f"on_lag{lag}": [on, on] for lag in lags},
           **{f"on_lag{lag}_fresh": [fresh, fresh] for lag in lags}}
    if off is not None:
        row.update({f"off_lag{lag}": [off, off] for lag in lags})
    return {"args": {"vocab": vocab, "eval_lags": ",".join(map(str, lags)), "frames": 160},
            "lm_kwargs": {"num_layers": 4, "context": 320 if variant == "full" else context},
            "curve": [row]}


CHANCE = math.log(60)


@pytest.mark.parametrize("planted, verdict", [
    ({("full", 0): 0.1, ("no_ttt", 0): CHANCE, ("ttt", 0): (0.6, CHANCE), ("ttt", 1): (0.7, 4.2)}, "recall"),
    ({("full", 0): CHANCE, ("no_ttt", 0): CHANCE, ("ttt", 0): (0.6, CHANCE)}, "inconclusive"),
    ({("full", 0): 0.1, ("no_ttt", 0): 1.0, ("ttt", 0): (0.6, CHANCE)}, "invalid"),
    ({("full", 0): 0.1, ("no_ttt", 0): CHANCE, ("ttt", 0): (0.6, CHANCE), ("ttt", 1): (CHANCE, CHANCE)}, "no recall"),
    ({("full", 0): 0.1, ("no_ttt", 0): CHANCE, ("ttt", 0): (0.6, 0.6)}, "no recall"),  # the twin copies: not TTT's
    ({("full", 0): 0.1, ("no_ttt", 0): CHANCE, ("ttt", 0): (CHANCE - 0.3, CHANCE)}, "no recall"),  # within the margin
    ({("full", 0): 0.1, ("no_ttt", 0): CHANCE, ("ttt", 0): (0.6, CHANCE, 6000, 16, 60, (24, 56, 96, 136), 2.0)},
     "invalid"),  # TTT beats chance on fresh tokens: it reads something it should not
])
def test_reading_says_each_answer_on_a_planted_scenario(planted, verdict):
    runs = {key: _run(*key, *(value if isinstance(value, tuple) else (value,))) for key, value in planted.items()}
    assert REPORT["reading"](runs)["verdict"] == verdict


def test_reading_looks_only_beyond_the_reach():
    """TTT copying inside the reach only (lags 24, 56) is not recall beyond it."""
    runs = {("full", 0): _run("full", 0, 0.1), ("no_ttt", 0): _run("no_ttt", 0, CHANCE),
            ("ttt", 0): _run("ttt", 0, 0.6, CHANCE)}
    for lag in (96, 136):
        runs[("ttt", 0)]["curve"][-1][f"on_lag{lag}"] = [CHANCE, CHANCE]
    read = REPORT["reading"](runs)
    assert read["lags_beyond"] == [96, 136] and read["verdict"] == "no recall"


def test_probe_runs_and_its_report_reads_it(tmp_path, monkeypatch):
    """copy_probe.py end to end at toy size (CPU), in the three variants, then the report."""
    for variant, extra in (("full", []), ("no_ttt", ["--context", "8"]), ("ttt", ["--context", "8", "--ttt"])):
        monkeypatch.setattr(sys, "argv", [
            "copy_probe.py", "--frames", "48", "--length", "8", "--lag-min", "8", "--lag-max", "40",
            "--eval-lags", "8,40", "--steps", "3", "--batch", "2", "--log-every", "2",
            "--out", str(tmp_path / f"{variant}-s0.json"), *extra])
        runpy.run_path(str(CONTROL / "copy_probe.py"), run_name="__main__")
    written = json.loads((tmp_path / "ttt-s0.json").read_text())
    assert written["machine"]["device"] == "cpu" and written["machine"]["host"] and written["machine"]["torch"]
    curve = written["curve"]
    assert [row["step"] for row in curve] == [2, 3]
    assert set(curve[-1]) == {"step", "seconds"} | {f"{c}_lag{lag}{k}" for c in ("on", "off") for lag in (8, 40)
                                                     for k in ("", "_shuffled", "_fresh")}
    monkeypatch.setattr(sys, "argv", ["recall_probe_report.py", str(tmp_path)])
    runpy.run_path(str(CONTROL / "recall_probe_report.py"), run_name="__main__")
    read = json.loads((tmp_path / "reading.json").read_text())
    assert read["reach"] == 32 and read["lags_beyond"] == [40]
    assert read["verdict"] == "inconclusive"  # 3 steps: nothing copies yet
    assert (tmp_path / "curve.png").stat().st_size > 1000 and (tmp_path / "offsets.png").stat().st_size > 1000
    assert "ttt-s0" in (tmp_path / "report.md").read_text()


def test_controls_leave_the_training_stream_as_it_was(tmp_path, monkeypatch):
    """The controls draw from their own generator: a run with them trains on the rows a run
    without them trains on, so its exact-copy curve is the same number for number."""
    curves = {}
    for kinds in ("exact", "exact,shuffled,fresh"):
        out = tmp_path / f"{kinds}.json"
        monkeypatch.setattr(sys, "argv", [
            "copy_probe.py", "--frames", "48", "--length", "8", "--lag-min", "8", "--lag-max", "40",
            "--eval-lags", "8,40", "--eval-kinds", kinds, "--context", "8", "--ttt", "--steps", "3",
            "--batch", "2", "--log-every", "3", "--out", str(out)])
        runpy.run_path(str(CONTROL / "copy_probe.py"), run_name="__main__")
        curves[kinds] = json.loads(out.read_text())["curve"][-1]
    assert all(curves["exact"][k] == curves["exact,shuffled,fresh"][k]
               for k in curves["exact"] if k != "seconds")


def _probe(ttt_values, full=0.1, no_ttt=CHANCE):
    """A planted probe: full and no-TTT seed 0, and one TTT run per value in ``ttt_values``."""
    runs = {("full", 0): _run("full", 0, full), ("no_ttt", 0): _run("no_ttt", 0, no_ttt)}
    runs.update({("ttt", seed): _run("ttt", seed, value, CHANCE) for seed, value in enumerate(ttt_values)})
    return runs


@pytest.mark.parametrize("second, agree", [
    ((0.60, 0.70, 0.65), True),     # the same probe again
    ((0.66, 0.76, 0.71), True),     # +0.06, within 2 seed sd (0.05 × 2)
    ((0.85, 0.95, 0.90), False),    # +0.25: beyond the seeds' noise
    ((CHANCE, CHANCE, CHANCE), False),  # TTT recalls on one machine only: the readings differ
])
def test_two_probes_agree_only_within_seed_noise(second, agree):
    result = REPORT["compare"](_probe((0.60, 0.70, 0.65)), _probe(second))
    assert result["agree"] is agree
    ttt = next(r for r in result["rows"] if r["variant"] == "ttt")
    assert ttt["seeds"] == [0, 1, 2] and ttt["sd"][0] == pytest.approx(0.05)


def test_two_probes_are_compared_at_the_last_step_both_reached():
    first, second = _probe((0.6,)), _probe((0.6,))
    early = dict(first[("ttt", 0)]["curve"][0], step=3000)  # the first probe also logged step 3000 ...
    first[("ttt", 0)]["curve"] = [early, dict(early, step=6000, **{f"on_lag{lag}": [3.0, 3.0] for lag in (96, 136)})]
    second[("ttt", 0)]["curve"][0]["step"] = 3000  # ... where the second one stopped
    ttt = next(r for r in REPORT["compare"](first, second)["rows"] if r["variant"] == "ttt")
    assert ttt["mean"] == [pytest.approx(0.6), pytest.approx(0.6)]


def test_two_probes_with_equal_numbers_but_different_readings_disagree():
    second = _probe((0.60, 0.70, 0.65))
    second[("ttt", 1)]["curve"][-1].update({f"on_lag{lag}_fresh": [2.0, 2.0] for lag in (24, 56, 96, 136)})
    result = REPORT["compare"](_probe((0.60, 0.70, 0.65)), second)
    assert result["readings"] == ["recall", "invalid"] and not result["agree"]
    assert all(r["agree"] for r in result["rows"])  # the numbers alone would have agreed
