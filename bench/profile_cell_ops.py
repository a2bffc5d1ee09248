"""Where a teacher-forced cell's TTT-on time goes, counted on CPU: operator counts and CPU time
of the cell's pass (``bench_cells.cell_pass``: warm-up, timed blocks, monitor, writes), of the
bare streamed pass (``teacher_forced_nll``, what the cell times) and of one parallel
``forward_text`` (what ``bench_7b.py`` times), TTT on vs off, on a mid-size moshi layout.

    NO_TORCH_COMPILE=1 PYTHONPATH=bench python bench/profile_cell_ops.py [--length 1024]

Each section is tagged with ``record_function`` (``bench_cells.tagged_sections``) so one profile splits the cell into its warm-up,
its timed blocks and the monitor's reads between them. Kernel ops are the leaves of the
op tree that compute (views, allocations and wrappers such as ``to`` → ``copy_`` left out): a
stand-in for kernel launches on a GPU. CPU time on a shared machine is noisy; GPU time is not
measured here.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench_cells import SECTIONS, build_checkpoint, cell_pass, random_codes, tagged_sections
from ttt.base.config import CellConfig
from ttt.eval.metrics import teacher_forced_nll
from ttt.moshi.model import load_checkpoint
from ttt.moshi.surgery import ttt_disabled
from ttt.moshi.tiny import TINY_LM_KWARGS

MID = {**TINY_LM_KWARGS, "dim": 512, "num_heads": 8, "num_layers": 8, "context": 3000,
       "depformer_dim": 128, "depformer_dim_feedforward": 256, "depformer_num_heads": 4}
TTT_MID = {"start_layer": 0, "layer_frequency": 2, "chunk_size": 64, "lr": 1e-3,
           "delta_clip_fro_norm": 1e-5}
# aten ops that launch no kernel (views, metadata, allocation)
NO_KERNEL = {"aten::" + n for n in (
    "as_strided", "slice", "view", "unsqueeze", "squeeze", "reshape", "expand", "transpose",
    "select", "alias", "t", "_reshape_alias", "_unsafe_view", "resolve_conj", "resolve_neg",
    "detach", "empty", "empty_strided", "empty_like", "result_type", "lift_fresh", "permute",
    "split", "unbind", "narrow", "view_as", "contiguous", "is_nonzero", "item", "_local_scalar_dense",
    "to", "_to_copy", "numpy_T", "flatten", "matmul", "linear", "einsum", "chunk", "expand_as",
    "type_as", "dropout", "stack", "cross_entropy", "log_softmax", "nll_loss", "nll_loss_nd",
    "full", "zeros", "ones", "ones_like", "zeros_like", "full_like", "new_zeros", "new_empty",
    "clone", "resize_", "set_", "_has_compatible_shallow_copy_type")}


def ops(fn) -> dict:
    """aten op calls and CPU ms of one call of ``fn``, overall and inside each tagged section."""
    with tagged_sections(), profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
    events = prof.events()
    sections = {s: Counter() for s in SECTIONS}
    total: Counter = Counter()
    for e in events:
        if not e.name.startswith("aten::") or e.name in NO_KERNEL or any(
                c.name.startswith("aten::") and c.name not in NO_KERNEL for c in e.cpu_children):
            continue  # count compute ops that launch a kernel themselves (leaves of the op tree)
        total[e.name] += 1
        parent = e.cpu_parent
        seen = set()
        while parent is not None:
            if parent.name in sections and parent.name not in seen:
                sections[parent.name][e.name] += 1
                seen.add(parent.name)
            parent = parent.cpu_parent
    section_ms = {s: sum(e.cpu_time_total for e in events if e.name == s) / 1e3 for s in SECTIONS}
    return {"wall_ms": 1e3 * wall, "kernel_ops": sum(total.values()),
            "key_ops": {k: total[k] for k in ("aten::copy_", "aten::mm", "aten::bmm",
                                              "aten::linalg_vector_norm", "aten::cat",
                                              "aten::scaled_dot_product_attention")},
            "sections": {s: {"kernel_ops": sum(c.values()), "cpu_ms": section_ms[s]}
                         for s, c in sections.items()}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--cache", type=Path, default=Path("/tmp/profile-cell-ops"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # a shared 2-core machine: steadier CPU times
    directory = args.cache / "checkpoint-mid"
    build_checkpoint(directory, MID, "cpu", torch.float32)
    bundle = load_checkpoint(directory, ttt=TTT_MID, device="cpu", dtype=torch.float32)
    lm = bundle.lm
    codes = random_codes(lm, args.length, "cpu", seed=1)
    base = dict(cell="ops", mode="teacher_forced", model=str(directory), device="cpu",
                dtype="float32", cache_dir=str(args.cache), diagnostics_every=100, block=args.block)
    result: dict = {"lm": {k: MID[k] for k in ("dim", "num_layers", "num_heads")}, "ttt": TTT_MID,
                    "length": args.length, "block": args.block, "torch": torch.__version__}
    for label, ttt_cfg in (("off", {"enabled": False}), ("on", TTT_MID)):
        cfg = CellConfig.from_dict({**base, "ttt": ttt_cfg})
        with ttt_disabled(lm) if label == "off" else contextlib.nullcontext():
            cell = lambda: cell_pass(cfg, bundle, codes, args.cache / "tmp")  # noqa: E731
            bare = lambda: teacher_forced_nll(lm, codes, block=args.block)  # noqa: E731
            parallel = lambda: torch.no_grad()(lm.forward_text)(codes)  # noqa: E731
            for name, fn in (("cell", cell), ("streamed", bare), ("forward_text", parallel)):
                fn()  # warm
                result.setdefault(name, {})[label] = ops(fn)
    for name in ("cell", "streamed", "forward_text"):
        on, off = result[name]["on"], result[name]["off"]
        result[name]["on_over_off"] = {"kernel_ops": on["kernel_ops"] / off["kernel_ops"],
                                       "wall": on["wall_ms"] / off["wall_ms"]}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
