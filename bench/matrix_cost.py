"""The per-step costs of every family of ``config/full.yaml`` at Moshi 7B, measured on one GPU,
and the matrix's cost extrapolated from them (issue 27 item 3).

A whole matrix is hours of GPU time; what a cell costs is linear in its length once its kind of
step is known. So this measures each kind at reduced length, on the same device, in one process:

- teacher-forced frames at moshi's 3000-token context (lr_grid, ablation, regression, telemetry
  cells), 7,500 frames (a 600-s cell) through the cell's own teacher-forced stage: TTT off, TTT on
  at each chunk size the lr grid uses, and each ablation of the target; the run phase's wall
  (blocks and the monitor's reads between them), best of two passes, and the peak GPU memory;
- from a ``bench_cells.py`` JSON of the same run (``--cells``): the generate step TTT on and off,
  Mimi's deferred decode per output frame, and teacher-forced frames at the YaRN contexts it
  measured (its lengths past 3000, context = the longest);
- from ``gpu/regression_memory.py``'s JSON (``--regression``): the fixed cost of a cell process
  (start, imports, CUDA, load, warm-up, Mimi encode, writing: its wall minus its run phase) and
  the regression cell's peak.

Writes ``measured`` (what ttt/launch/cost.py prices cells with) and ``families`` (config/full.yaml
priced) to ``--out``; ``bench/results/<date>-matrix-cost.json`` is where the workflow reads them.

    python bench/matrix_cost.py --cells C.json --regression R.json --out OUT.json
    python bench/matrix_cost.py --config tiny --device cpu --dtype float32 --frames 40 \
        --cells C.json --regression R.json --out /tmp/m.json          # CPU smoke run
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cells import (TTT_7B, TTT_TINY, build_checkpoint, cell_pass, free, random_codes,  # noqa: E402
                         tiny_lm_kwargs)

from ttt.base.config import CellConfig
from ttt.launch import cost, matrix  # noqa: E402
from ttt.launch.matrix import ABLATIONS  # noqa: E402
from ttt.moshi.model import load_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GB = 1e9


def _peak(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / GB if device.startswith("cuda") else None


def measure_context_3000(args, directory: Path, ttt_cfg: dict) -> tuple[dict, dict]:
    """ms per frame (run phase) and peak GB of the teacher-forced variants at moshi's context."""
    chunks = [c for c in (128, 256, 512)] if args.config == "7b" else [ttt_cfg["chunk_size"]]
    variants = [("off", {"enabled": False})]
    variants += [(f"on_{c}", {**ttt_cfg, "chunk_size": c}) for c in chunks]
    variants += [(f"ablation_{v}", {**ttt_cfg, **ABLATIONS[v]}) for v in ("no_conv", "no_target", "neither")]
    ms, peaks = {}, {}
    for name, ttt in variants:
        bundle = load_checkpoint(directory, ttt=ttt, device=args.device, dtype=getattr(torch, args.dtype))
        codes = random_codes(bundle.lm, args.frames, args.device, seed=7)
        cfg = CellConfig.from_dict(dict(cell="cost", mode="teacher_forced", model=str(directory),
                                        device=args.device, dtype=args.dtype, ttt=ttt,
                                        cache_dir=str(args.cache), diagnostics_every=100))
        runs = []
        for _ in range(2):
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            runs.append(cell_pass(cfg, bundle, codes, args.cache / "tmp"))
            peaks[name] = _peak(args.device)
        ms[name] = min(1e3 / r["run_frames_per_s"] for r in runs)
        print(f"[context 3000] {name}: {ms[name]:.4f} ms/frame, peak {peaks[name]} GB", flush=True)
        del bundle, codes
        free(args.device)
    return ms, peaks


