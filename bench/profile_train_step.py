"""Where a control-suite training step spends its time (issue 24: one 3,000-step run of 64 rows
of 450 frames took ≈ 12 H200-minutes, 0.24 s per step with three runs sharing the GPU).

The suite's model (``gpu/control/suite.yaml``: dim 64, 4 layers, card 2048; ``--text-card``) in
its three variants (``ttt``: In-Place TTT on layers 1 and 3 as ``run_suite.sh`` sets it, context
32; ``no_ttt``: context 32; ``full``: context 512), trained exactly as ``ttt.training.train``
steps it (``lm_loss``, backward, gradient clipping, AdamW) on random codes of the suite's shape,
one variant at a time in this process. Printed and written to ``--out`` (JSON):
- ms per step (median of ``--steps`` after ``--warmup``), per variant, and per phase of the
  step (forward + loss, backward, clip + optimizer; CUDA synchronised between them);
- ms to build one batch of fresh word rows with its repeats on the CPU (``fresh_batch`` +
  ``add_repeats`` on a synthetic lexicon of the natural pack's size: the data the GPU waits for);
- with ``--profile FILE``: the top ops by self device time of a few steps of each variant.

    python bench/profile_train_step.py --out /tmp/train-step.json --profile /tmp/train-step.txt
    python bench/profile_train_step.py --device cpu --batch 4 --frames 64 --steps 2 --out /tmp/t.json  # smoke
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from moshi.models import loaders

from ttt.base.config import TTTConfig
from ttt.data.recurrence import add_repeats
from ttt.moshi.surgery import apply_ttt
from ttt.moshi.tiny import TINY_LM_KWARGS
from ttt.training.train import lm_loss
from ttt.training.word_rows import Lexicon, fresh_batch

SUITE_LM = dict(dim=64, num_heads=4, num_layers=4, card=2048, depformer_dim=32,
                depformer_dim_feedforward=64, depformer_num_heads=2, depformer_num_layers=2)
TTT_BLOCK = dict(start_layer=1, layer_frequency=2, chunk_size=8, lr=0.01, delta_clip_fro_norm=None,
                 init_std=0.5)  # run_suite.sh's TTT_BLOCK
VARIANTS = {"ttt": (TTT_BLOCK, 32), "no_ttt": ({"enabled": False}, 32), "full": ({"enabled": False}, 512)}
REPEATS = {"fraction": 1.0, "length": [32, 64], "offset": [40, 400]}  # run_suite.sh's defaults


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(variant: str, text_card: int, device: str):
    ttt, context = VARIANTS[variant]
    torch.manual_seed(0)
    lm = loaders.get_moshi_lm(None, lm_kwargs={**TINY_LM_KWARGS, **SUITE_LM, "context": context,
                                               "text_card": text_card},
                              device=device, dtype=torch.float32)
    apply_ttt(lm, TTTConfig.from_dict(ttt))
    lm.train()
    return lm, torch.optim.AdamW(lm.parameters(), lr=3e-3)


def random_batch(lm, batch: int, frames: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    text = torch.randint(0, lm.text_card, (batch, 1, frames), generator=g)
    audio = torch.randint(0, lm.card, (batch, lm.num_codebooks - 1, frames), generator=g)
    return torch.cat([text, audio], 1).to(device)


def step_phases(lm, opt, codes: torch.Tensor, device: str) -> dict[str, float]:
    """One training step as ``ttt.training.train`` runs it, ms per phase."""
    times = {}
    sync(device)
    t0 = time.perf_counter()
    text, audio = lm_loss(lm, codes)
    loss = text + audio
    sync(device)
    t1 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    sync(device)
    t2 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(list(lm.parameters()), 1.0)
    opt.step()
    loss.item()
    sync(device)
    t3 = time.perf_counter()
    times.update(forward_loss=(t1 - t0) * 1e3, backward=(t2 - t1) * 1e3, optimizer=(t3 - t2) * 1e3,
                 step=(t3 - t0) * 1e3)
    return times


def synthetic_lexicon(words: tuple[int, int] = (7767, 6632), codebooks: int = 8) -> Lexicon:
    """A lexicon of the natural pack's size (word cells of 2-8 frames, 3,000 silence frames)."""
    rng = np.random.default_rng(0)
    codes, cells, silence = [], [], []
    for n in words:
        lengths = rng.integers(2, 9, size=n)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        total = int(lengths.sum())
        codes.append(rng.integers(0, 2048, size=(codebooks, total + 3000)))
        cells.append(np.stack([starts, lengths], 1))
        silence.append((total, 3000))
    names = tuple([f"w{i}" for i in range(n)] for n in words)
    return Lexicon(tuple(codes), tuple(cells), names, [[5, 6]] * words[0], tuple(silence))


def batch_build_ms(batch: int, frames: int, reps: int = 5) -> float:
    lexicon, g = synthetic_lexicon(), torch.Generator().manual_seed(0)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        add_repeats(fresh_batch(lexicon, batch, frames, g, "word"), REPEATS, g)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def profile_steps(lm, opt, codes: torch.Tensor, device: str, steps: int = 3) -> str:
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step_phases(lm, opt, codes, device)
    key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=25)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--frames", type=int, default=450)
    p.add_argument("--text-card", type=int, default=64, help="64: word-tone; the natural pack's is larger")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--profile", type=Path, default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    result = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "batch": args.batch, "frames": args.frames,
              "text_card": args.text_card, "steps": args.steps,
              "batch_build_ms": batch_build_ms(args.batch, args.frames), "variants": {}}
    print(f"[data] fresh rows + repeats: {result['batch_build_ms']:.1f} ms per batch (CPU)", flush=True)
    tables = []
    for variant in args.variants:
        lm, opt = build(variant, args.text_card, args.device)
        codes = random_batch(lm, args.batch, args.frames, args.device)
        runs = [step_phases(lm, opt, codes, args.device) for _ in range(args.warmup + args.steps)]
        kept = runs[args.warmup:]
        row = {k: statistics.median(r[k] for r in kept) for k in kept[0]}
        if args.device.startswith("cuda"):
            row["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
            torch.cuda.reset_peak_memory_stats()
        result["variants"][variant] = row
        print(f"[{variant}] " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()), flush=True)
        if args.profile:
            tables.append(f"== {variant}\n{profile_steps(lm, opt, codes, args.device)}")
        del lm, opt, codes
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.profile:
        args.profile.write_text("\n\n".join(tables))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
