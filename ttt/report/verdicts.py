"""Test-plan verdicts (seed 000 §1, §4): the success signals as gates over ``results/``.

Each gate is a small function over the matrix's cells (``tables/cells.csv`` plus each cell's
``metrics.json``, ``timeseries.csv``, ``telemetry.csv`` and job log) that returns one check per
cell it judges: ``signal``, ``cell``, ``value``, ``threshold``, ``passed`` (True / False, or None
when the cell cannot be judged, e.g. too short), ``explanation``. ``verdicts.csv`` folds them into
one row per signal (its worst cell); ``verdicts_cells.csv`` keeps every check. Thresholds and the
families each gate looks at come from the ``verdicts:`` section of the workflow config; the
defaults below are the ones documented in ``workflow/schemas/config.schema.yaml``.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ttt.base.files import read_json

# ``families: None`` = every family. lr_grid searches the divergence boundary and telemetry
# forces every chunk to clip: both are left out of the gates that their purpose makes fail.
DEFAULTS: dict[str, dict[str, Any]] = {
    "finite": {"families": ["short_form", "long_form", "yarn", "regression", "telemetry", "ablation"]},
    "w_norm_plateau": {"families": ["long_form"], "tail": 0.5, "max_rel_change": 0.05},
    "clip_saturation": {"families": ["short_form", "long_form", "yarn", "ablation"],
                        "max_fraction": 0.9},
    "pre_update_logits": {"families": ["yarn"], "max_rel_err": 1.0e-4},
    "ttt_off_bitwise": {"families": ["regression"]},
    "embedding_plumbing": {"families": None, "max_abs_diff": 0.0},
    "responsiveness": {"families": ["short_form", "long_form", "yarn"], "max_rel_worse": 1e-4,
                       "max_wer_worse": 0.0, "confidence": 0.95, "resamples": 2000},
    "observability": {"families": None},
    "cost": {"families": ["short_form", "long_form", "yarn"], "max_regression": 0.03},
    "consistency": {"families": None, "max_wer": 0.3, "max_worse": 0.0, "confidence": 0.95,
                    "resamples": 2000},
    "effect": {"families": ["short_form", "long_form", "yarn", "ablation"], "min_output_change": 1e-6},
    "next_chunk_gain": {"families": ["long_form", "yarn"], "min_rel_gain": 1e-6},
    "stress": {"families": ["telemetry"], "min_fraction": 1.0},
    "lr_grid": {"families": ["lr_grid"]},
}
# Relative resolution of the compute dtype (machine epsilon): a fast-weight change ‖W − W₀‖/‖W₀‖
# below it is lost when W is cast for the matmul (bf16: 7.8e-3; fp32: 1.2e-7).
DTYPE_EPS = {"float32": 2.0 ** -23, "bfloat16": 2.0 ** -7, "float16": 2.0 ** -10}
DONE = ("ok", "diverged")


def thresholds(overrides: dict | None = None) -> dict[str, dict[str, Any]]:
    """DEFAULTS with ``overrides`` (the config's ``verdicts:``) merged per gate; unknown gates or
    keys are errors naming them."""
    out = {gate: dict(values) for gate, values in DEFAULTS.items()}
    for gate, values in (overrides or {}).items():
        if gate not in out:
            raise ValueError(f"verdicts: unknown gate {gate!r}; gates are {sorted(out)}")
        unknown = sorted(set(values or {}) - set(out[gate]))
        if unknown:
            raise ValueError(f"verdicts.{gate}: unknown key(s) {unknown}; valid keys are "
                             f"{sorted(out[gate])}")
        out[gate].update(values or {})
    return out


def load_thresholds(path: str | os.PathLike | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return thresholds()
    from ttt.base.files import read_yaml
    raw = read_yaml(path, "thresholds file")
    if raw is not None and not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of gates")
    try:
        return thresholds(raw)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


# ---- cells ------------------------------------------------------------------------------------

@dataclass
class Cell:
    """One row of cells.csv with lazy access to its files."""

    row: dict
    root: Path  # results/cells/<cell>
    _cache: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.row["cell"]

    @property
    def family(self) -> str:
        return self.row["family"]

    @property
    def done(self) -> bool:
        if self.row.get("status") not in DONE or self.metrics is None:
            return False
        for name in ("timeseries.csv", "telemetry.csv"):  # read now: a bad one is named here
            self.table(name)
        return self.corrupt is None

    @property
    def corrupt(self) -> str | None:
        """The first of its files found unreadable (named, with why), or None."""
        return self._cache.get("corrupt")

    def _unreadable(self, exc: Exception):
        self._cache.setdefault("corrupt", str(exc))

    @property
    def ttt_on(self) -> bool:
        return bool(self.metrics and self.metrics.get("ttt"))

    @property
    def metrics(self) -> dict | None:
        if "metrics" not in self._cache:
            path = self.root / "cell" / "metrics.json"
            self._cache["metrics"] = self._object(path) if path.is_file() else None
        return self._cache["metrics"]

    def table(self, name: str) -> list[dict]:
        if name not in self._cache:
            try:
                self._cache[name] = read_csv(self.root / "cell" / name)
            except ValueError as exc:
                self._unreadable(exc)
                self._cache[name] = []
        return self._cache[name]

    @property
    def status(self) -> dict:
        path = self.root / "status.json"
        return (self._object(path) or {}) if path.is_file() else {}

    def _object(self, path: Path) -> dict | None:
        """A JSON object, or None when unreadable (recorded: the cell is then not done)."""
        try:
            data = read_json(path, path.name)
            if not isinstance(data, dict):
                raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
            return data
        except ValueError as exc:
            self._unreadable(exc)
            return None

    def log_path(self) -> Path | None:
        """The job's stdout log: status.json's path, else the one beside the cell (a results
        folder moved elsewhere keeps its logs under ``jobs/``)."""
        logged = self.status.get("log")
        if logged and Path(logged).is_file():
            return Path(logged)
        job = self.status.get("job_id") or self.row.get("job_id")
        found = sorted((self.root / "jobs").glob(f"{job}_*log.out")) if job else []
        found = found or sorted((self.root / "jobs").glob("*_log.out"))
        return found[-1] if found else None


def read_csv(path: Path) -> list[dict]:
    """Rows of a CSV table; ValueError naming the file when it cannot be read."""
    if not path.is_file():
        return []
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: unreadable table ({type(exc).__name__})") from None
    return [r for r in rows if set(r) != {"empty"}]


def load_cells(results: str | os.PathLike) -> list[Cell]:
    results = Path(results)
    table = results / "tables" / "cells.csv"
    if not table.is_file():
        raise ValueError(f"{table}: not found (run the aggregate rule first)")
    return [Cell(row, results / "cells" / row["cell"]) for row in read_csv(table)]


def num(value) -> float | None:
    """A number from a CSV/JSON field, None when empty; NaN/Inf are kept."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def check(signal, cell, value, threshold, passed, explanation, no_effect=False) -> dict:
    """One judged cell. ``no_effect`` marks a failed check whose reason is that TTT did
    nothing: its verdict reads "no effect" rather than "fail" (and never "pass")."""
    return {"signal": signal, "cell": cell, "value": value, "threshold": threshold,
            "passed": False if no_effect else passed, "explanation": explanation,
            "no_effect": bool(no_effect)}


def _in(cells: list[Cell], cfg: dict) -> list[Cell]:
    families = cfg["families"]
    return [c for c in cells if families is None or c.family in families]


# ---- run --------------------------------------------------------------------------------------

def gate_completed(cells, _cfg):
    """Every cell of the matrix finished (ok or diverged); a failed cell is judged by no gate."""
    return [check("run.completed", c.name, 0.0 if c.done else 1.0, "0 failed",
                  c.done, f"status corrupt: {c.corrupt}" if c.corrupt else
                  f"status {c.row.get('status')}" + (
                      f": {c.row.get('error')}" if c.row.get("error") else "") + (
                      " (no metrics.json)" if c.row.get("status") in DONE and c.metrics is None
                      else ""))
            for c in cells]


# ---- stability --------------------------------------------------------------------------------

def gate_finite(cells, cfg):
    """No NaN/Inf anywhere in a cell's metrics, windows or telemetry, and not diverged."""
    out = []
    for c in _in(cells, cfg["finite"]):
        if not c.done:
            continue
        bad = []
        m = c.metrics
        for key in ("perplexity", "wer", "ttt_telemetry", "ab"):
            for path, value in _numbers(m.get(key), key):
                if not math.isfinite(value):
                    bad.append(f"metrics {path}={value}")
        for name in ("timeseries.csv", "telemetry.csv"):
            for row in c.table(name):
                for k, v in row.items():
                    x = num(v)
                    if x is not None and not math.isfinite(x):
                        bad.append(f"{name} {k}={v} at step {row.get('step', row.get('start_s'))}")
        if m.get("diverged"):
            bad.insert(0, "marked diverged")
        out.append(check("stability.finite", c.name, float(len(bad)), "0 non-finite", not bad,
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


def gate_w_norm_plateau(cells, cfg):
    """‖W‖_F plateaus: over the last ``tail`` of each run (its last input), the least-squares
    slope of ‖W‖_F against the step, times the tail's length, relative to the tail's mean ‖W‖_F
    (the relative change the trend makes over the tail), at most ``max_rel_change``."""
    g = cfg["w_norm_plateau"]
    out = []
    for c in _in(cells, g):
        if not (c.done and c.ttt_on):
            continue
        rows = c.table("telemetry.csv")
        last_item = max((num(r.get("item")) or 0 for r in rows), default=0)
        worst, where, judged = 0.0, None, False
        for layer in sorted({r["layer"] for r in rows}, key=num):
            pts = [(num(r["step"]), num(r["w_norm"])) for r in rows
                   if r["layer"] == layer and (num(r.get("item")) or 0) == last_item]
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
            out.append(check("stability.w_norm_plateau", c.name, None, g["max_rel_change"], None,
                             "fewer than 3 telemetry points per layer: too short to judge"))
            continue
        out.append(check("stability.w_norm_plateau", c.name, worst, g["max_rel_change"],
                         worst <= g["max_rel_change"],
                         f"trend over the last {g['tail']:.0%}: {worst:.3%} of ‖W‖ ({where})"))
    return out


def gate_clip_saturation(cells, cfg):
    """Fraction of chunk updates whose ‖ΔW‖_F exceeded τ (worst layer), at most ``max_fraction``."""
    g = cfg["clip_saturation"]
    out = []
    for c in _in(cells, g):
        if not (c.done and c.ttt_on):
            continue
        last: dict[tuple, dict] = {}
        for r in c.table("telemetry.csv"):
            last[(r.get("item"), r["layer"])] = r  # counters are cumulative per input
        totals: dict[str, list[float]] = {}
        for (_, layer), r in last.items():
            t = totals.setdefault(layer, [0.0, 0.0])
            t[0] += num(r["clip_events"]) or 0.0
            t[1] += num(r["updates"]) or 0.0
        fractions = {layer: clips / updates for layer, (clips, updates) in totals.items() if updates}
        if not fractions:
            out.append(check("stability.clip_saturation", c.name, None, g["max_fraction"], None,
                             "no chunk update: nothing to judge"))
            continue
        layer = max(fractions, key=fractions.get)
        value = fractions[layer]
        clips, updates = totals[layer]
        out.append(check("stability.clip_saturation", c.name, value, g["max_fraction"],
                         value <= g["max_fraction"],
                         f"layer {layer}: {clips:.0f} of {updates:.0f} updates clipped"))
    return out


# ---- correctness ------------------------------------------------------------------------------

def gate_pre_update_logits(cells, cfg):
    """YaRN A/B: before the first update, TTT-on logits equal TTT-off (relative error)."""
    g = cfg["pre_update_logits"]
    out = []
    for c in _in(cells, g):
        if not (c.done and c.ttt_on):
            continue
        err = num((c.metrics.get("ab") or {}).get("pre_update_logits_rel_err"))
        if err is None:
            out.append(check("correctness.pre_update_logits", c.name, None, g["max_rel_err"], False,
                             "no A/B result in metrics.json (the cell needs ab: true)"))
            continue
        out.append(check("correctness.pre_update_logits", c.name, err, g["max_rel_err"],
                         err <= g["max_rel_err"], f"max |on − off| / max |off| = {err:.3g} "
                         "on the first chunk"))
    return out


def gate_ttt_off_bitwise(cells, cfg):
    """TTT off: logits bitwise equal to upstream moshi's own loader."""
    g = cfg["ttt_off_bitwise"]
    out = []
    for c in _in(cells, g):
        if not c.done or c.ttt_on:
            continue
        reg = c.metrics.get("regression")
        if not reg:
            out.append(check("correctness.ttt_off_bitwise", c.name, None, 0.0, False,
                             "no upstream comparison in metrics.json (the cell needs check_upstream)"))
            continue
        diff = num(reg.get("max_abs_diff"))
        equal = reg.get("bitwise_equal") is True
        out.append(check("correctness.ttt_off_bitwise", c.name, diff, 0.0, equal,
                         f"{'bitwise equal' if equal else 'differs'} over {reg.get('steps')} steps "
                         f"(max |diff| {diff:.3g})"))
    return out


def gate_embedding_plumbing(cells, cfg):
    """The X₀ every In-Place TTT layer receives equals the summed token embeddings."""
    g = cfg["embedding_plumbing"]
    out = []
    for c in _in(cells, g):
        if not (c.done and c.ttt_on):
            continue
        resolved = (c.metrics.get("config") or {}).get("resolved_ttt") or {}
        if resolved.get("variant", "inplace") != "inplace" or \
                resolved.get("target_source", "embeddings") != "embeddings":
            continue  # no token-embedding target (the hybrid, or V̂ from the MLP's own input)
        plumbing = c.metrics.get("plumbing")
        diff = num((plumbing or {}).get("max_abs_diff"))
        if diff is None:
            out.append(check("correctness.embedding_plumbing", c.name, None, g["max_abs_diff"],
                             False, "no plumbing check in metrics.json"))
            continue
        out.append(check("correctness.embedding_plumbing", c.name, diff, g["max_abs_diff"],
                         diff <= g["max_abs_diff"],
                         f"layers {plumbing.get('layers')}: max |X0 received − Σ embeddings| "
                         f"{diff:.3g} over {plumbing.get('steps')} steps"))
    return out


# ---- responsiveness ---------------------------------------------------------------------------

def bootstrap_ci(d: np.ndarray, confidence: float, resamples: int, seed: int = 0):
    """Percentile bootstrap CI of the mean of ``d`` (resampling windows)."""
    if len(d) == 1:
        return float(d[0]), float(d[0])
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def gate_responsiveness(cells, cfg):
    """TTT on is not worse than its TTT-off twin, window by window: the mean per-window difference
    (perplexity: relative, on/off − 1; WER: absolute) with a bootstrap CI over windows. Fails
    when the whole CI lies above the tolerance (significantly worse); says "no effect" when on
    equals off in every window (within ``effect.min_output_change``)."""
    g = cfg["responsiveness"]
    min_change = cfg["effect"]["min_output_change"]
    by_name = {c.name: c for c in cells}
    out = []
    for c in _in(cells, g):
        twin = by_name.get(c.row.get("twin") or "")
        if not (c.done and c.ttt_on and twin is not None and twin.done):
            continue
        on = {(r.get("item"), num(r.get("start_s"))): r for r in c.table("timeseries.csv")}
        off = {(r.get("item"), num(r.get("start_s"))): r for r in twin.table("timeseries.csv")}
        for column, signal, relative, tol in (("text_ppl", "responsiveness.perplexity_text", True, g["max_rel_worse"]),
                                              ("audio_ppl", "responsiveness.perplexity_audio", True, g["max_rel_worse"]),
                                              ("wer", "responsiveness.wer", False, g["max_wer_worse"])):
            pairs = [(num(on[k].get(column)), num(off[k].get(column))) for k in on if k in off]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None
                     and math.isfinite(a) and math.isfinite(b) and (b > 0 or not relative)]
            if not pairs:
                continue
            a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
            d = a / b - 1 if relative else a - b
            lo, hi = bootstrap_ci(d, g["confidence"], g["resamples"])
            mean = float(d.mean())
            fmt = (lambda x: f"{x:+.2%}") if relative else (lambda x: f"{x:+.4f}")
            what = "relative" if relative else "absolute"
            same = bool(np.all(np.abs(d) <= (min_change if relative else 0.0)))
            out.append(check(signal, f"{c.name} vs {twin.name}", mean, tol, lo <= tol,
                             ("no effect: TTT on equals off in every window; " if same else "")
                             + f"{column} on − off ({what}) {fmt(mean)} [{fmt(lo)}, {fmt(hi)}] "
                             f"{g['confidence']:.0%} CI over {len(d)} windows; mean on "
                             f"{a.mean():.4g} vs off {b.mean():.4g}", no_effect=same))
    return out


# ---- observability ----------------------------------------------------------------------------

def gate_observability(cells, cfg):
    """Telemetry exactly for the layers the config makes TTT layers (each updating when the run
    has a full chunk), counters monotonic, and the TTT-TELEMETRY log line present and parseable."""
    from ttt.config import TTTConfig
    from ttt.session.telemetry import parse_telemetry_line

    g = cfg["observability"]
    out = []
    for c in _in(cells, g):
        if not c.done:
            continue
        m = c.metrics
        rows = c.table("telemetry.csv")
        present = {int(num(r["layer"])) for r in rows}
        resolved = (m.get("config") or {}).get("resolved_ttt")
        try:
            cfg_ttt = TTTConfig.from_dict(resolved) if resolved and m.get("ttt") else None
            expected = set(cfg_ttt.layer_indices(int(m["model_layers"]))) if cfg_ttt else set()
        except (ValueError, KeyError, TypeError) as exc:
            out.append(check("observability.telemetry_layers", c.name, None, 0.0, False,
                             f"cannot tell which layers should update: {exc!r}"))
        else:
            final = {}
            for r in rows:
                final[int(num(r["layer"]))] = num(r["updates"]) or 0.0
            should_update = cfg_ttt is not None and (m.get("steps") or 0) > cfg_ttt.chunk_size
            idle = sorted(i for i in expected & present if should_update and not final.get(i))
            missing, extra = sorted(expected - present), sorted(present - expected)
            problems = len(missing) + len(extra) + len(idle)
            out.append(check("observability.telemetry_layers", c.name, float(problems), 0.0,
                             problems == 0,
                             f"expected layers {sorted(expected)}, telemetry for {sorted(present)}"
                             + (f"; missing {missing}" if missing else "")
                             + (f"; unexpected {extra}" if extra else "")
                             + (f"; never updated {idle}" if idle else "")))
        if not rows:
            continue
        decreases, seen = 0, {}
        for r in rows:
            key = (r.get("item"), r["layer"])
            now = (num(r["updates"]), num(r["clip_events"]))
            before = seen.get(key)
            if before is not None:
                decreases += sum(1 for a, b in zip(before, now) if b is not None and a is not None and b < a)
            seen[key] = now
        out.append(check("observability.counters_monotonic", c.name, float(decreases), 0.0,
                         decreases == 0, f"{decreases} decreases of updates/clip_events over "
                         f"{len(rows)} telemetry rows"))
        log = c.log_path()
        if log is None:
            out.append(check("observability.log_line", c.name, None, 0.0, False, "no job log found"))
            continue
        records, errors = [], []
        for n, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
            try:
                record = parse_telemetry_line(line)
            except ValueError as exc:
                errors.append(f"line {n}: {exc}")
                continue
            if record is not None:
                records.append(record)
        logged = {int(k) for k in records[-1]["layers"]} if records else set()
        problems = len(errors) + (0 if records else 1) + len(logged ^ present)
        out.append(check("observability.log_line", c.name, float(problems), 0.0, problems == 0,
                         f"{len(records)} TTT-TELEMETRY lines in {log.name}"
                         + (f", last for layers {sorted(logged)}" if records else "")
                         + (f"; {len(errors)} malformed ({errors[0]})" if errors else "")
                         + (f"; telemetry.csv has layers {sorted(present)}" if logged != present else "")))
    return out


# ---- cost -------------------------------------------------------------------------------------

def gate_cost(cells, cfg):
    """Throughput: TTT-on ms/step (p50) over its TTT-off twin's, minus 1, at most
    ``max_regression``."""
    g = cfg["cost"]
    by_name = {c.name: c for c in cells}
    out = []
    for c in _in(cells, g):
        twin = by_name.get(c.row.get("twin") or "")
        if not (c.done and c.ttt_on and twin is not None and twin.done):
            continue
        on = num((c.metrics.get("throughput") or {}).get("ms_per_step_p50"))
        off = num((twin.metrics.get("throughput") or {}).get("ms_per_step_p50"))
        if not on or not off:
            out.append(check("cost.throughput", f"{c.name} vs {twin.name}", None,
                             g["max_regression"], False, "no throughput measured"))
            continue
        value = on / off - 1
        out.append(check("cost.throughput", f"{c.name} vs {twin.name}", value, g["max_regression"],
                         value <= g["max_regression"],
                         f"{on:.3g} vs {off:.3g} ms/step (p50): {value:+.1%}"))
    return out


# ---- quality (what was heard) ------------------------------------------------------------------

UNTRAINED_CODEC = "n/a: the codec is untrained (random Mimi: its audio is noise, nothing to hear)"


def _asr(c: Cell) -> dict | None:
    path = c.root / "asr" / "asr.json"
    return json.loads(path.read_text()) if path.is_file() else None


def gate_consistency(cells, cfg):
    """What a recogniser heard in a generate cell's audio matches Moshi's text stream: the cell's
    consistency WER at most ``max_wer``; and TTT on is not less consistent than its TTT-off twin
    (per-window on − off, bootstrap CI, fails when the whole CI is above ``max_worse``). Never
    judged on an untrained codec's noise."""
    g = cfg["consistency"]
    by_name = {c.name: c for c in cells}
    out = []
    for c in _in(cells, g):
        asr = _asr(c) if c.done else None
        if not asr or asr.get("status") != "ok":
            continue
        untrained = bool(asr.get("codec_untrained"))
        wer = num((asr.get("consistency") or {}).get("wer"))
        if untrained:
            out.append(check("quality.consistency_wer", c.name, wer, g["max_wer"], None, UNTRAINED_CODEC))
        elif wer is None:
            out.append(check("quality.consistency_wer", c.name, None, g["max_wer"], None,
                             "Moshi's text stream has no word: nothing to compare"))
        else:
            ref = (asr.get("consistency") or {}).get("ref_words")
            out.append(check("quality.consistency_wer", c.name, wer, g["max_wer"], wer <= g["max_wer"],
                             f"heard vs text stream: WER {wer:.3f} over {ref} text words"))
        twin = by_name.get(c.row.get("twin") or "")
        twin_asr = _asr(twin) if twin is not None and twin.done and c.ttt_on else None
        if not twin_asr or twin_asr.get("status") != "ok":
            continue
        name = f"{c.name} vs {twin.name}"
        if untrained or twin_asr.get("codec_untrained"):
            out.append(check("quality.consistency_wer_vs_off", name, None, g["max_worse"], None,
                             UNTRAINED_CODEC))
            continue
        on = {num(r.get("start_s")): num(r.get("consistency_wer")) for r in _jsonl(c.root / "asr" / "asr.jsonl")}
        off = {num(r.get("start_s")): num(r.get("consistency_wer")) for r in _jsonl(twin.root / "asr" / "asr.jsonl")}
        pairs = [(on[k], off[k]) for k in on if k in off and on[k] is not None and off[k] is not None]
        if not pairs:
            out.append(check("quality.consistency_wer_vs_off", name, None, g["max_worse"], None,
                             "no window where both text streams have words"))
            continue
        d = np.array([a - b for a, b in pairs])
        lo, hi = bootstrap_ci(d, g["confidence"], g["resamples"])
        said = lambda rows: [(r.get("start_s"), r.get("hypothesis"), r.get("asr_hypothesis")) for r in rows]
        same = said(_jsonl(c.root / "asr" / "asr.jsonl")) == said(_jsonl(twin.root / "asr" / "asr.jsonl"))
        out.append(check("quality.consistency_wer_vs_off", name, float(d.mean()), g["max_worse"],
                         lo <= g["max_worse"],
                         ("no effect: TTT on said and was heard saying the same as off in every "
                          "window; " if same else "")
                         + f"consistency WER on − off {d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}] "
                         f"{g['confidence']:.0%} CI over {len(d)} windows", no_effect=same))
    return out


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- effect: does TTT do anything at all? ------------------------------------------------------

def effect_of(c: Cell, twin: Cell | None, min_change: float) -> tuple[bool, float, str]:
    """(TTT had an effect, largest relative fast-weight change, why) for a TTT-on cell.

    No effect when ‖W − W₀‖/‖W₀‖ stays below the compute dtype's resolution in every layer (the
    cast for the matmul rounds the change away), or when the outputs equal the TTT-off twin's in
    every window (perplexity within ``min_change`` relative; generated or transcribed text
    identical). Names lr·τ, the bound on each update's size."""
    m = c.metrics
    dtype = (m.get("config") or {}).get("dtype", "float32")
    eps = DTYPE_EPS.get(dtype, DTYPE_EPS["float32"])
    rel = max((num(r.get("w_drift")) / num(r.get("w_norm")) for r in c.table("telemetry.csv")
               if num(r.get("w_drift")) is not None and num(r.get("w_norm"))), default=0.0)
    ttt = (m.get("config") or {}).get("resolved_ttt") or {}
    lr, tau = ttt.get("lr"), ttt.get("delta_clip_fro_norm")
    bound = (f"lr·τ = {lr:g}·{tau:g} = {lr * tau:.3g} bounds each update's ‖ΔW‖_F"
             if lr is not None and tau else f"lr = {lr} (no clip: lr·τ bounds nothing)")
    reasons = []
    if not rel >= eps:  # NaN counts as no measurable change too
        reasons.append(f"‖W − W₀‖/‖W₀‖ ≤ {rel:.3g}, below {dtype} resolution {eps:.2g}")
    same = _outputs_equal(c, twin, min_change) if twin is not None else None
    if same:
        reasons.append(f"outputs equal the TTT-off twin's in every window ({same})")
    if reasons:
        return False, rel, "no effect: " + "; ".join(reasons) + f"; {bound}"
    return True, rel, (f"‖W − W₀‖/‖W₀‖ up to {rel:.3g} (≥ {dtype} resolution {eps:.2g}), outputs "
                       f"differ from the TTT-off twin; {bound}")


def _outputs_equal(c: Cell, twin: Cell, min_change: float) -> str | None:
    """What matched, when every shared window has the same perplexities (within ``min_change``,
    relative) or the same text as the twin; None when something differs or nothing compares."""
    on = {(r.get("item"), num(r.get("start_s"))): r for r in c.table("timeseries.csv")}
    off = {(r.get("item"), num(r.get("start_s"))): r for r in twin.table("timeseries.csv")}
    keys = [k for k in on if k in off]
    compared = []
    for column in ("text_ppl", "audio_ppl", "wer"):
        pairs = [(num(on[k].get(column)), num(off[k].get(column))) for k in keys]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if not pairs:
            continue
        if any(abs(a - b) > min_change * abs(b) for a, b in pairs):
            return None
        compared.append(f"{column} over {len(pairs)} windows")
    texts = [_transcript(x) for x in (c, twin)]
    if texts[0] is not None and texts[1] is not None:
        if texts[0] != texts[1]:
            return None
        compared.append("identical transcript")
    return ", ".join(compared) or None


def _transcript(c: Cell) -> str | None:
    path = c.root / "cell" / "transcript.txt"
    return path.read_text() if path.is_file() else None


def _twin(c: Cell, by_name: dict) -> Cell | None:
    twin = by_name.get(c.row.get("twin") or "")
    return twin if twin is not None and twin.done else None


def gate_effect(cells, cfg):
    """TTT did something: the fast weights moved by more than the compute dtype resolves, and
    the outputs differ from the TTT-off twin's past the first chunk. Fails with "no effect"."""
    g = cfg["effect"]
    by_name = {c.name: c for c in cells}
    out = []
    for c in _in(cells, g):
        if not (c.done and c.ttt_on):
            continue
        works, rel, why = effect_of(c, _twin(c, by_name), g["min_output_change"])
        out.append(check("responsiveness.effect", c.name, rel, "≥ dtype resolution", works, why,
                         no_effect=not works))
    return out


def gate_next_chunk_gain(cells, cfg):
    """Figure 5's health signal: ℓ(W⁽⁰⁾) − ℓ(W⁽ⁱ⁾) on chunk i ≥ 1, the help the earlier chunks'
    updates give this chunk's inner loss (after < before is true by construction for In-Place TTT
    and is not judged). Per layer the mean gain relative to mean |ℓ(W⁽⁰⁾)|; the worst layer must be
    positive: below ``min_rel_gain`` in size, or when the effect test finds TTT inert (a gain of
    weights that move below the dtype's resolution changes nothing), it is "no effect"; negative
    it fails."""
    from ttt.session.telemetry import next_chunk_gain
    g = cfg["next_chunk_gain"]
    by_name = {c.name: c for c in cells}
    out = []
    for c in _in(cells, g):
        if not (c.done and c.ttt_on):
            continue
        works, _, why = effect_of(c, _twin(c, by_name), cfg["effect"]["min_output_change"])
        gains = next_chunk_gain(c.table("telemetry.csv"))
        if not gains:
            out.append(check("health.next_chunk_gain", c.name, None, "> 0", None,
                             "fewer than 2 chunk updates per input: nothing to judge"))
            continue
        layer = min(gains, key=lambda k: gains[k]["rel"] if math.isfinite(gains[k]["rel"]) else -math.inf)
        worst = gains[layer]
        inert = not works or (math.isfinite(worst["rel"]) and all(
            abs(x["rel"]) < g["min_rel_gain"] for x in gains.values()))
        out.append(check("health.next_chunk_gain", c.name, worst["rel"], "> 0",
                         worst["rel"] > 0,
                         (f"{why}; " if not works else "no effect: " if inert else "")
                         + f"layer {layer}: ℓ(W⁽⁰⁾) − ℓ(W⁽ⁱ⁾) = {worst['mean']:.4g} on average "
                         f"({worst['rel']:+.3g} of |ℓ(W⁽⁰⁾)|), positive on {worst['positive']:.0%} "
                         f"of {worst['chunks']} chunks", no_effect=inert))
    return out


def gate_stress(cells, cfg):
    """The τ-stress family does what it is for: every update clips (at least ``min_fraction``)
    and the effect signal recognises the resulting no-op ("no effect", naming lr·τ)."""
    g = cfg["stress"]
    by_name = {c.name: c for c in cells}
    out = []
    for c in _in(cells, g):
        if not (c.done and c.ttt_on):
            continue
        clips = sum(num(r) or 0 for r in _final(c, "clip_events"))
        updates = sum(num(r) or 0 for r in _final(c, "updates"))
        fraction = clips / updates if updates else 0.0
        works, _, why = effect_of(c, _twin(c, by_name), cfg["effect"]["min_output_change"])
        out.append(check("stress.clips", c.name, fraction, g["min_fraction"],
                         fraction >= g["min_fraction"] and not works,
                         f"{clips:.0f} of {updates:.0f} updates clipped; effect: {why}"))
    return out


def _final(c: Cell, key: str) -> list:
    """A cumulative counter's last value per (input, layer)."""
    last = {(r.get("item"), r["layer"]): r.get(key) for r in c.table("telemetry.csv")}
    return list(last.values())


def gate_lr_grid(cells, cfg):
    """Per chunk size, the lr grid brackets its optimum: the best lr (lowest text perplexity among
    cells not diverged; aggregate's ``best_lr_for_chunk``) beats TTT off and lies strictly inside
    the grid, and a larger lr diverges (``divergence_boundary_lr``: non-finite, clip-saturated,
    or perplexity above ``aggregate.BLOWUP_PPL_RATIO`` × TTT off)."""
    g = cfg["lr_grid"]
    out = []
    grid = [c for c in _in(cells, g) if c.row.get("ttt") == "on" and c.row.get("lr")]
    for chunk in sorted({c.row.get("chunk") for c in grid}, key=lambda x: num(x) or 0):
        rows = [c.row for c in grid if c.row.get("chunk") == chunk]
        lrs = sorted({num(r["lr"]) for r in rows})
        best = next((r for r in rows if r.get("best_lr_for_chunk") == "True"), None)
        boundary = num(rows[0].get("divergence_boundary_lr"))
        name = f"lr_grid chunk {chunk}"
        if best is None:
            out.append(check("lr_grid.boundary", name, None, "inside", False,
                             "every lr diverged: no best lr"))
            continue
        lr, ppl, off = num(best["lr"]), num(best.get("perplexity_text")), num(best.get("perplexity_text_off"))
        text = (f"best lr {lr:g} (text ppl {ppl:.4g} vs TTT off {off if off is None else f'{off:.4g}'})"
                f" in grid {[f'{x:g}' for x in lrs]}; "
                + (f"diverges from lr {boundary:g}" if boundary else "no lr diverged"))
        if off is not None and ppl is not None and ppl >= off:
            out.append(check("lr_grid.boundary", name, lr, "inside", False,
                             f"no effect: no lr beats TTT off; {text}", no_effect=True))
            continue
        inside = lrs[0] < lr < lrs[-1] and boundary is not None and boundary > lr
        out.append(check("lr_grid.boundary", name, lr, "inside", inside,
                         text + ("" if inside else "; the grid must bracket the best lr and reach "
                                 "a diverging lr (extend lr_grid.lrs)")))
    return out


GATES: list[Callable] = [gate_completed, gate_finite, gate_w_norm_plateau, gate_clip_saturation,
                         gate_pre_update_logits, gate_ttt_off_bitwise, gate_embedding_plumbing,
                         gate_effect, gate_responsiveness, gate_next_chunk_gain, gate_observability,
                         gate_cost, gate_consistency, gate_stress, gate_lr_grid]
SIGNALS = ["run.completed", "stability.finite", "stability.w_norm_plateau",
           "stability.clip_saturation", "correctness.pre_update_logits",
           "correctness.ttt_off_bitwise", "correctness.embedding_plumbing",
           "responsiveness.effect", "responsiveness.perplexity_text",
           "responsiveness.perplexity_audio", "responsiveness.wer", "health.next_chunk_gain",
           "observability.telemetry_layers", "observability.counters_monotonic",
           "observability.log_line", "cost.throughput", "quality.consistency_wer",
           "quality.consistency_wer_vs_off", "stress.clips", "lr_grid.boundary"]


def evaluate(results: str | os.PathLike, cfg: dict | None = None) -> tuple[list[dict], list[dict]]:
    """(summary rows, one per signal; every per-cell check)."""
    cfg = cfg or thresholds()
    cells = load_cells(results)
    checks = [c for gate in GATES for c in gate(cells, cfg)]
    return summarize(checks), checks


def summarize(checks: list[dict]) -> list[dict]:
    rows = []
    for signal in SIGNALS:
        mine = [c for c in checks if c["signal"] == signal]
        judged = [c for c in mine if c["passed"] is not None]
        failed = [c for c in judged if not c["passed"]]
        threshold = mine[0]["threshold"] if mine else None
        if not judged:
            rows.append({"signal": signal, "cells": ";".join(c["cell"] for c in mine), "value": None,
                         "threshold": threshold, "verdict": "n/a",
                         "explanation": mine[0]["explanation"] if mine else "no cell to judge"})
            continue
        broken = [c for c in failed if not c.get("no_effect")]
        worst = max(broken or failed or judged, key=_badness)
        verdict = "fail" if broken else NO_EFFECT if failed else "pass"
        head = (f"{len(failed)} of {len(judged)} {verdict}" if failed else f"{len(judged)} pass") + \
            f"; worst {worst['cell']}: {worst['explanation']}"
        rows.append({"signal": signal, "cells": ";".join(c["cell"] for c in judged),
                     "value": worst["value"], "threshold": threshold,
                     "verdict": verdict, "explanation": head})
    return rows


NO_EFFECT = "no effect"  # a verdict of its own: TTT did nothing (never "pass")


def _badness(c: dict) -> float:
    value = c["value"]
    if value is None:
        return -math.inf
    return math.inf if math.isnan(value) else value


def write_verdicts(results: str | os.PathLike, tables: str | os.PathLike, cfg: dict | None = None,
                   rst: str | os.PathLike | None = None, rst_intro: str | os.PathLike | None = None
                   ) -> list[dict]:
    from ttt.base.files import write_csv
    summary, checks = evaluate(results, cfg)
    tables = Path(tables)
    tables.mkdir(parents=True, exist_ok=True)
    write_csv(tables / "verdicts.csv", summary)
    write_csv(tables / "verdicts_cells.csv", [
        {**{k: v for k, v in c.items() if k != "no_effect"},
         "passed": NO_EFFECT if c["no_effect"] else {True: "pass", False: "fail", None: "n/a"}[c["passed"]]}
        for c in checks])
    if rst is not None:
        intro = Path(rst_intro).read_text() if rst_intro else ""
        Path(rst).write_text(summary_rst(summary) + "\n" + intro)
    return summary


def summary_line(summary: list[dict]) -> str:
    counts = {v: sum(r["verdict"] == v for r in summary) for v in ("pass", "fail", NO_EFFECT, "n/a")}
    failed = [r["signal"] for r in summary if r["verdict"] == "fail"]
    inert = [r["signal"] for r in summary if r["verdict"] == NO_EFFECT]
    return (f"verdicts: {counts['pass']} pass, {counts['fail']} fail, {counts[NO_EFFECT]} no effect,"
            f" {counts['n/a']} n/a" + (f" (failed: {', '.join(failed)})" if failed else "")
            + (f" (no effect: {', '.join(inert)})" if inert else ""))


def summary_rst(summary: list[dict]) -> str:
    """The verdicts as the top of the Snakemake report (reStructuredText; Jinja-safe)."""
    def esc(text) -> str:
        text = "" if text is None else str(text)
        for ch in "\\*`|_":
            text = text.replace(ch, "\\" + ch)
        return text.replace("{", "(").replace("}", ")")

    lines = ["Verdicts", "========", "", esc(summary_line(summary)) + ".", "",
             ".. list-table::", "   :header-rows: 1", "",
             "   * - signal", "     - verdict", "     - value", "     - threshold", "     - explanation"]
    for r in summary:
        value = "" if r["value"] is None else f"{r['value']:.4g}"
        lines += [f"   * - {esc(r['signal'])}", f"     - **{r['verdict'].upper()}**",
                  f"     - {esc(value)}", f"     - {esc(r['threshold'])}", f"     - {esc(r['explanation'])}"]
    return "\n".join(lines) + "\n"


def verdicts_command(args) -> int:
    """Write the verdict tables; exit 1 with --strict when a gate fails, 2 on bad input."""
    import sys
    try:
        cfg = load_thresholds(args.thresholds)
        summary = write_verdicts(args.results, args.tables or Path(args.results) / "tables", cfg,
                                 args.rst, args.rst_intro)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary_line(summary))
    for r in summary:
        if r["verdict"] in ("fail", NO_EFFECT):
            print(f"  {r['verdict'].upper()} {r['signal']}: {r['explanation']}")
    failed = any(r["verdict"] in ("fail", NO_EFFECT) for r in summary)  # no effect is no pass
    if failed and args.strict:
        print("strict: a gate failed", file=sys.stderr)
        return 1
    return 0
