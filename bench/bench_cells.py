"""The cell engine against the upstream code it wraps, every mode side by side in ONE run.

Builds a random checkpoint directory (moshi's 7B config in bf16 by default) and measures, on the
same device in the same process:

- loading: ``ttt.moshi.model.load_checkpoint`` (TTT off and on) vs upstream
  ``loaders.get_moshi_lm(filename)`` on the same files;
- teacher-forced: the cell's own timed pass (``ttt.eval.teacher_forced.run_teacher_forced``: blocks, NLL,
  telemetry, divergence checks; TTT off, TTT on, TTT on with ℓ(W⁽⁰⁾) on every block, TTT on
  without the monitor's diagnostics, TTT on with its A/B twin; graph captures and replays per
  measurement) vs a plain ``lm(codes)`` + text and audio cross-entropy over the same frames, at
  each length (lengths past moshi's 3000 context run with context = the longest length, YaRN in
  the cells as the yarn family does; upstream with the same attention context). A short pass is
  repeated until a measurement lasts ``--min-seconds`` (a 2,048-frame pass lasts ≈ 0.08 s on an
  H200: one pass per round left the rounds 20 % apart);
- generate: the cell's step (``ttt.eval.generate.stream_user_channel``, Mimi decoding deferred) vs
  upstream ``LMGen`` alone and ``LMGen`` + Mimi's streaming decode inside the step (what the cell
  did before), each in its own session after one untimed session, all at the same position, and
  the deferred decode's samples compared bitwise with the inline decode.

    python bench/bench_cells.py                    # → bench/results/<date>-cells-<device>.json
    python bench/bench_cells.py --config tiny --device cpu --dtype float32 --lengths 40 \
        --gen-steps 24 --out /tmp/cells.json      # the CPU smoke run (tests/test_bench_smoke.py)
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import math
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from moshi.models import loaders
from moshi.models.lm import LMGen
from moshi.modules.transformer import set_attention_context
from safetensors.torch import save_file

import ttt
from ttt.base.config import CellConfig
from ttt.eval.generate import DECODE_FRAMES, decode_audio, stream_user_channel
from ttt.eval.phases import Phases
from ttt.eval.modes import CellRun
from ttt.eval.teacher_forced import run_teacher_forced
from ttt.moshi.model import load_checkpoint
from ttt.moshi.surgery import ttt_disabled
from ttt.moshi.tiny import TINY_LM_KWARGS, train_demo_tokenizer

TTT_7B = {"start_layer": 0, "layer_frequency": 6, "chunk_size": 256, "lr": 1e-3,
          "delta_clip_fro_norm": 1e-5}
TTT_TINY = {"start_layer": 1, "layer_frequency": 2, "chunk_size": 8, "lr": 1e-2,
            "delta_clip_fro_norm": 1.0}


def tiny_lm_kwargs() -> dict:
    """The tiny LM with Mimi's 2048 code bins and the demo tokenizer's 60 pieces (the checkpoint
    carries the full-size Mimi and that tokenizer; the loader refuses an LM whose cards cannot hold
    their codes)."""
    return {**TINY_LM_KWARGS, "card": 2048, "text_card": 64}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def build_checkpoint(directory: Path, lm_kwargs: dict, device: str, dtype) -> dict:
    """A random LM + random Mimi (codebooks initialised) + a small tokenizer, our layout."""
    t0 = time.perf_counter()
    torch.manual_seed(0)
    lm = loaders.get_moshi_lm(None, lm_kwargs=lm_kwargs, device=device, dtype=dtype)
    mimi = loaders.get_mimi(None, device="cpu", num_codebooks=lm.dep_q)
    with torch.no_grad():
        for module in mimi.modules():
            if hasattr(module, "embedding_sum"):
                module.embedding_sum.copy_(0.01 * torch.randn(module.embedding_sum.shape))
                module._embedding = None
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in lm.state_dict().items()},
              str(directory / "model.safetensors"))
    save_file({k: v.contiguous() for k, v in mimi.state_dict().items()},
              str(directory / "mimi.safetensors"))
    (directory / "tokenizer.model").write_bytes(train_demo_tokenizer())
    (directory / "config.json").write_text(json.dumps({"lm_kwargs": lm_kwargs}))
    del lm, mimi
    free(device)
    return {"build_s": time.perf_counter() - t0,
            "model_bytes": (directory / "model.safetensors").stat().st_size}


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if device.startswith("cuda") else None


def timed(fn, device: str) -> tuple[float, object]:
    sync(device)
    t0 = time.perf_counter()
    value = fn()
    sync(device)
    return time.perf_counter() - t0, value


def measure_loading(directory: Path, lm_kwargs: dict, ttt_cfg: dict, device: str, dtype,
                    rounds: int) -> dict:
    """Each loader ``rounds`` times, interleaved (later reads come from the page cache, as on a
    warm node)."""
    out: dict = {"upstream_get_moshi_lm_s": [], "upstream_lm_and_mimi_s": [],
                 "ours_ttt_off_s": [], "ours_ttt_on_s": []}

    def upstream(with_mimi: bool):
        lm = loaders.get_moshi_lm(str(directory / "model.safetensors"), lm_kwargs=lm_kwargs,
                                  device=device, dtype=dtype)
        mimi = loaders.get_mimi(str(directory / "mimi.safetensors"), device=device,
                                num_codebooks=lm.dep_q) if with_mimi else None
        return lm, mimi

    for _ in range(rounds):
        for key, with_mimi in (("upstream_get_moshi_lm_s", False), ("upstream_lm_and_mimi_s", True)):
            s, loaded = timed(lambda: upstream(with_mimi), device)
            out[key].append(s)
            del loaded
            free(device)
        for key, cfg in (("ours_ttt_off_s", {"enabled": False}), ("ours_ttt_on_s", ttt_cfg)):
            s, bundle = timed(lambda: load_checkpoint(directory, ttt=cfg, device=device,
                                                      dtype=dtype), device)
            out[key].append(s)
            del bundle
            free(device)
    return out


def random_codes(lm, length: int, device: str, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    text = torch.randint(0, lm.text_card, (1, 1, length), generator=g)
    audio = torch.randint(0, lm.card, (1, lm.num_codebooks - 1, length), generator=g)
    return torch.cat([text, audio], 1).to(device)


def plain_forward_loss(lm, codes: torch.Tensor) -> float:
    """Upstream's teacher-forced pass: ``lm(codes)`` and the masked text + audio cross-entropy."""
    with torch.no_grad():
        out = lm(codes)
        text = F.cross_entropy(out.text_logits[out.text_mask].float(), codes[:, :1][out.text_mask])
        audio_codes = codes[:, lm.audio_offset:lm.audio_offset + lm.dep_q]
        audio = F.cross_entropy(out.logits[out.mask].float(), audio_codes[out.mask])
        return float(text + audio)


