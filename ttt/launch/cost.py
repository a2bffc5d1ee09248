"""What a matrix costs in GPU time, from per-step costs measured at Moshi 7B (issue 27 item 3).

``bench/matrix_cost.py`` measures, on one GPU, what each kind of cell pays per step (a generate
step TTT on and off, Mimi's decode per output frame, a teacher-forced frame at moshi's context for
each TTT variant the families use and at each YaRN context) and per cell (process start, imports,
load, warm-up, writing), and writes them as ``measured`` in ``bench/results/<date>-matrix-cost.json``.
Here each cell of a matrix is priced linearly in its length with those costs, and summed per
family: cells, GPU-hours, the longest cell (against a SLURM time limit) and the peak GPU memory.
The workflow prints one line per family before any job (``snakemake -n`` shows them), and
``python -m ttt cost CONFIG...`` prints the same for any config.

The figures are those of the measuring GPU and of moshi's 7B layout: a smaller model or another
card costs otherwise (the line names the device). Cells reading a manifest have no known length
here; they are counted, not priced.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

FRAME_RATE = 12.5  # Mimi frames (model steps) per second of audio
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def latest_costs(directory: Path = RESULTS) -> dict | None:
    """The newest ``*-matrix-cost.json`` under ``directory`` (its ``measured`` part), or None."""
    files = sorted(directory.glob("*-matrix-cost.json"))
    return json.loads(files[-1].read_text()) if files else None


def _frames(cell: Mapping[str, Any]) -> float | None:
    demo = cell["data"].get("demo")
    return None if demo is None else sum(float(d) for d in demo["durations"]) * FRAME_RATE


def _ttt_on(cell: Mapping[str, Any]) -> bool:
    return (cell.get("ttt") or {}).get("enabled", True) is not False


def _nearest(table: Mapping[str, float], key: float) -> float:
    return table[min(table, key=lambda k: abs(float(k) - key))]


def _interpolated(points: Mapping[str, float], x: float) -> float:
    """Linear in ``x`` through the measured points (extended past the ends by the end segments)."""
    xs = sorted(points, key=float)
    if len(xs) == 1:
        return points[xs[0]] * x / float(xs[0])
    lo, hi = (xs[0], xs[1]) if x <= float(xs[0]) else (xs[-2], xs[-1])
    for a, b in zip(xs, xs[1:]):
        if float(a) <= x <= float(b):
            lo, hi = a, b
    slope = (points[hi] - points[lo]) / (float(hi) - float(lo))
    return points[lo] + slope * (x - float(lo))


def _variant(cell: Mapping[str, Any]) -> str | None:
    """The ablation a TTT-on cell runs (None: the full target)."""
    ttt = cell.get("ttt") or {}
    conv, proj = ttt.get("target_conv", True), ttt.get("target_projection", True)
    return {(False, True): "no_conv", (True, False): "no_target", (False, False): "neither"}.get(
        (conv, proj))


def tf_ms_per_frame(cell: Mapping[str, Any], m: Mapping[str, Any]) -> float:
    """A teacher-forced frame of this cell (both passes of an A/B cell)."""
    tf = m["teacher_forced_ms_per_frame"]
    on = _ttt_on(cell)
    if cell.get("yarn"):
        by_context = tf["yarn"]
        context = float(cell["yarn"]["context"])
        off = _interpolated({k: v["off"] for k, v in by_context.items()}, context)
        on_ms = _interpolated({k: v["on"] for k, v in by_context.items()}, context)
        return (on_ms + off) if cell.get("ab") and on else on_ms if on else off
    base = tf["context_3000"]
    if not on:
        return base["off"]
    variant = _variant(cell)
    if variant is not None and variant in base.get("ablation", {}):
        one = base["ablation"][variant]
    else:
        one = _nearest(base["on"], float((cell.get("ttt") or {}).get("chunk_size", 256)))
    return one + base["off"] if cell.get("ab") else one


def cell_seconds(cell: Mapping[str, Any], m: Mapping[str, Any]) -> float | None:
    """GPU seconds of one cell, linear in its length; None when its length is unknown."""
    frames = _frames(cell)
    if frames is None:
        return None
    if cell["mode"] == "teacher_forced":
        work = frames * tf_ms_per_frame(cell, m) / 1e3
    else:  # generate / transcribe: one step per frame; Mimi decodes the first input's output
        step = m["generate_ms_per_step"]["on" if _ttt_on(cell) else "off"]
        first = float(cell["data"]["demo"]["durations"][0]) * FRAME_RATE
        work = frames * step / 1e3 + (first * m["decode_ms_per_frame"] / 1e3
                                      if cell["mode"] == "generate" else 0.0)
    return m["fixed_s_per_cell"] + work


def _peak_gb(cell: Mapping[str, Any], m: Mapping[str, Any]) -> float | None:
    peaks = m.get("peak_gb", {})
    side = "on" if _ttt_on(cell) else "off"
    if cell.get("check_upstream"):
        key = "regression"
    elif cell["mode"] != "teacher_forced":
        key = f"generate_{side}"
    elif cell.get("yarn"):
        yarn = {k.split("_")[1]: v for k, v in peaks.items() if k.startswith("yarn_") and k.endswith(side)}
        return _nearest(yarn, float(cell["yarn"]["context"])) if yarn else None
    else:
        key = f"tf_{side}"
    return peaks.get(key)


def estimate(cells: Mapping[str, Mapping[str, Any]], m: Mapping[str, Any]) -> dict[str, dict]:
    """Per family: cells, priced cells, GPU-hours, the longest cell and its seconds, peak GB."""
    out: dict[str, dict] = {}
    for path, cell in cells.items():
        row = out.setdefault(cell["family"], {"cells": 0, "priced": 0, "gpu_hours": 0.0,
                                              "longest_s": 0.0, "longest_cell": None,
                                              "peak_gb": None})
        row["cells"] += 1
        seconds = cell_seconds(cell, m)
        if seconds is not None:
            row["priced"] += 1
            row["gpu_hours"] += seconds / 3600
            if seconds > row["longest_s"]:
                row["longest_s"], row["longest_cell"] = seconds, path
        peak = _peak_gb(cell, m)
        if peak is not None:
            row["peak_gb"] = max(peak, row["peak_gb"] or 0.0)
    return out


def lines(cells: Mapping[str, Mapping[str, Any]], costs: Mapping[str, Any] | None) -> list[str]:
    """One line per family (and a total) for a dry run; one line saying why when no costs exist."""
    if cells and all(str(c.get("device", "")).startswith("cpu") for c in cells.values()):
        return ["cost: every cell runs on the CPU; the GPU costs measured at 7B do not apply"]
    if costs is None:
        return ["cost: no measured costs (bench/results/*-matrix-cost.json); run bench/matrix_cost.py on a GPU"]
    m = costs["measured"]
    where = (f"priced with {costs.get('model', 'moshi 7b')} costs measured on {costs.get('device', '?')}, "
             f"{costs.get('date', '?')}")
    rows = estimate(cells, m)
    out = []
    for family, r in rows.items():
        unpriced = r["cells"] - r["priced"]
        peak = f", peak {r['peak_gb']:.1f} GB" if r["peak_gb"] is not None else ""
        out.append(f"cost {family}: {r['cells']} cells, {r['gpu_hours']:.3f} GPU-h, longest "
                   f"{r['longest_s']:.0f} s ({r['longest_cell']}){peak}"
                   + (f"; {unpriced} cell(s) read a manifest: not priced" if unpriced else ""))
    total = sum(r["gpu_hours"] for r in rows.values())
    out.append(f"cost total: {sum(r['cells'] for r in rows.values())} cells, {total:.3f} GPU-h ({where})")
    return out
