"""Where one TTT layer's streamed block update (``TTTGating._stream_chunks``) spends its time, on
one gating layer at Moshi 7B dims (issue 19: 1.88 ms of CUDA time per TTT layer and 2,048-frame
block in a teacher-forced cell).

One layer, built as ``apply_ttt`` builds it: upstream moshi's ``ActivationGating`` (bf16, d=4096,
hidden 11264, SiLU) wrapped in ``TTTGating`` with the production flags (chunk 256, lr 1e-3,
τ 1e-5, target from the embedding tap X₀, right-padded conv; random target weights as in
``bench_7b.py``). A random bf16 block [1, 2048, 4096] and its X₀ go through the streaming path
exactly as a teacher-forced cell sends them (``no_grad``, one streaming session, consecutive
blocks: the first block takes the ``w_is_initial`` shortcut, later ones do not).

Printed and written to ``--out`` (a folder: ``profile.json``, ``tables.txt``):
(a) ms per block (CUDA events, median of ``--reps``): the TTT-on layer in its first and in a
    later block, ``_stream_chunks`` alone in both, the upstream TTT-off layer, the parallel form
    (``forward_text``-like, no streaming state) of the same TTT layer;
(b) the top ops under ``_stream_chunks`` by self device time (CPU time on CPU), grouped by op name
    and input shapes, with call counts, first and later block;
(c) kernel launches per block under ``_stream_chunks`` (CUDA: device kernels, memcpy and memset
    events; CPU: aten ops that compute, the leaves of the op tree).

    python bench/profile_stream_chunks.py --out bench/results/stream-chunks-profile     # CUDA, 7B dims
    python bench/profile_stream_chunks.py --device cpu --small --out /tmp/sc            # smoke (CPU)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from moshi.modules.gating import ActivationGating
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

# This checkout's ttt, not whichever one is installed (``python bench/…`` puts only bench/ first).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ttt.base.config import TTTConfig
from ttt.moshi.gating import TTTGating  # noqa: E402
from ttt.moshi.inplace_target import EmbeddingTap  # noqa: E402

SIZES = {"7b": dict(dim=4096, hidden=11264, chunk=256, block=2048),
         "small": dict(dim=256, hidden=704, chunk=16, block=128)}
# aten ops that launch no kernel of their own (views, metadata, allocation, wrappers whose work is
# a child op): on CPU the remaining leaves of the op tree stand in for kernel launches.
NO_KERNEL = {"aten::" + n for n in (
    "as_strided", "slice", "view", "unsqueeze", "squeeze", "reshape", "expand", "transpose",
    "select", "alias", "t", "_reshape_alias", "_unsafe_view", "resolve_conj", "resolve_neg",
    "detach", "empty", "empty_strided", "empty_like", "result_type", "lift_fresh", "permute",
    "split", "unbind", "narrow", "view_as", "contiguous", "is_nonzero", "item",
    "_local_scalar_dense", "to", "_to_copy", "numpy_T", "flatten", "matmul", "linear", "einsum",
    "chunk", "expand_as", "type_as", "stack", "full", "zeros", "ones", "ones_like", "zeros_like",
    "full_like", "new_zeros", "new_empty", "clone", "resize_", "set_", "scalar_tensor",
    "_has_compatible_shallow_copy_type")}


def build(size: dict, device: str, dtype: torch.dtype) -> tuple[ActivationGating, TTTGating, EmbeddingTap]:
    """The upstream layer and the same weights as a TTT layer (what ``apply_ttt`` does to it)."""
    torch.manual_seed(0)
    d, hid = size["dim"], size["hidden"]
    upstream = ActivationGating(d, hid * 3 // 2, F.silu, device=device, dtype=dtype).eval()
    assert upstream.linear_out.weight.shape == (d, hid)
    cfg = TTTConfig(start_layer=0, layer_frequency=6, chunk_size=size["chunk"], lr=1e-3,
                    delta_clip_fro_norm=1e-5)
    tap = EmbeddingTap()
    layer = TTTGating(upstream.linear_in, upstream.linear_out, upstream.activation, cfg, tap).eval()
    g = torch.Generator(device=device).manual_seed(2)
    with torch.no_grad():  # non-trivial targets, as bench_7b.randomize_targets
        for p in layer.target_generator.parameters():
            p.copy_(torch.randn(p.shape, device=device, generator=g).to(p) / p.shape[1] ** 0.5)
    return upstream, layer, tap


def inputs(size: dict, blocks: int, device: str, dtype: torch.dtype):
    g = torch.Generator(device=device).manual_seed(1)
    shape = (1, blocks * size["block"], size["dim"])
    x = torch.randn(shape, device=device, generator=g).to(dtype)
    x0 = torch.randn(shape, device=device, generator=g).to(dtype)
    step = size["block"]
    return [(x[:, i * step:(i + 1) * step], x0[:, i * step:(i + 1) * step]) for i in range(blocks)]


class Timer:
    """ms of a callable: CUDA events on CUDA, perf_counter on CPU."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"

    def __call__(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end), out
        import time
        t0 = time.perf_counter()
        out = fn()
        return 1e3 * (time.perf_counter() - t0), out