def repeats_for(seconds_per_pass: float, min_seconds: float, most: int) -> int:
    """Passes back to back that last at least ``min_seconds`` (at least one, at most ``most``)."""
    return min(most, max(1, math.ceil(min_seconds / max(seconds_per_pass, 1e-9))))


def plain_frames_per_s(upstream, codes: torch.Tensor, repeats: int, device: str) -> float:
    """Frames per second of ``repeats`` plain passes timed together."""
    seconds = timed(lambda: [plain_forward_loss(upstream, codes) for _ in range(repeats)], device)[0]
    return repeats * codes.shape[-1] / seconds


def graph_counts(lm) -> tuple[int, int]:
    """CUDA graphs of the TTT block updates captured and replayed so far, over the layers (a
    capture inside a timed pass is a graph the warm-up did not leave)."""
    graphs = [layer.__dict__.get("_block_graphs") for layer in ttt.ttt_layers(lm).values()]
    return (sum(g.captures for g in graphs if g), sum(g.replays for g in graphs if g))


def cell_pass(cfg, bundle, codes: torch.Tensor, tmp: Path, repeats: int = 1) -> dict:
    """The cell's teacher-forced stage on ``codes`` (no data loading: the input is given), as
    ``repeats`` inputs of one cell (each streamed from a fresh state, as a cell's inputs are): the
    throughput is over all of them, the warm-up and the writing are paid once."""
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    phases = Phases(cfg.device)
    if cfg.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    run = CellRun(cfg, bundle, [], Path(cfg.cache_dir), tmp, tmp, lambda m: None, phases)
    before = graph_counts(bundle.lm)
    metrics = run_teacher_forced(run, inputs=[codes] * repeats)
    captures, replays = (a - b for a, b in zip(graph_counts(bundle.lm), before))
    return {"frames_per_s": metrics["throughput"]["frames_per_s"],
            "ms_per_block_p50": metrics["throughput"]["ms_per_block_p50"],
            "ms_per_block_p90": metrics["throughput"]["ms_per_block_p90"],
            "block": metrics["throughput"]["block"], "timing": phases.seconds(), "repeats": repeats,
            "frames": metrics["steps"],
            "run_frames_per_s": repeats * codes.shape[-1] / phases.totals["run"],
            "text_ppl": metrics["perplexity"]["text"],
            "graph_captures": captures, "graph_replays": replays,
            "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if cfg.device.startswith("cuda") else None}


def measure_teacher_forced(args, directory: Path, lm_kwargs: dict, ttt_cfg: dict, device: str,
                           dtype, lengths: list[int]) -> dict:
    """Per length: plain lm(codes)+CE (best of ``reps`` after a warm-up) and the cell passes (best
    of ``rounds``), each measurement ``repeats`` passes long (``--min-seconds``, from one plain
    pass; the same for every case of a length, the A/B cell excepted: it runs one pass and its
    twin, against the TTT-on cell's time per pass)."""
    results: dict = {}
    ctx = lm_kwargs["context"]
    long = [n for n in lengths if n > ctx]
    groups = [([n for n in lengths if n <= ctx], None)]
    if long:
        groups.append((long, {"scale": max(long) / ctx, "original_context": ctx,
                              "context": max(long)}))
    upstream = loaders.get_moshi_lm(str(directory / "model.safetensors"), lm_kwargs=lm_kwargs,
                                    device=device, dtype=dtype).eval()
    for group, yarn in groups:
        if not group:
            continue
        if yarn:
            set_attention_context(upstream.transformer, yarn["context"])
        bundle = load_checkpoint(directory, ttt=ttt_cfg, yarn=yarn, device=device, dtype=dtype)
        for length in group:
            codes = random_codes(upstream, length, device, seed=length)
            plain_forward_loss(upstream, codes)  # warm-up (compile, allocator)
            repeats = repeats_for(timed(lambda: plain_forward_loss(upstream, codes), device)[0],
                                  args.min_seconds, args.max_repeats)
            plain = [plain_frames_per_s(upstream, codes, repeats, device) for _ in range(args.reps)]
            row = {"plain_frames_per_s": max(plain), "plain_rounds": plain, "repeats": repeats}
            base = dict(cell="bench", mode="teacher_forced", model=str(directory), device=device,
                        dtype=args.dtype, yarn=yarn, cache_dir=str(args.cache),
                        diagnostics_every=100)
            passes: dict = {}
            for _ in range(args.rounds):  # cases interleaved; best of the rounds kept
                for name, cfg in (("cell_ttt_on", dict(ttt=ttt_cfg)),
                                  ("cell_ttt_on_w0_every_block", dict(ttt={**ttt_cfg, "initial_loss_every": 1})),
                                  # the monitor's diagnostics (every 2k block at 100 steps) off
                                  ("cell_ttt_on_no_diagnostics", dict(ttt=ttt_cfg, diagnostics_every=0)),
                                  ("cell_ttt_on_ab", dict(ttt=ttt_cfg, ab=True)),
                                  ("cell_ttt_off", dict(ttt={"enabled": False}))):
                    with (ttt_disabled(bundle.lm) if name == "cell_ttt_off" else
                          initial_loss_every(bundle.lm, 1) if name == "cell_ttt_on_w0_every_block"
                          else contextlib.nullcontext()):
                        passes.setdefault(name, []).append(cell_pass(
                            CellConfig.from_dict({**base, **cfg}), bundle, codes,
                            args.cache / "tmp", 1 if name == "cell_ttt_on_ab" else repeats))
            for name, runs in passes.items():
                row[name] = {**max(runs, key=lambda r: r["frames_per_s"]),
                             "round_frames_per_s": [r["frames_per_s"] for r in runs],
                             "round_run_s": [r["timing"]["run_s"] for r in runs]}
            if args.profile and length == lengths[0]:
                row["profile"] = profile_passes(upstream, bundle, base, codes, args, args.profile_repeats)
            off, on = row["cell_ttt_off"], row["cell_ttt_on"]
            row["ratios"] = {
                "cell_off_vs_plain": off["frames_per_s"] / row["plain_frames_per_s"],
                "cell_on_vs_plain": on["frames_per_s"] / row["plain_frames_per_s"],
                "ttt_on_vs_off_in_cell": on["frames_per_s"] / off["frames_per_s"],
                "ab_run_vs_one_pass": min(row["cell_ttt_on_ab"]["round_run_s"]) / (
                    min(on["round_run_s"]) / repeats),
                "w0_every_block_on_vs_off_in_cell": row["cell_ttt_on_w0_every_block"]["frames_per_s"] / off["frames_per_s"],
                "w0_every_block_on_vs_plain": row["cell_ttt_on_w0_every_block"]["frames_per_s"] / row["plain_frames_per_s"],
                "no_diagnostics_on_vs_off_in_cell": row["cell_ttt_on_no_diagnostics"]["frames_per_s"] / off["frames_per_s"],
            }
            results[str(length)] = row
            print(f"[tf {length}] {repeats} passes per measurement: plain {row['plain_frames_per_s']:.0f} f/s, cell off "
                  f"{off['frames_per_s']:.0f}, on {on['frames_per_s']:.0f}, "
                  f"ratios {row['ratios']}", flush=True)
            del codes
            free(device)
        del bundle
        free(device)
    del upstream
    free(device)
    return results


@contextlib.contextmanager
def initial_loss_every(lm, every: int):
    """The loaded model's TTT layers with ``ttt.initial_loss_every`` set to ``every`` inside."""
    import dataclasses

    from ttt.moshi.surgery import ttt_layers
    layers = list(ttt_layers(lm).values())
    saved = [layer.cfg for layer in layers]
    for layer in layers:
        layer.cfg = dataclasses.replace(layer.cfg, initial_loss_every=every)
    try:
        yield
    finally:
        for layer, cfg in zip(layers, saved):
            layer.cfg = cfg


# The parts of a cell pass that a profile shows as ranges of their own: the warm-up (prepare,
# outside the timed blocks), the monitor's reads between blocks (outside them too) and the TTT
# layers' whole-chunk block update (inside them).
SECTIONS = {"cell::warm_up": ("ttt.eval.teacher_forced", "warm_up"),
            "cell::observe": ("ttt.session.monitor", "StreamMonitor.observe"),
            "ttt::stream_chunks": ("ttt.moshi.gating", "TTTGating._stream_chunks")}


@contextlib.contextmanager
def tagged_sections():
    """Wrap each of :data:`SECTIONS` in a ``record_function`` range while profiling (the
    functions' own work is unchanged; the originals are put back afterwards)."""
    import importlib

    from torch.profiler import record_function

    def wrap(fn, label):
        def wrapped(*args, **kwargs):
            with record_function(label):
                return fn(*args, **kwargs)
        return wrapped

    undo = []
    for label, (module, name) in SECTIONS.items():
        owner = importlib.import_module(module)
        *path, attr = name.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, attr)
        setattr(owner, attr, wrap(original, label))
        undo.append((owner, attr, original))
    try:
        yield
    finally:
        for owner, attr, original in undo:
            setattr(owner, attr, original)


