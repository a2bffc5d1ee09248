"""Gates: the run completed, and TTT stayed numerically stable (finite values, ‖W‖ plateaus, the
clip does not saturate)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ttt.report.tables import number
from ttt.report.verdicts.loading import DONE
from ttt.report.verdicts.registry import Scope, check, gate


@gate("run.completed", section=None)
def completed(s: Scope):
    """Every cell of the matrix finished (ok or diverged); a failed cell is judged by no gate."""
    return [check(c.name, 0.0 if c.done else 1.0, "0 failed",
                  c.done, f"status corrupt: {c.corrupt}" if c.corrupt else
                  f"status {c.row.get('status')}" + (
                      f": {c.row.get('error')}" if c.row.get("error") else "") + (
                      " (no metrics.json)" if c.row.get("status") in DONE and c.metrics is None
                      else ""))
            for c in s.cells]


@gate("stability.finite", section="finite")
def finite(s: Scope):
    """No NaN/Inf anywhere in a cell's metrics, windows or telemetry, and not diverged."""
    out = []
    for c in s.cells:
        if not c.done:
            continue
        bad = []
        for key in ("perplexity", "wer", "ttt_telemetry", "ab"):
            section = getattr(c.result, key)
            section = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else section
            for path, value in _numbers(section, key):
                if not math.isfinite(value):
                    bad.append(f"metrics {path}={value}")
        for name in ("timeseries.csv", "telemetry.csv"):
            for row in c.table(name):
                for k, v in row.items():
                    x = number(v)
                    if x is not None and not math.isfinite(x):
                        bad.append(f"{name} {k}={v} at step {row.get('step', row.get('start_s'))}")
        if c.result.diverged:
            bad.insert(0, "marked diverged")
        out.append(check(c.name, float(len(bad)), "0 non-finite", not bad,
                         "; ".join(bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")
                         if bad else "all values finite"))
    return out


def _numbers(obj, path):
    if isinstance(obj, bool) or obj is None:
        return
    if isinstance(obj, (int, float)):
        yield path, float(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")


@gate("stability.w_norm_plateau", section="w_norm_plateau")
def w_norm_plateau(s: Scope):
    """‖W‖_F plateaus: over the last ``tail`` of each run (its last input), the least-squares
    slope of ‖W‖_F against the step, times the tail's length, relative to the tail's mean ‖W‖_F
    (the relative change the trend makes over the tail), at most ``max_rel_change``."""
    g = s.g
    out = []
    for c in s.cells:
        if not (c.done and c.ttt_on):
            continue
        rows = c.table("telemetry.csv")
        last_item = max((number(r.get("item")) or 0 for r in rows), default=0)
        worst, where, judged = 0.0, None, False
        for layer in sorted({r["layer"] for r in rows}, key=number):
            pts = [(number(r["step"]), number(r["w_norm"])) for r in rows
                   if r["layer"] == layer and (number(r.get("item")) or 0) == last_item]
            pts = sorted(p for p in pts if p[0] is not None and p[1] is not None)
            tail = pts[len(pts) - max(3, math.ceil(g["tail"] * len(pts))):] if len(pts) >= 3 else []
            if not tail:
                continue
            x, y = np.array([p[0] for p in tail]), np.array([p[1] for p in tail])
            if not np.isfinite(y).all():
                worst, where, judged = math.inf, f"layer {layer}: non-finite ‖W‖", True
                continue
            slope = np.polyfit(x, y, 1)[0] if np.ptp(x) > 0 else 0.0
            change = abs(slope) * np.ptp(x) / max(abs(y.mean()), 1e-30)
            judged = True
            if change >= worst:
                worst, where = float(change), (f"layer {layer}: ‖W‖ {y[0]:.6g} → {y[-1]:.6g} over "
                                               f"steps {x[0]:.0f}–{x[-1]:.0f}")
        if not judged:
            out.append(check(c.name, None, g["max_rel_change"], None,
                             "fewer than 3 telemetry points per layer: too short to judge"))
            continue
        out.append(check(c.name, worst, g["max_rel_change"], worst <= g["max_rel_change"],
                         f"trend over the last {g['tail']:.0%}: {worst:.3%} of ‖W‖ ({where})"))
    return out


@gate("stability.clip_saturation", section="clip_saturation")
def clip_saturation(s: Scope):
    """Fraction of chunk updates whose ‖ΔW‖_F exceeded τ (worst layer), at most ``max_fraction``."""
    g = s.g
    out = []
    for c in s.cells:
        if not (c.done and c.ttt_on):
            continue
        last: dict[tuple, dict] = {}
        for r in c.table("telemetry.csv"):
            last[(r.get("item"), r["layer"])] = r  # counters are cumulative per input
        totals: dict[str, list[float]] = {}
        for (_, layer), r in last.items():
            t = totals.setdefault(layer, [0.0, 0.0])
            t[0] += number(r["clip_events"]) or 0.0
            t[1] += number(r["updates"]) or 0.0
        fractions = {layer: clips / updates for layer, (clips, updates) in totals.items() if updates}
        if not fractions:
            out.append(check(c.name, None, g["max_fraction"], None,
                             "no chunk update: nothing to judge"))
            continue
        layer = max(fractions, key=fractions.get)
        value = fractions[layer]
        clips, updates = totals[layer]
        out.append(check(c.name, value, g["max_fraction"], value <= g["max_fraction"],
                         f"layer {layer}: {clips:.0f} of {updates:.0f} updates clipped"))
    return out
