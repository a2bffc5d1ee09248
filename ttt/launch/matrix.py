"""The validation matrix: the workflow's config → every cell's path and its cell config.

A pure function of the (schema-validated) config dict, no Snakemake import, so the matrix can be
unit-tested and read outside a DAG build (``workflow/rules/common.smk`` calls it once). Each family
of the config (``families:``) expands into its cells, TTT on and off as the family compares them;
a cell's path names what varies (``ttt.report.tables.cell_path``, which the reports parse back) and
its config is what ``python -m ttt run-cell`` reads. Key order matters: the workflow dumps each cell
config unsorted as a rule param, so reordering keys would rerun every cell.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from ttt.report.tables import cell_path

# Model keys every cell copies from the top level (a family may name its own model and base).
FAMILY_KEYS = ("model", "base", "device", "dtype", "cache_dir")

# Paper Fig. 3c: the TTT target V̂ = Conv1D(X0) W_target with parts switched off (TTTConfig keys).
ABLATIONS = {
    "full": {"target_conv": True, "target_projection": True},
    "no_conv": {"target_conv": False, "target_projection": True},
    "no_target": {"target_conv": True, "target_projection": False},
    "neither": {"target_conv": False, "target_projection": False},
}

Cells = dict[str, dict[str, Any]]


class MatrixError(ValueError):
    """A config that names cells the matrix does not hold; the message names the key."""


def _data(family_cfg: Mapping[str, Any], duration: float, seed: int) -> dict:
    """A family's inputs: its manifest when given, else ``conversations`` demo conversations of
    `duration` (the effect verdicts resample conversations: one gives no interval)."""
    if family_cfg.get("manifest"):
        return {"manifest": family_cfg["manifest"]}
    n = int(family_cfg.get("conversations") or 1)
    demo: dict[str, Any] = {"durations": [float(duration)] * n, "seed": int(seed)}
    if family_cfg.get("recurrent"):
        demo["recurrent"] = True
    return {"demo": demo}


class _Builder:
    """Collects the cells of one config; ``add`` is one cell, TTT on or off."""

    def __init__(self, config: Mapping[str, Any]):
        self.config = config
        self.cells: Cells = {}

    def add(self, family, path_params, mode, data, ttt_on, ttt_extra=None, **extra) -> None:
        config = self.config
        base = {k: config[k] for k in FAMILY_KEYS}
        own = config.get(family) or {}
        if own.get("model"):  # a family may name its own model (e.g. the hybrid on a model without TTT)
            base.update(model=own["model"], base=own.get("base"))
        ttt = {**(config.get("ttt") or {}), **(ttt_extra or {})} if ttt_on else {"enabled": False}
        path = cell_path(family, [*path_params, ("ttt", "on" if ttt_on else "off")])
        self.cells[path] = {
            **base,
            "cell": path,
            "family": family,
            "mode": mode,
            "data": data,
            "ttt": ttt or None,
            **extra,
        }


def _short_form(b: _Builder, f: Mapping[str, Any]) -> None:
    for on in (True, False):
        b.add("short_form", [("duration", f["duration_s"])], f["mode"],
              _data(f, f["duration_s"], f["seed"]), on,
              window_s=f["window_s"], snapshot_every=f["snapshot_every"])


def _long_form(b: _Builder, f: Mapping[str, Any]) -> None:
    """TTT on and off per length; with ``stabiliser`` (TTT keys, e.g. ``{decay: 0.95}``) a third
    cell runs the same stream stabilised, judged against the same TTT-off twin: "does it stay
    stable without resets?" answered side by side."""
    for d in f["durations_s"]:
        for on in (True, False):
            b.add("long_form", [("duration", d)], f["mode"], _data(f, d, f["seed"]), on,
                  window_s=f["window_s"], snapshot_every=f["snapshot_every"])
        if f.get("stabiliser"):
            b.add("long_form", [("duration", d), ("stabiliser", "on")], f["mode"],
                  _data(f, d, f["seed"]), True, dict(f["stabiliser"]),
                  window_s=f["window_s"], snapshot_every=f["snapshot_every"])


def _yarn(b: _Builder, f: Mapping[str, Any]) -> None:
    for tokens in f["tokens"]:
        yarn = {"scale": tokens / f["original_context"], "original_context": f["original_context"],
                "context": tokens}
        duration = tokens / 12.5 + 1  # Mimi's 12.5 frames/s, plus a second
        for on in (True, False):
            b.add("yarn", [("tokens", tokens)], "teacher_forced", _data(f, duration, f["seed"]), on,
                  yarn=yarn, ab=on, window_s=f["window_s"])


def _lr_grid(b: _Builder, f: Mapping[str, Any]) -> None:
    for lr in f["lrs"]:
        for chunk in f["chunks"]:
            b.add("lr_grid", [("lr", float(lr)), ("chunk", chunk)], "teacher_forced",
                  _data(f, f["duration_s"], f["seed"]), True,
                  {"lr": float(lr), "chunk_size": chunk,
                   "delta_clip_fro_norm": f["delta_clip_fro_norm"]},
                  window_s=f["window_s"], clip_saturation=f["clip_saturation"])
    b.add("lr_grid", [], "teacher_forced", _data(f, f["duration_s"], f["seed"]), False,
          window_s=f["window_s"])