@torch.no_grad()
def profile_passes(upstream, bundle, base: dict, codes: torch.Tensor, args, repeats: int = 1) -> dict:
    """torch.profiler over ``repeats`` plain lm(codes)+CE and a TTT-off and a TTT-on cell of
    ``repeats`` inputs: the top CUDA ops of each, written beside the JSON (where a cell pass loses
    time against the plain forward), and the ops whose device time TTT on adds per pass (the
    difference of the two cells by op name). A cell is the whole stage: its warm-up (once) and the
    monitor's reads are in the profile, outside the timed blocks; :data:`SECTIONS` show them as
    rows of their own."""
    from torch.autograd.profiler_util import EventList
    from torch.profiler import ProfilerActivity, profile

    tables = {}
    off = CellConfig.from_dict({**base, "ttt": {"enabled": False}})
    on = CellConfig.from_dict({**base, "ttt": args.ttt_cfg})
    device_ms: dict = {}
    for name, fn in (("plain", lambda: [plain_forward_loss(upstream, codes) for _ in range(repeats)]),
                     ("cell_ttt_off", lambda: cell_pass(off, bundle, codes, args.cache / "tmp", repeats)),
                     ("cell_ttt_on", lambda: cell_pass(on, bundle, codes, args.cache / "tmp", repeats))):
        with ttt_disabled(bundle.lm) if name != "cell_ttt_on" else contextlib.nullcontext():
            with tagged_sections(), profile(
                    activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                fn()
                sync(args.device)
        averages = prof.key_averages()
        on_device = args.device.startswith("cuda")  # else CPU time: what a CPU run spends
        device_ms[name] = {e.key: (e.self_device_time_total if on_device else e.self_cpu_time_total)
                           / 1e3 / repeats for e in averages}
        tables[name] = averages.table(sort_by="cuda_time_total", row_limit=30)
        tables[name + " (CPU)"] = averages.table(sort_by="cpu_time_total", row_limit=15)
        sections = [e for e in averages if e.key in SECTIONS]  # always shown, whatever the top rows
        if sections:
            try:
                tables[name + " (sections)"] = EventList(sections).table(sort_by="cpu_time_total")
            except AssertionError as exc:  # torch 2.11's table of a sub-list asserted on CUDA
                tables[name + " (sections)"] = "\n".join(
                    f"{e.key}: cpu {e.cpu_time_total / 1e3:.2f} ms, device "
                    f"{getattr(e, 'device_time_total', 0) / 1e3:.2f} ms, calls {e.count}"
                    for e in sections) + f"\n(table: {exc})"
    unit = "device" if args.device.startswith("cuda") else "CPU"
    tables[f"cell_ttt_on - cell_ttt_off, self {unit} ms per pass"] = added_device_ms(
        device_ms["cell_ttt_on"], device_ms["cell_ttt_off"])
    path = args.profile
    path.write_text("\n\n".join(f"== {k} ({codes.shape[-1]} frames)\n{v}" for k, v in tables.items()))
    return {"file": path.name}


def added_device_ms(on: dict, off: dict, rows: int = 40) -> str:
    """The ops by the self device time one profile adds over another, largest changes first."""
    diff = {k: on.get(k, 0.0) - off.get(k, 0.0) for k in set(on) | set(off)}
    top = sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:rows]
    lines = [f"{'added ms':>10}  {'on ms':>9}  {'off ms':>9}  op"]
    lines += [f"{d:>10.3f}  {on.get(k, 0.0):>9.3f}  {off.get(k, 0.0):>9.3f}  {k[:110]}" for k, d in top]
    lines.append(f"{sum(diff.values()):>10.3f}  {sum(on.values()):>9.3f}  {sum(off.values()):>9.3f}  total")
    return "\n".join(lines)


