"""Where the teacher-forced time goes: torch profiler over one 7B forward_text, TTT off vs on.

    PYTHONPATH=bench python bench/profile_tf.py [--length 2048] [--case every6_c256]
"""
from __future__ import annotations

import argparse

import torch
from moshi.models import loaders
from torch.profiler import ProfilerActivity, profile

import ttt
from bench_7b import CASES, randomize_targets, ttt_config


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--case", default="every6_c256", choices=list(CASES))
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--ops", action="store_true",
                   help="also list aten ops with input shapes (which op launches each kernel)")
    args = p.parse_args()
    torch.manual_seed(0)
    lm = loaders.get_moshi_lm(None, device="cuda", dtype=torch.bfloat16).eval()
    seq = torch.randint(0, 2048, (1, lm.num_codebooks, args.length), device="cuda")
    for label in ("off", "on"):
        if label == "on":
            ttt.apply_ttt(lm, ttt_config(CASES, args.case, 1e-3))
            randomize_targets(lm)
        with torch.no_grad():
            for _ in range(3):
                lm.forward_text(seq)
            torch.cuda.synchronize()
            activities = [ProfilerActivity.CUDA] + ([ProfilerActivity.CPU] if args.ops else [])
            with profile(activities=activities, record_shapes=args.ops) as prof:
                lm.forward_text(seq)
                torch.cuda.synchronize()
        total = sum(e.self_device_time_total for e in prof.key_averages()) / 1e3
        print(f"==== TTT {label} ({args.case}, T={args.length}): CUDA time {total:.1f} ms")
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=args.rows))
        if args.ops:
            print(prof.key_averages(group_by_input_shape=True).table(
                sort_by="device_time_total", row_limit=3 * args.rows, max_name_column_width=40,
                max_shapes_column_width=90))


if __name__ == "__main__":
    main()
