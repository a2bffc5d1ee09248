"""One diagnostics record's statistics at Moshi 7B sizes: ``layer_stats`` (moments from per-token
Gram sums) against one torch reduction per number (how ``Diagnostics.record`` computed them
before), side by side in one run, for the six TTT layers of the default (every 6th of 32).

Printed and written to ``--out``: ms per record (median of ``--reps``, CUDA synchronised) per
length (1: a generate step; 2,048 and 8,192: teacher-forced blocks) and the ratio.

    python bench/bench_layer_stats.py --out /tmp/layer-stats.json            # CUDA, bf16
    python bench/bench_layer_stats.py --device cpu --dim 256 --lengths 1 64 --out /tmp/s.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from ttt.session.diagnostics import SPARSITY_REL, layer_stats


def per_number(attn: torch.Tensor, ttt: torch.Tensor) -> dict[str, torch.Tensor]:
    """The earlier record: fp32 copies, then one reduction (or a few) per number."""
    t = {"attn": attn.float(), "ttt": ttt.float()}
    t["combined"] = t["attn"] + t["ttt"]
    out = {}
    for name, v in t.items():
        std = v.std()
        out.update({f"{name}_norm": v.norm(), f"{name}_norm_per_token": v.norm(dim=-1).mean(),
                    f"{name}_mean": v.mean(), f"{name}_std": std,
                    f"{name}_sparsity": (v.abs() < SPARSITY_REL * std).float().mean()})
    for a, b in (("attn", "ttt"), ("attn", "combined"), ("ttt", "combined")):
        out[f"cos_{a}_{b}"] = torch.nn.functional.cosine_similarity(t[a].flatten(), t[b].flatten(), dim=0)
    return out


def record_ms(fn, layers: list[tuple[torch.Tensor, torch.Tensor]], device: str, reps: int) -> float:
    times = []
    for _ in range(reps + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        values = [v for a, b in layers for v in fn(a, b).values()]
        torch.stack([v.reshape(()).float() for v in values]).tolist()  # one transfer, as record()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times[1:])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--lengths", type=int, nargs="+", default=[1, 2048, 8192])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    result = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "dim": args.dim, "layers": args.layers, "lengths": {}}
    g = torch.Generator(device=args.device).manual_seed(0)
    for length in args.lengths:
        layers = [tuple(torch.randn(length, args.dim, generator=g, device=args.device).to(dtype)
                        for _ in range(2)) for _ in range(args.layers)]
        row = {"moments_ms": record_ms(layer_stats, layers, args.device, args.reps),
               "per_number_ms": record_ms(per_number, layers, args.device, args.reps)}
        row["per_number_over_moments"] = row["per_number_ms"] / row["moments_ms"]
        result["lengths"][str(length)] = row
        print(f"[{length} frames] " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