@torch.no_grad()
def step_loop(gen, user: torch.Tensor, mimi=None) -> tuple[list[float], list, list, list]:
    """Upstream's step as a cell would time it: sync, step, read the output back, [decode]."""
    device = user.device.type
    times, tokens, pcm, frames = [], [], [], []
    with gen.streaming(1), (mimi.streaming(1) if mimi is not None else contextlib.nullcontext()):
        for t in range(user.shape[-1]):
            sync(device)
            t0 = time.perf_counter()
            out = gen.step(user[:, :, t:t + 1])
            if out is not None:
                host = out.cpu()
                tokens.append(int(host[0, 0, 0]))
                if mimi is not None and (host[:, 1:] >= 0).all():
                    pcm.append(mimi.decode(out[:, 1:])[0, 0].float().cpu().numpy())
                    frames.append(host[0, 1:].numpy())
            sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
    return times, tokens, pcm, frames


def summary(times: list[float], skip: int = 10) -> dict:
    kept = sorted(times[skip:] or times)
    return {"p50": statistics.median(kept), "p90": kept[int(0.9 * (len(kept) - 1))],
            "mean": statistics.fmean(kept), "steps": len(kept)}


def measure_generate(args, directory: Path, ttt_cfg: dict, device: str, dtype) -> dict:
    bundle = load_checkpoint(directory, ttt=ttt_cfg, device=device, dtype=dtype)
    lm, mimi = bundle.lm, bundle.mimi
    g = torch.Generator(device="cpu").manual_seed(5)
    user = torch.randint(0, lm.card, (1, 8, args.gen_steps), generator=g).to(device)
    chunk = ttt_cfg["chunk_size"]
    log = lambda m: None  # noqa: E731

    def ours(on: bool):
        def go():
            r = stream_user_channel(lm, mimi, user, seed=0, chunk=chunk if on else None,
                                    snapshot_path=None, snapshot_every=1, log=log, decode=False)
            return r
        if on:
            return go()
        with ttt_disabled(lm):
            return go()

    out: dict = {"steps_per_session": args.gen_steps, "rounds": args.rounds}
    times: dict = {k: [] for k in ("cell_ttt_off", "cell_ttt_on", "upstream_lmgen",
                                   "upstream_lmgen_mimi")}
    with ttt_disabled(lm):
        step_loop(LMGen(lm), user[:, :, :min(40, args.gen_steps)])  # untimed first session
    decode_check, peaks = None, {}
    for _ in range(args.rounds):
        with ttt_disabled(lm):
            t_up, _, _, _ = step_loop(LMGen(lm), user)
            torch.manual_seed(0)
            t_upm, tok_upm, pcm_inline, frames = step_loop(LMGen(lm), user, mimi)
        times["upstream_lmgen"].append(t_up)
        times["upstream_lmgen_mimi"].append(t_upm)
        torch.manual_seed(0)
        reset_peak(device)
        r_off = ours(False)
        peaks["cell_ttt_off"] = max(peaks.get("cell_ttt_off") or 0.0, peak_gb(device) or 0.0)
        times["cell_ttt_off"].append(r_off.step_ms)
        reset_peak(device)
        r_on = ours(True)
        peaks["cell_ttt_on"] = max(peaks.get("cell_ttt_on") or 0.0, peak_gb(device) or 0.0)
        times["cell_ttt_on"].append(r_on.step_ms)
        if decode_check is None:  # the deferred decode of the inline session's own codes
            s, pcm_deferred = timed(lambda: decode_audio(mimi, frames, device), device)
            s1, pcm_one = timed(lambda: decode_audio(mimi, frames, device, per_call=1), device)
            inline, deferred = np.concatenate(pcm_inline), np.concatenate(pcm_deferred)
            decode_check = {
                "deferred_decode_s": s, "frames": len(frames), "frames_per_call": DECODE_FRAMES,
                "one_frame_per_call_decode_s": s1,
                "cell_tokens_equal_to_upstream_session": [t for _, t in r_off.text_tokens] == tok_upm,
                "one_frame_per_call_bitwise_equal_to_inline_decode": len(pcm_one) == len(pcm_inline) and all(
                    np.array_equal(a, b) for a, b in zip(pcm_one, pcm_inline)),
                "pcm_max_abs_diff_to_inline_decode": float(np.abs(deferred - inline).max())
                if deferred.shape == inline.shape else None,
                "pcm_max_abs_inline": float(np.abs(inline).max())}
    for key, runs in times.items():
        out[key] = {**summary([t for r in runs for t in r[10:]], skip=0),
                    "round_p50": [statistics.median(r[10:]) for r in runs]}
    up = out["upstream_lmgen"]["p50"]
    out["ratios"] = {"cell_off_vs_lmgen": out["cell_ttt_off"]["p50"] / up,
                     "cell_on_vs_lmgen": out["cell_ttt_on"]["p50"] / up,
                     "lmgen_mimi_vs_lmgen": out["upstream_lmgen_mimi"]["p50"] / up,
                     "ttt_on_vs_off_in_cell": out["cell_ttt_on"]["p50"] / out["cell_ttt_off"]["p50"]}
    out["decode"] = decode_check
    out["peak_gb"] = peaks if device.startswith("cuda") else None
    print(f"[generate] {json.dumps(out['ratios'])} {decode_check}", flush=True)
    del bundle, lm, mimi
    free(device)
    return out


