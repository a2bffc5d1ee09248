"""Accuracy and speed of the parallel dual form at 7B layer size, in the model dtype vs float64.

One TTT layer's ``dual_form_output`` (d 4096, hid 11264, chunk 256, block 4096, τ 1e-5) on random
bf16 inputs: relative error of the bf16 result against the same computation in float64 from the
same inputs, and its time (CUDA events, median of 20 interleaved calls after warm-up). With ``--old FILE`` (another version of
``ttt/core/inplace_math.py``) both are measured side by side in the same run.

    python bench/dual_form_check.py --lengths 2048 8192 [--old /tmp/old_inplace_math.py]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics

import torch

from ttt.core import inplace_math
from ttt.core.inplace_math import conv_as_matrix


def load(path: str):
    spec = importlib.util.spec_from_file_location("old_inplace_math", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(fns: dict, repeats: int = 20) -> dict:
    """Median ms per implementation, calls interleaved (A, B, A, B, ...) after 3 warm-up calls
    each, so clock and thermal drift hit every implementation alike."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times[name].append(start.elapsed_time(end))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--old", default=None, help="another inplace_math.py to compare with")
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--hid", type=int, default=11264)
    args = ap.parse_args()
    torch.manual_seed(0)
    d, hid, k, chunk, dev = args.d, args.hid, 2, 256, "cuda"
    conv = torch.randn(d, d, k, device=dev) / (d * k) ** 0.5
    w_target = torch.randn(d, d, device=dev) / d ** 0.5
    w0 = (torch.randn(d, hid, device=dev) / hid ** 0.5).bfloat16()
    fused = (w_target @ conv_as_matrix(conv)).bfloat16()
    impls = {"current": (inplace_math, fused, None)}
    if args.old:
        impls["old"] = (load(args.old), conv_as_matrix(conv).bfloat16(), w_target.bfloat16())
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "lengths": {}}
    with torch.no_grad():
        for T in args.lengths:
            z = torch.randn(1, T, hid, device=dev).bfloat16()
            x0 = torch.randn(1, T, d, device=dev).bfloat16()
            ref = inplace_math.dual_form_output(
                z.double(), x0.double(), w0.double(), conv_as_matrix(conv).bfloat16().double(),
                w_target.bfloat16().double(), "right", chunk, 1e-3, 1e-5, 4096)
            row, runs = {}, {}
            for name, (module, conv_w, proj) in impls.items():
                def run(module=module, conv_w=conv_w, proj=proj):
                    return module.dual_form_output(z, x0, w0, conv_w, proj, "right", chunk, 1e-3,
                                                   1e-5, 4096)
                got = run()
                err = ((got.double() - ref).abs().max() / ref.abs().max()).item()
                row[name] = {"max_rel_err_vs_fp64": err}
                runs[name] = run
            for name, ms in timed(runs).items():
                row[name]["ms"] = ms
            if "old" in row:
                row["ms_ratio_current_over_old"] = row["current"]["ms"] / row["old"]["ms"]
            out["lengths"][T] = row
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
