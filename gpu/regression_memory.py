"""The regression cell's peak GPU memory against upstream's own (issue 27 item 2), at Moshi 7B.

Runs the workflow's regression cell (``check_upstream``: teacher-forced, TTT off, the block
compared with upstream moshi's loader) as the workflow does: ``python -m ttt prepare`` (the Mimi
codes cached), then ``python -m ttt run-cell`` on a checkpoint directory, each in a process of its
own, the cell timed; then, in this process, upstream alone:
``loaders.get_moshi_lm(file)`` and ``lm(codes)`` over the same number of frames, its peak. The
target: the cell's peak (load and run) ≤ upstream's peak + 10 %. The cell's wall time less its
run phase is also the fixed cost of a cell process that ``bench/matrix_cost.py`` prices cells with.

    python gpu/regression_memory.py --checkpoint DIR --out OUT.json [--duration 120]
    python gpu/regression_memory.py --checkpoint DIR --device cpu --dtype float32 --duration 4 \
        --out /tmp/r.json                       # CPU smoke run (no peak figures)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="the cell's model: a checkpoint directory or a name (tiny-random)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--duration", type=float, default=120.0, help="seconds of demo conversation")
    p.add_argument("--work", type=Path, default=Path("/tmp/regression-memory"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    cell = {"cell": "regression", "family": "regression", "mode": "teacher_forced",
            "model": args.checkpoint, "device": args.device, "dtype": args.dtype,
            "ttt": {"enabled": False}, "check_upstream": True, "window_s": 30,
            "data": {"demo": {"durations": [args.duration], "seed": 4}},
            "cache_dir": str(args.work / "cache")}
    config = args.work / "regression.yaml"
    config.write_text(yaml.safe_dump(cell))
    out_dir = args.work / f"cell-{time.time_ns()}"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # as the workflow runs it: its prepare job caches the Mimi codes first (Mimi alone, no LM)
    prepared = subprocess.run([sys.executable, "-m", "ttt", "prepare", "--config", str(config),
                               "--out", str(args.work / "prepared.json")], cwd=REPO,
                              capture_output=True, text=True, env=env)
    if prepared.returncode != 0 or "error" in json.loads((args.work / "prepared.json").read_text()):
        raise SystemExit(f"prepare failed: {prepared.stdout[-2000:]}{prepared.stderr[-2000:]}")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ttt", "run-cell", "--config", str(config),
                           "--out", str(out_dir)], cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run-cell failed ({proc.returncode}): {proc.stderr[-3000:]}")
    metrics = json.loads((out_dir / "metrics.json").read_text())
    mem = metrics["memory"]
    result = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "wall_s": wall, "metrics": {k: metrics[k] for k in ("timing", "memory", "regression", "steps")}}
    cuda = args.device.startswith("cuda")
    result["cell_peak_gb"] = max(mem["load_peak_bytes"] or 0, mem["run_peak_bytes"] or 0) / 1e9 if cuda else None
    # upstream alone: its loader and one forward over the cell's frames (the block it compares)
    from moshi.models import loaders

    from ttt.moshi.checkpoints import resolve_checkpoint
    sources = resolve_checkpoint(args.checkpoint, None, args.work / "cache" / "models")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    lm = loaders.get_moshi_lm(str(sources.lm_weights), lm_kwargs=sources.lm_kwargs,
                              device=args.device, dtype=getattr(torch, args.dtype))
    frames = min(metrics["steps"], 2048)  # the cell's block
    g = torch.Generator().manual_seed(0)
    codes = torch.cat([torch.randint(0, lm.text_card, (1, 1, frames), generator=g),
                       torch.randint(0, lm.card, (1, lm.num_codebooks - 1, frames), generator=g)], 1)
    with torch.no_grad():
        lm(codes.to(args.device))
    result["upstream_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9 if cuda else None
    if cuda:
        result["cell_over_upstream"] = result["cell_peak_gb"] / result["upstream_peak_gb"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "metrics"}), metrics["regression"], flush=True)


if __name__ == "__main__":
    main()