def run(args, out: Path) -> dict:
    device, dtype = args.device, getattr(torch, args.dtype)
    lm_kwargs = dict(loaders._lm_kwargs) if args.config == "7b" else tiny_lm_kwargs()
    ttt_cfg = TTT_7B if args.config == "7b" else TTT_TINY
    directory = args.cache / f"checkpoint-{args.config}"
    result = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
              "date": dt.date.today().isoformat(), "torch": torch.__version__,
              "config": args.config, "dtype": args.dtype, "ttt": ttt_cfg}
    if args.reuse_checkpoint and (directory / "model.safetensors").exists():
        result["checkpoint"] = {"reused": str(directory)}
    else:
        result["checkpoint"] = build_checkpoint(directory, lm_kwargs, device, dtype)
    print(f"[build] {result['checkpoint']}", flush=True)
    if "generate" in args.parts:
        result["generate"] = measure_generate(args, directory, ttt_cfg, device, dtype)
        save(out, result)
    if "teacher_forced" in args.parts:
        result["teacher_forced"] = measure_teacher_forced(args, directory, lm_kwargs, ttt_cfg,
                                                          device, dtype, args.lengths)
        save(out, result)
    if "load" in args.parts:
        result["loading"] = measure_loading(directory, lm_kwargs, ttt_cfg, device, dtype,
                                            args.load_rounds)
        print(f"[load] {result['loading']}", flush=True)
    result["complete"] = True
    save(out, result)
    return result