def measured_costs(args, ctx: dict, ctx_peaks: dict, cells: dict, regression: dict,
                   context: int) -> dict:
    gen, tf = cells["generate"], cells["teacher_forced"]
    off = ctx["off"]
    context_3000 = {"off": off,
                    "on": {k.split("_")[1]: v for k, v in ctx.items() if k.startswith("on_")},
                    "ablation": {k.split("_", 1)[1]: v for k, v in ctx.items() if k.startswith("ablation_")}}
    yarn = {length: {"off": 1e3 / row["cell_ttt_off"]["run_frames_per_s"],
                     "on": 1e3 / row["cell_ttt_on"]["run_frames_per_s"]}
            for length, row in tf.items() if int(length) > context}
    timing = regression["metrics"]["timing"]
    peaks = {"tf_off": ctx_peaks["off"], "tf_on": max(v for k, v in ctx_peaks.items() if k != "off")
             if ctx_peaks["off"] is not None else None,
             "regression": regression.get("cell_peak_gb"),
             "generate_off": (gen.get("peak_gb") or {}).get("cell_ttt_off"),
             "generate_on": (gen.get("peak_gb") or {}).get("cell_ttt_on")}
    for length, row in tf.items():
        if int(length) > context:
            for side in ("off", "on"):
                peak = row[f"cell_ttt_{side}"].get("peak_gb")
                # the cell alone: less upstream's LM, resident beside it in bench_cells
                peaks[f"yarn_{length}_{side}"] = None if peak is None else peak - cells["upstream_resident_gb"]
    return {
        "fixed_s_per_cell": regression["wall_s"] - timing["run_s"],
        "fixed_parts_s": {k: v for k, v in timing.items() if k != "run_s"},
        "generate_ms_per_step": {"off": gen["cell_ttt_off"]["mean"], "on": gen["cell_ttt_on"]["mean"]},
        "decode_ms_per_frame": 1e3 * gen["decode"]["deferred_decode_s"] / gen["decode"]["frames"],
        "teacher_forced_ms_per_frame": {"context_3000": context_3000, "yarn": yarn},
        "peak_gb": peaks,
    }


def full_config() -> dict:
    """config/config.yaml with config/full.yaml merged over it, as the slurm profile runs them."""
    from ttt.cli.cost import SCHEMA, _merged
    from snakemake.utils import validate
    config = _merged(yaml.safe_load((REPO / "config" / "config.yaml").read_text()),
                     yaml.safe_load((REPO / "config" / "full.yaml").read_text()))
    validate(config, str(SCHEMA))
    return config


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=("7b", "tiny"), default="7b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--frames", type=int, default=7500, help="frames per teacher-forced pass")
    p.add_argument("--cells", type=Path, nargs="+", required=True,
                   help="bench_cells.py JSON(s) of this run (generate and teacher-forced parts)")
    p.add_argument("--regression", type=Path, required=True, help="gpu/regression_memory.py JSON")
    p.add_argument("--context", type=Path, default=None,
                   help="JSON {ms: {...}, peak_gb: {...}} of the context-3000 variants measured "
                        "earlier (this run measures nothing then; e.g. pricing on a machine without the GPU)")
    p.add_argument("--cache", type=Path, default=Path("results/bench-cells"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    from moshi.models import loaders
    lm_kwargs = dict(loaders._lm_kwargs) if args.config == "7b" else tiny_lm_kwargs()
    ttt_cfg = TTT_7B if args.config == "7b" else TTT_TINY
    directory = args.cache / f"checkpoint-{args.config}"
    if args.context is not None:
        given = json.loads(args.context.read_text())
        ctx, ctx_peaks = given["ms"], given["peak_gb"]
    else:
        if not (directory / "model.safetensors").exists():
            build_checkpoint(directory, lm_kwargs, args.device, getattr(torch, args.dtype))
        ctx, ctx_peaks = measure_context_3000(args, directory, ttt_cfg)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".context.json").write_text(json.dumps({"ms": ctx, "peak_gb": ctx_peaks}))
    cells: dict = {}
    resident = 0.0  # bench_cells' teacher-forced part holds upstream's LM beside ours: its bytes
    for path in args.cells:
        part = json.loads(path.read_text())
        if "teacher_forced" in part:
            resident = part.get("checkpoint", {}).get("model_bytes", 0) / 1e9
        cells.update({k: v for k, v in part.items() if k != "checkpoint"})
    cells["upstream_resident_gb"] = resident
    regression = json.loads(args.regression.read_text())
    m = measured_costs(args, ctx, ctx_peaks, cells, regression, lm_kwargs["context"])
    device = cells["device"]
    result = {"device": device, "date": dt.date.today().isoformat(), "torch": torch.__version__,
              "model": f"moshi {args.config} (random {args.dtype})", "ttt": ttt_cfg,
              "sources": {"cells": [c.name for c in args.cells], "regression": args.regression.name},
              "measured": m}
    try:
        cells_full = matrix.build_matrix(full_config())
    except ImportError as exc:  # the GPU machine has no snakemake: price the JSON elsewhere
        print(f"not priced here ({exc}): python -m ttt cost config/config.yaml config/full.yaml --costs {args.out}")
        cells_full = None
    if cells_full is not None:
        result["families"] = cost.estimate(cells_full, m)
        result["lines"] = cost.lines(cells_full, result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join(result.get("lines", [])))


if __name__ == "__main__":
    main()