def stream_session(layer: TTTGating, tap: EmbeddingTap, blocks, each) -> None:
    """One teacher-forced streaming session over ``blocks``; ``each(i, run_block)`` runs block i."""
    with layer.streaming(1):
        for i, (x, x0) in enumerate(blocks):
            tap.x0 = x0
            each(i, lambda: layer(x))


def time_all(upstream, layer, tap, blocks, reps: int, warmup: int, device: str) -> dict:
    """Per-block ms, median over ``reps`` sessions, cases interleaved within a rep."""
    timer = Timer(device)
    samples: dict[str, list[float]] = defaultdict(list)
    x, x0 = blocks[0]
    for rep in range(warmup + reps):
        keep = rep >= warmup

        def layer_block(i, run):
            ms, _ = timer(run)
            if keep:
                samples[f"ttt_on_layer_block{i + 1}"].append(ms)
        stream_session(layer, tap, blocks, layer_block)

        def chunks_only(i, run):
            state = layer._streaming_state
            xb, x0b = blocks[i]
            z = layer._z(xb)
            ms, _ = timer(lambda: layer._stream_chunks(state, z, x0b))
            if keep:
                samples[f"stream_chunks_block{i + 1}"].append(ms)
        stream_session(layer, tap, blocks, chunks_only)

        ms, _ = timer(lambda: upstream(x))
        if keep:
            samples["ttt_off_layer"].append(ms)
        tap.x0 = x0
        ms, _ = timer(lambda: layer(x))
        if keep:
            samples["parallel_form_layer"].append(ms)
    return {k: {"median_ms": statistics.median(v), "min_ms": min(v), "n": len(v)}
            for k, v in samples.items()}


