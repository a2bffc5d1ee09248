"""Loading at the size of the weights, at Moshi 7B scale (issue 15): load time and peak memory of
``ttt.load_checkpoint`` vs upstream ``loaders.get_moshi_lm(filename)`` on the same files, then
the peak memory of real cells through ``python -m ttt run-cell`` (TTT off, every 6th layer TTT).

The checkpoint is random (no pretrained weights ship in any package), written in the Hugging Face
layout of ``kyutai/moshiko-pytorch-bf16`` without ``config.json`` (moshi's 7B defaults):
``model.safetensors`` (bf16), ``tokenizer-e351c8d8-checkpoint125.safetensors`` (Mimi, codebooks
initialised), ``tokenizer_spm_32k_3.model`` (the demo tokenizer).

    python bench/bench_load.py OUT.json --dir /tmp/moshi7b      # CUDA, writes ~16 GB there
    python bench/bench_load.py OUT.json --dir /tmp/t --config tiny --device cpu --no-cells
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from moshi.models import loaders
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ttt.moshi.model import load_checkpoint  # noqa: E402
from ttt.moshi.tiny import DEFAULT_LM_KWARGS, train_demo_tokenizer  # noqa: E402

CELLS = {"generate_ttt_off": {"enabled": False},
         "generate_every6": {"start_layer": 0, "layer_frequency": 6, "chunk_size": 256}}


def build(directory: Path, lm_kwargs: dict | None, device: str) -> float:
    """The random checkpoint in moshi's HF layout; returns the LM file's size in bytes."""
    weights = directory / loaders.MOSHI_NAME
    if weights.is_file():
        return weights.stat().st_size
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    lm = loaders.get_moshi_lm(None, lm_kwargs=lm_kwargs, device=device, dtype=torch.bfloat16)
    save_file({k: v.contiguous() for k, v in lm.state_dict().items()}, str(weights) + ".tmp")
    del lm
    mimi = loaders.get_mimi(None, device="cpu")
    with torch.no_grad():  # random Mimi's codebooks start at zero: every code would be 0
        for module in mimi.modules():
            if hasattr(module, "embedding_sum"):
                module.embedding_sum.copy_(0.01 * torch.randn(module.embedding_sum.shape))
    save_file({k: v.contiguous() for k, v in mimi.state_dict().items()},
              str(directory / loaders.MIMI_NAME))
    (directory / loaders.TEXT_TOKENIZER_NAME).write_bytes(train_demo_tokenizer())
    if lm_kwargs is not None:
        (directory / "config.json").write_text(json.dumps(lm_kwargs))
    os.replace(str(weights) + ".tmp", weights)
    return weights.stat().st_size


def timed(load, device: str) -> tuple[float, int | None]:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    model = load()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    del model
    return seconds, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--config", choices=("7b", "tiny"), default="7b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds of user audio per cell")
    ap.add_argument("--no-cells", action="store_true")
    args = ap.parse_args()
    directory = Path(args.dir)
    lm_kwargs = None if args.config == "7b" else DEFAULT_LM_KWARGS
    t0 = time.perf_counter()
    size = build(directory, lm_kwargs, args.device)
    report = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "torch": torch.__version__, "config": args.config, "lm_file_bytes": size,
              "build_s": round(time.perf_counter() - t0, 1)}
    weights = str(directory / loaders.MOSHI_NAME)
    cases = {
        "upstream_get_moshi_lm": lambda: loaders.get_moshi_lm(weights, lm_kwargs=lm_kwargs,
                                                              device=args.device,
                                                              dtype=torch.bfloat16),
        "upstream_get_moshi_lm_plus_get_mimi": lambda: (
            loaders.get_moshi_lm(weights, lm_kwargs=lm_kwargs, device=args.device,
                                 dtype=torch.bfloat16),
            loaders.get_mimi(str(directory / loaders.MIMI_NAME), device=args.device)),
        "ttt_load_checkpoint": lambda: load_checkpoint(directory, device=args.device,
                                                       dtype=torch.bfloat16),
    }
    timed(cases["upstream_get_moshi_lm"], args.device)  # page cache and CUDA context warm
    runs = {name: [] for name in cases}
    for _ in range(args.rounds):  # interleaved, so drift hits every case alike
        for name, load in cases.items():
            runs[name].append(timed(load, args.device))
    report["load"] = {name: {"seconds": [round(s, 3) for s, _ in r],
                             "median_s": round(statistics.median(s for s, _ in r), 3),
                             "peak_bytes": max((p or 0) for _, p in r) or None}
                      for name, r in runs.items()}
    up = report["load"]["upstream_get_moshi_lm_plus_get_mimi"]["median_s"]
    report["load_time_ratio_vs_upstream_lm_plus_mimi"] = round(
        report["load"]["ttt_load_checkpoint"]["median_s"] / up, 3)
    report["load_time_ratio_vs_upstream_lm_only"] = round(
        report["load"]["ttt_load_checkpoint"]["median_s"]
        / report["load"]["upstream_get_moshi_lm"]["median_s"], 3)
    print(json.dumps(report, indent=1), flush=True)
    report["cells"] = {}
    for name, ttt in ({} if args.no_cells else CELLS).items():
        cfg = directory.parent / f"{name}.yaml"
        out = directory.parent / "cells" / name
        cfg.write_text(json.dumps({
            "cell": name, "mode": "generate", "model": str(directory), "device": args.device,
            "dtype": "bfloat16", "ttt": ttt, "window_s": 5.0, "diagnostics_every": 0,
            "data": {"demo": {"durations": [args.duration], "seed": 0}},
            "cache_dir": str(directory.parent / "cache")}))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "ttt", "run-cell", "--config", str(cfg),
                               "--out", str(out)], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1])
        row = {"exit": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1),
               "stderr_tail": proc.stderr[-600:]}
        if proc.returncode == 0:
            m = json.loads((out / "metrics.json").read_text())
            row.update(memory=m["memory"], load_s=m.get("load_s"),
                       ms_per_step_p50=m["throughput"].get("ms_per_step_p50"),
                       ttt_layers=(m["config"].get("resolved_ttt") or {}).get("layers"),
                       ttt_updates=(m.get("ttt_telemetry") or {}).get("updates"))
        report["cells"][name] = row
        print(name, json.dumps(row)[:800], flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
