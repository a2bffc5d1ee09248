"""The calibration family: scenarios whose right verdict is known, run as real cells on the
embedded default, so every answer a gate gives is proven by a scenario that makes it give it (a
gate that no scenario can make say "fail" is not a gate). ``results/tables/calibration.csv`` has
one row per scenario and signal: expected, verdict, agree; the run fails when a row disagrees.

A scenario is one TTT-on cell (``calibration/data~D/scenario~NAME/ttt~on``) judged against the
TTT-off cell of its data set (``calibration/data~D/ttt~off``, shared by the scenarios on that
data), or, with ``ttt`` None, one TTT-off cell of its own. Its cell configs come from
:func:`calibration_cells`; adding a scenario is one entry in ``SCENARIOS``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ttt.base.files import write_csv
from ttt.report.tables import cell_path, read_table

# Shipped with the package (ttt/assets/playback/README.md): found wherever the workflow runs.
PLAYBACK_MANIFEST = str(Path(__file__).resolve().parent.parent / "assets" / "playback" / "manifest.jsonl")

# An expected verdict is one answer, or several separated by "|" when the truth sits at a
# boundary the scenario cannot fix (stated in the scenario's ``why``).
NOT_HELPS = "hurts|no significant difference"

# The trained default's working TTT (config/config.yaml's healthy families): no clip, lr 1e-2.
WORKING_TTT = {"start_layer": 1, "layer_frequency": 2, "chunk_size": 8, "lr": 0.01,
               "delta_clip_fro_norm": None, "init_std": 0.5}


@dataclass(frozen=True)
class Scenario:
    """``expected``: signal → the verdict its gate must give on this scenario's cell.
    ``data``: a key of :func:`data_sets`. ``ttt``: overrides of ``WORKING_TTT`` for the TTT-on
    cell (None: the scenario is a TTT-off cell). ``cell``: further cell keys (e.g. a mode)."""

    name: str
    expected: Mapping[str, str]
    data: str = "recurrent"
    ttt: Mapping[str, Any] | None = field(default_factory=dict)
    cell: Mapping[str, Any] = field(default_factory=dict)
    why: str = ""


SCENARIOS = [
    Scenario("recurrent_trained", {"responsiveness.effect": "pass",
                                   "responsiveness.perplexity_text": "helps",
                                   "stability.usefulness": "pass"},
             why="trained TTT, content recurring beyond the context: TTT recalls it"),
    Scenario("plain_trained", {"responsiveness.perplexity_text": NOT_HELPS},
             data="plain",
             why="the same model without recurrence: nothing to recall; its TTT costs a little, "
                 "at the edge of significance (measured: text −1.8 % [−2.5, −1.2] beyond the "
                 "context over 4 conversations, −1.1 % [−2.1, +0.2] over 3)"),
    Scenario("production_flags", {"responsiveness.effect": "no effect",
                                  "responsiveness.perplexity_text": "no effect",
                                  "stability.clip_saturation": "fail"},
             ttt={"lr": 1e-3, "delta_clip_fro_norm": 1e-5},
             why="τ 1e-5, lr 1e-3: every update clipped to ≤ 1e-8, below float32 resolution"),
    Scenario("lr_zero", {"responsiveness.effect": "no effect",
                         "responsiveness.perplexity_text": "no effect"},
             ttt={"lr": 0.0}, why="lr 0: the fast weights never move"),
    Scenario("harmful_lr", {"responsiveness.perplexity_text": "hurts",
                            "stability.usefulness": "fail"},
             ttt={"lr": 1.0}, why="100× the working lr: the fast weights overshoot"),
    Scenario("long_unclipped", {"stability.w_norm_plateau": "fail"}, data="long",
             why="a 40-s stream without a clip: ‖W‖ keeps growing (measured: +37 % over its "
                 "second half)"),
    Scenario("long_stabilised", {"stability.w_norm_plateau": "pass"}, data="long",
             ttt={"decay": 0.95}, why="the same stream with ttt.decay 0.95: ‖W‖ plateaus "
                                      "(measured: +2.6 % over its second half)"),
    # The consistency gate (does Moshi speak sense?): a generate cell on the embedded default
    # cannot speak (random Mimi), so "Moshi" is a recording of real speech (mode playback,
    # ttt/eval/playback.py) whose text stream is its alignment words, emptied or silenced.
    Scenario("speech_consistent", {"quality.consistency_wer": "pass"}, data="speech", ttt=None,
             cell={"mode": "playback"},
             why="real recorded speech, its text stream the words said: a consistent transcript"),
    Scenario("speech_empty_text", {"quality.consistency_wer": "fail"}, data="speech", ttt=None,
             cell={"mode": "playback", "playback_text": "empty"},
             why="the same speaking audio with an empty text stream: gibberish"),
    Scenario("speech_silent_audio", {"quality.consistency_wer": "fail"}, data="speech", ttt=None,
             cell={"mode": "playback", "playback_audio": "silence"},
             why="silence where the text stream says it spoke: gibberish"),
]


def data_sets(f: Mapping[str, Any]) -> dict[str, dict]:
    """The inputs of the scenarios, from the family's config ``f``: ``recurrent`` and ``plain``
    hold ``conversations`` demo conversations each (the effect verdicts resample them); ``long``
    is one long recurrent stream. With long_form's seed and lengths, the default run's long_form
    conversations (and their Mimi codes) are shared. ``speech``: the recorded speech the
    playback scenarios play back."""
    n, d, seed = int(f["conversations"]), float(f["duration_s"]), int(f["seed"])
    return {"recurrent": {"demo": {"durations": [d] * n, "seed": seed, "recurrent": True}},
            # real speech with alignments, shipped (ttt/assets/playback/README.md)
            "speech": {"manifest": PLAYBACK_MANIFEST},
            "plain": {"demo": {"durations": [d] * n, "seed": seed + 1000}},
            "long": {"demo": {"durations": [float(f["long_duration_s"])], "seed": seed,
                              "recurrent": True}}}


def scenario_path(s: Scenario) -> str:
    return cell_path("calibration", [("data", s.data), ("scenario", s.name),
                                     ("ttt", "off" if s.ttt is None else "on")])


def twin_path(data: str) -> str:
    return cell_path("calibration", [("data", data), ("ttt", "off")])


def calibration_cells(f: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, dict]:
    """{cell path: cell config} of every scenario and the TTT-off cell of each data set a TTT-on
    scenario reads. ``base``: the model keys every cell carries (model, device, cache_dir, ...);
    the scenarios' answers are facts about the embedded default in float32."""
    sets = data_sets(f)
    unknown = sorted({s.data for s in SCENARIOS} - set(sets))
    if unknown:
        raise ValueError(f"calibration scenarios read unknown data set(s) {unknown}")
    cells = {}
    common = {**base, "family": "calibration", "mode": "teacher_forced", "dtype": "float32",
              "window_s": f["window_s"]}
    for s in SCENARIOS:
        path = scenario_path(s)
        ttt = {"enabled": False} if s.ttt is None else {**WORKING_TTT, **s.ttt}
        cells[path] = {**common, "cell": path, "data": sets[s.data], "ttt": ttt, **s.cell}
        if s.ttt is not None:
            twin = twin_path(s.data)
            cells.setdefault(twin, {**common, "cell": twin, "data": sets[s.data],
                                    "ttt": {"enabled": False}})
    return cells


def calibration_rows(checks: list[dict]) -> list[dict]:
    """One row per scenario and expected signal: the verdict its cell got (``verdicts_cells.csv``
    rows: signal, cell — "on vs off" for paired gates — and passed, the check's verdict)."""
    rows = []
    for s in SCENARIOS:
        path = scenario_path(s)
        for signal, expected in s.expected.items():
            got = [c for c in checks if c["signal"] == signal
                   and str(c["cell"]).split(" vs ")[0] == path]
            verdict = got[0]["passed"] if got else "missing"
            explanation = got[0].get("explanation", "") if got else "the gate judged no such cell"
            rows.append({"scenario": s.name, "signal": signal, "expected": expected,
                         "verdict": verdict, "agree": verdict in expected.split("|"), "cell": path,
                         "why": s.why, "explanation": explanation})
    return rows


def write_calibration(results: str | os.PathLike, out: str | os.PathLike) -> list[dict]:
    """calibration.csv from ``results/tables/verdicts_cells.csv``; returns its rows."""
    checks = read_table(Path(results) / "tables" / "verdicts_cells.csv",
                        "verdict checks").to_dict("records")
    rows = calibration_rows(checks)
    write_csv(out, rows)
    return rows