def save(path: Path, result: dict) -> None:
    """After every part: a run cut short still leaves what it measured."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=("7b", "tiny"), default="7b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768])
    p.add_argument("--gen-steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--min-seconds", type=float, default=0.5,
                   help="teacher-forced: repeat a short pass until a measurement lasts this long")
    p.add_argument("--max-repeats", type=int, default=64, help="teacher-forced: at most this many passes")
    p.add_argument("--load-rounds", type=int, default=2)
    p.add_argument("--profile", type=Path, default=None,
                   help="write torch.profiler tables of a plain and a cell pass at the first length")
    p.add_argument("--profile-repeats", type=int, default=1,
                   help="inputs per profiled cell (more: the warm-up's share shrinks)")
    p.add_argument("--parts", nargs="+", default=["generate", "teacher_forced", "load"],
                   choices=("generate", "teacher_forced", "load", "build"),
                   help="build: the checkpoint alone")
    p.add_argument("--reuse-checkpoint", action="store_true",
                   help="keep a checkpoint an earlier run built in --cache")
    p.add_argument("--cache", type=Path, default=Path("results/bench-cells"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    args.ttt_cfg = TTT_7B if args.config == "7b" else TTT_TINY
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    out = args.out or Path(__file__).parent / "results" / (
        f"{dt.date.today().isoformat()}-cells-{device.replace(' ', '_')}.json")
    run(args, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