def profile_chunks(layer, tap, blocks, device: str) -> list:
    """One profile per block of one session, of ``_stream_chunks`` alone (Z computed outside)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    profiles = []

    def each(i, _run):
        state = layer._streaming_state
        xb, x0b = blocks[i]
        z = layer._z(xb)
        if device == "cuda":
            torch.cuda.synchronize()
        with profile(activities=activities, record_shapes=True) as prof:
            layer._stream_chunks(state, z, x0b)
            if device == "cuda":
                torch.cuda.synchronize()
        profiles.append(prof)
    stream_session(layer, tap, blocks, each)
    return profiles


def launches(prof, device: str) -> tuple[int, Counter, Counter]:
    """Kernel launches in a profile, their count and total ms by kernel (CUDA: device kernels,
    memcpy, memset) or by op (CPU: aten ops that compute, the leaves of the op tree)."""
    names: Counter = Counter()
    ms: Counter = Counter()
    for e in prof.events():
        if device == "cuda":
            if e.device_type == DeviceType.CUDA:
                names[e.name] += 1
                ms[e.name] += e.time_range.elapsed_us() / 1e3
        elif (e.name.startswith("aten::") and e.name not in NO_KERNEL and not any(
                c.name.startswith("aten::") and c.name not in NO_KERNEL for c in e.cpu_children)):
            names[e.name] += 1
            ms[e.name] += e.cpu_time / 1e3
    return sum(names.values()), names, ms


def op_rows(prof, device: str, rows: int) -> list[dict]:
    """aten ops (not the kernels' own rows) grouped by name and input shapes, by the device time
    of the kernels they launched themselves (CUDA) or their self CPU time."""
    cuda = device == "cuda"
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    avgs = [a for a in prof.key_averages(group_by_input_shape=True)
            if a.device_type == DeviceType.CPU and a.key.startswith("aten::")]
    avgs.sort(key=lambda a: -getattr(a, key))
    out = []
    for a in avgs[:rows]:
        out.append({"op": a.key, "input_shapes": str(a.input_shapes), "calls": a.count,
                    "self_ms": getattr(a, key) / 1e3, "cpu_total_ms": a.cpu_time_total / 1e3})
    return out


def table(rows: list[dict], label: str) -> str:
    lines = [f"{'self ms':>9} {'calls':>5}  op  input shapes   ({label})"]
    for r in rows:
        lines.append(f"{r['self_ms']:9.3f} {r['calls']:5d}  {r['op']}  {r['input_shapes'][:150]}")
    return "\n".join(lines)


def run(args) -> tuple[dict, str]:
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("profile_stream_chunks: --device cuda but CUDA is not available (use --device cpu --small)")
    dtype = getattr(torch, args.dtype)
    size = SIZES["small" if args.small else "7b"]
    upstream, layer, tap = build(size, device, dtype)
    blocks = inputs(size, args.blocks, device, dtype)
    with torch.no_grad():
        times = time_all(upstream, layer, tap, blocks, args.reps, args.warmup, device)
        profiles = profile_chunks(layer, tap, blocks, device)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    result = {"device": name, "torch": torch.__version__, "dtype": args.dtype, "size": size,
              "blocks": args.blocks, "reps": args.reps,
              "torch_compile": os.environ.get("NO_TORCH_COMPILE", "") in ("", "0"),
              "ms_per_block": times, "launches_per_block": {}, "top_ops": {}, "launches_by_name": {}}
    # the block update as CUDA graphs (ttt/core/block_graphs.py; TTT_BLOCK_GRAPHS=0 turns it
    # off): how often it replayed, and the process's peak memory (run once with each setting)
    graphs = layer.__dict__.get("_block_graphs")
    result["block_graphs"] = {"TTT_BLOCK_GRAPHS": os.environ.get("TTT_BLOCK_GRAPHS", "1"),
                              "captures": graphs.captures if graphs else 0,
                              "replays": graphs.replays if graphs else 0}
    if device == "cuda":
        result["peak_allocated_gb"] = torch.cuda.max_memory_allocated() / 1e9
    text = [f"profile_stream_chunks on {name}, torch {torch.__version__}, {args.dtype}, {size}",
            f"block graphs: {result['block_graphs']}, peak allocated "
            f"{result.get('peak_allocated_gb', float('nan')):.3f} GB",
            "", "(a) ms per block (median of reps)"]
    for k, v in times.items():
        text.append(f"  {k:28s} {v['median_ms']:9.3f}  (min {v['min_ms']:.3f}, n={v['n']})")
    off = times["ttt_off_layer"]["median_ms"]
    on = times[f"ttt_on_layer_block{args.blocks}"]["median_ms"]
    result["on_over_off_later_block"] = on / off
    text.append(f"  TTT-on layer (later block) / TTT-off layer: {on / off:.2f}x")
    for i, prof in enumerate(profiles):
        label = f"block{i + 1}"
        count, names, kernel_ms = launches(prof, device)
        rows = op_rows(prof, device, args.rows)
        result["launches_per_block"][label] = count
        result["launches_by_name"][label] = {k: {"calls": c, "ms": kernel_ms[k]}
                                             for k, c in names.most_common()}
        result.setdefault("kernel_ms_total", {})[label] = sum(kernel_ms.values())
        result["top_ops"][label] = rows
        text += ["", f"(b) _stream_chunks {label}: top {len(rows)} ops by self "
                 f"{'device' if device == 'cuda' else 'CPU'} time, grouped by input shapes",
                 table(rows, label),
                 "", f"(c) _stream_chunks {label}: {count} kernel launches "
                 f"({'device kernels + memcpy/memset' if device == 'cuda' else 'leaf compute ops, CPU'})"]
        text.append(f"  {'calls':>5} {'ms':>8}  {'kernel' if device == 'cuda' else 'op'} (total "
                    f"{sum(kernel_ms.values()):.3f} ms)")
        text += [f"  {n:5d} {kernel_ms[k]:8.3f}  {k[:120]}"
                 for k, n in sorted(names.items(), key=lambda kv: -kernel_ms[kv[0]])[:args.rows]]
    return result, "\n".join(text)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--small", action="store_true", help="d=256, hidden 704, chunk 16, block 128")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--blocks", type=int, default=2, help="consecutive blocks per session (≥ 2)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rows", type=int, default=40)
    p.add_argument("--out", type=Path, required=True, help="folder for profile.json and tables.txt")
    args = p.parse_args(argv)
    if args.blocks < 2 or args.reps < 1 or args.warmup < 0:
        p.error("--blocks must be >= 2, --reps >= 1, --warmup >= 0")
    result, text = run(args)
    print(text, flush=True)
    write_atomic(args.out / "tables.txt", text + "\n")
    write_atomic(args.out / "profile.json", json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