def _regression(b: _Builder, f: Mapping[str, Any]) -> None:
    b.add("regression", [], "teacher_forced", _data(f, f["duration_s"], f["seed"]), False,
          check_upstream=True, window_s=f["window_s"])


def _telemetry(b: _Builder, f: Mapping[str, Any]) -> None:
    tau = float(f["delta_clip_fro_norm"])
    ttt = {"delta_clip_fro_norm": tau, **({"lr": float(f["lr"])} if f.get("lr") is not None else {})}
    for on in (True, False):
        b.add("telemetry", [("tau", tau)], "teacher_forced", _data(f, f["duration_s"], f["seed"]),
              on, ttt, window_s=f["window_s"])


def _ablation(b: _Builder, f: Mapping[str, Any]) -> None:
    for variant in f["variants"]:
        b.add("ablation", [("ablation", variant)], "teacher_forced",
              _data(f, f["duration_s"], f["seed"]), True, ABLATIONS[variant], window_s=f["window_s"])
    b.add("ablation", [], "teacher_forced", _data(f, f["duration_s"], f["seed"]), False,
          window_s=f["window_s"])


def _gate_override(b: _Builder, f: Mapping[str, Any]) -> None:
    data = _data(f, f["duration_s"], f["seed"])
    for alpha in f["alphas"]:
        forced = None if alpha == "learned" else float(alpha)
        b.add("gate_override", [("alpha", alpha if forced is None else forced)], f["mode"], data,
              True, {**f["ttt"], "gate_override": forced}, window_s=f["window_s"])
    b.add("gate_override", [], f["mode"], data, False, window_s=f["window_s"])


def _calibration(b: _Builder, f: Mapping[str, Any]) -> None:
    from ttt.launch.calibration import calibration_cells
    base = {k: b.config[k] for k in FAMILY_KEYS}
    base.update(model=f["model"], base=f.get("base"))
    b.cells.update(calibration_cells(f, base))


# Each family's expansion, in the order the matrix lists them (adding a family: one entry here,
# its section in workflow/schemas/config.schema.yaml).
FAMILIES = {
    "short_form": _short_form,
    "long_form": _long_form,
    "yarn": _yarn,
    "lr_grid": _lr_grid,
    "regression": _regression,
    "telemetry": _telemetry,
    "ablation": _ablation,
    "gate_override": _gate_override,
    "calibration": _calibration,
}


def build_matrix(config: Mapping[str, Any]) -> Cells:
    """``{cell path: cell config}`` of every family named in ``config["families"]``."""
    builder = _Builder(config)
    for family, expand in FAMILIES.items():
        if family in config["families"]:
            expand(builder, config[family])
    return builder.cells


def dataset_id(cell: Mapping[str, Any]) -> str:
    """Cells reading the same inputs with the same model share one data preparation."""
    key = json.dumps({"data": cell["data"], "model": cell["model"], "base": cell["base"],
                      "model_digest": cell["model_digest"], "cache": cell["cache_dir"]},
                     sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def prepare_config(dataset: str, cell: Mapping[str, Any]) -> dict:
    """The data preparation's config: the model keys and inputs of a cell reading `dataset`."""
    return {"cell": f"prepare-{dataset}", **{k: cell[k] for k in FAMILY_KEYS},
            "model_digest": cell["model_digest"], "data": cell["data"]}


def panel_cells(config: Mapping[str, Any]) -> dict[str, str]:
    """{system label: cell path} of the panel's TTT-on and TTT-off cells, or {} without a panel;
    :class:`MatrixError` when the panel names cells that are not generated."""
    p = config.get("panel")
    if not p or p["family"] not in config["families"]:
        return {}
    family = config[p["family"]]
    if family["mode"] != "generate":
        raise MatrixError(
            f"config panel.family: {p['family']} runs mode {family['mode']!r}; the "
            "panel needs generate cells (their out.wav); `panel: null` = no panel")
    lengths = family.get("durations_s") or [family["duration_s"]]
    length = p["duration_s"] if p["duration_s"] is not None else max(lengths)
    if length not in lengths:
        raise MatrixError(
            f"config panel.duration_s: {length} is not one of {p['family']}'s lengths {lengths}")
    return {f"ttt_{on}": cell_path(p["family"], [("duration", length), ("ttt", on)])
            for on in ("on", "off")}


def speech_args(spec: Mapping[str, Any]) -> str:
    """The ``python -m ttt speech`` options of one set under ``speech:`` (docs/speech-data.md)."""
    s = spec
    return (
        f"--count {int(s['count'])} --duration {float(s['duration_s'])} --seed {int(s.get('seed', 0))}"
        f" --recur-after {float(s.get('recur_after_s', 10.0))}"
        f" --recur-fraction {float(s.get('recur_fraction', 0.5))}"
        f" --text-part {s.get('text_part', 'all')}"
        f" --unit {s.get('unit', 'sentence')} --vocabulary-size {int(s.get('vocabulary_size', 600))}"
        + (" --recurrence" if s.get("recurrence", False) else "")
    )
