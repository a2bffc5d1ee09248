"""Can the control suite's architecture learn to copy at all, how many steps does it take, and
does In-Place TTT recall what its attention cannot reach?

Rows of random tokens (every stream, ``--vocab`` values) in which a span of ``--length`` frames is
repeated later in the same row: at one fixed lag (``--lag N``: a head that looks N frames back
solves it), or at a lag drawn per row in ``--lag-min``..``--lag-max`` (``--lag random``: only
matching content, an induction circuit, solves it; this is what the suite's offset sets ask).
Nothing can be learned by heart, so a repeat is predictable only by recalling its source.

``--context`` limits attention (default: the whole row, the ceiling) and ``--ttt`` adds the
suite's In-Place TTT block (layers 1 and 3, chunk 8, lr 0.01), so three variants trained the same
way answer the suite's question on data whose answer is known for two of them: full attention can
copy at every lag, attention of ``--context`` frames cannot copy a source beyond it, and TTT is the
measurement. Every ``--log-every`` steps: the NLL on the repeated frames (chance = ln(vocab)) of
held-out rows at each of ``--eval-lags``, for a TTT model also with its updates off (the twin),
and on two controls built from the same rows (``--eval-kinds``): ``shuffled`` (the copy's frames
permuted in blocks of 4: the same content out of order) and ``fresh`` (new random tokens in place
of the copy: nothing to recall, so no model may beat chance there). The controls draw from their
own generator, so the training stream is the one a run without them draws.
``--max-seconds`` stops a probe early (it is a probe: the curve is by steps; the last step is
printed). ``--out`` writes the curve as JSON. The figures read are the last step's, declared here:
no training row is ever drawn twice, so there is nothing to overfit and no checkpoint to select.

CPU toy (2026-12-03, moshi LM dim 64, 4 layers, two codebooks per channel, batch 16):
``--lag 32 --length 32 --frames 64``: text copy NLL 4.10 → 0.05 by step 400; ``--lag random
--length 24 --frames 96``: still 4.10 at step 1,300.

    python gpu/control/copy_probe.py --lag random --steps 6000 --device cuda
"""
import argparse
import contextlib
import json
import math
import platform
import time

import torch
from moshi.models import loaders

from ttt.base.config import TTTConfig
from ttt.base.files import write_text
from ttt.moshi.surgery import apply_ttt, ttt_disabled
from ttt.moshi.tiny import DEFAULT_LM_KWARGS
from ttt.training.held_out import token_losses
from ttt.training.train import lm_loss

SUITE_TTT = {"start_layer": 1, "layer_frequency": 2, "chunk_size": 8, "lr": 0.01,
             "delta_clip_fro_norm": None, "init_std": 0.5}  # gpu/control/run_suite.sh's TTT_BLOCK


def rows(n, args, g, lag=None):
    """[n, 1 + 2Q, frames] random codes, each with one repeat (at ``lag``, else ``args.lag``, else a
    lag drawn per row); and the repeated spans, past their first two frames."""
    x = torch.randint(0, args.vocab, (n, 1 + 2 * args.codebooks, args.frames), generator=g)
    x[:, 0] = (x[:, 0] + 4).clamp(max=63)  # text ids 4..63: no padding ids
    spans = []
    for i in range(n):
        this = lag if lag is not None else args.lag
        if this == "random":
            this = int(torch.randint(args.lag_min, args.lag_max + 1, (1,), generator=g))
        start = int(torch.randint(0, args.frames - args.length - this + 1, (1,), generator=g))
        x[i, :, start + this:start + this + args.length] = x[i, :, start:start + args.length]
        spans.append((start + this + 2, start + this + args.length))  # +2: past the seam
    return x, spans


def controls(codes, spans, vocab, g):
    """{"shuffled": the rows with each copy permuted in blocks of 4 frames (never in order),
    "fresh": the rows with each copy replaced by new random tokens}; the spans stay as they were."""
    shuffled, fresh = codes.clone(), codes.clone()
    for i, (s, e) in enumerate(spans):
        start = s - 2  # the whole copy, its first two frames included
        blocks = codes[i, :, start:e].split(4, dim=-1)
        order = torch.randperm(len(blocks), generator=g)
        while bool((order == torch.arange(len(blocks))).all()):
            order = torch.randperm(len(blocks), generator=g)
        shuffled[i, :, start:e] = torch.cat([blocks[j] for j in order], dim=-1)
        new = torch.randint(0, vocab, (codes.shape[1], e - start), generator=g)
        new[0] = (new[0] + 4).clamp(max=63)  # text ids as rows() draws them
        fresh[i, :, start:e] = new
    return {"shuffled": shuffled, "fresh": fresh}


def copy_nll(lm, held) -> tuple[float, float]:
    """Mean NLL (text, audio) on the repeated frames of held-out rows."""
    codes, spans = held
    t, a = token_losses(lm, codes)
    copy_t = sum(float(t[i, s:e].mean()) for i, (s, e) in enumerate(spans)) / len(spans)
    copy_a = sum(float(a[i, :, s:e].nanmean()) for i, (s, e) in enumerate(spans)) / len(spans)
    return copy_t, copy_a


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lag", default="random", help="frames between copy and source, or 'random'")
    p.add_argument("--lag-min", type=int, help="random lags from (default: --length)")
    p.add_argument("--lag-max", type=int, help="random lags up to (default: frames - length)")
    p.add_argument("--eval-lags", default="", help="comma list: held-out rows at these lags "
                   "(default: the training lag, or rows of random lags)")
    p.add_argument("--eval-kinds", default="exact,shuffled,fresh",
                   help="held-out copies: exact, and the controls shuffled and fresh")
    p.add_argument("--length", type=int, default=24)
    p.add_argument("--frames", type=int, default=96)
    p.add_argument("--context", type=int, help="attention context in frames (default: 2 x frames)")
    p.add_argument("--ttt", action="store_true", help="add the control suite's In-Place TTT block")
    p.add_argument("--vocab", type=int, default=60)
    p.add_argument("--codebooks", type=int, default=2, help="per channel (moshi needs >= 2)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--max-seconds", type=float, help="stop after this much training time")
    p.add_argument("--out", help="write the curve here (JSON)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    args.lag = args.lag if args.lag == "random" else int(args.lag)
    args.lag_min = args.length if args.lag_min is None else args.lag_min
    args.lag_max = args.frames - args.length if args.lag_max is None else args.lag_max
    if not args.length <= args.lag_min <= args.lag_max <= args.frames - args.length:
        p.error(f"--lag-min/--lag-max: need length <= min <= max <= frames - length, got "
                f"{args.length} <= {args.lag_min} <= {args.lag_max} <= {args.frames - args.length}")
    eval_lags = [int(v) for v in args.eval_lags.split(",") if v] or [args.lag]
    kinds = args.eval_kinds.split(",")
    if kinds[0] != "exact" or not set(kinds[1:]) <= {"shuffled", "fresh"} or len(set(kinds)) < len(kinds):
        p.error(f"--eval-kinds: exact, then any of shuffled, fresh; got {args.eval_kinds}")
    if args.length < 8:
        p.error("--length: at least 8 frames (the shuffled control permutes blocks of 4)")
    q = args.codebooks
    kwargs = {**DEFAULT_LM_KWARGS, "dim": 64, "num_heads": 4, "num_layers": 4,
              "context": args.context or 2 * args.frames,
              "depformer_dim": 32, "depformer_dim_feedforward": 64, "depformer_num_heads": 2,
              "depformer_num_layers": 2, "n_q": 2 * q, "dep_q": q, "delays": [0] + ([0] + [1] * (q - 1)) * 2}
    torch.manual_seed(args.seed)
    lm = loaders.get_moshi_lm(None, lm_kwargs=kwargs, device=args.device, dtype=torch.float32)
    conditions = {"on": contextlib.nullcontext}
    if args.ttt:
        apply_ttt(lm, TTTConfig.from_dict(SUITE_TTT))
        conditions["off"] = lambda: ttt_disabled(lm)
    opt = torch.optim.AdamW(lm.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    exact = {lag: rows(64, args, g, lag=lag) for lag in eval_lags}
    g_controls = torch.Generator().manual_seed(10_000 + args.seed)  # not the training stream's
    held = {}
    for lag, (codes, spans) in exact.items():
        held[f"lag{lag}"] = (codes.to(args.device), spans)
        made = controls(codes, spans, args.vocab, g_controls) if len(kinds) > 1 else {}
        for kind in kinds[1:]:
            held[f"lag{lag}_{kind}"] = (made[kind].to(args.device), spans)
    started, curve = time.time(), []
    print(f"lags {args.lag if args.lag != 'random' else f'{args.lag_min}-{args.lag_max}'}, copy "
          f"{args.length} of {args.frames} frames, context {kwargs['context']}, ttt {args.ttt}, "
          f"seed {args.seed}; chance {math.log(args.vocab):.3f}", flush=True)
    for step in range(1, args.steps + 1):
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, step / 50)
        text, audio = lm_loss(lm, rows(args.batch, args, g)[0].to(args.device))
        opt.zero_grad()
        (text + audio).backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        over = args.max_seconds is not None and time.time() - started > args.max_seconds
        if step % args.log_every == 0 or step == args.steps or over:
            lm.eval()
            row = {"step": step, "seconds": round(time.time() - started, 1)}
            for name, condition in conditions.items():
                with condition():
                    for key, rows_of_key in held.items():
                        row[f"{name}_{key}"] = [round(v, 4) for v in copy_nll(lm, rows_of_key)]
            lm.train()
            curve.append(row)
            print(json.dumps(row), flush=True)
        if over:
            print(f"stopped at step {step}: --max-seconds {args.max_seconds}", flush=True)
            break
    if args.out:
        machine = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                   "host": platform.node(), "torch": torch.__version__}
        write_text(args.out, json.dumps({"args": vars(args), "machine": machine, "lm_kwargs": kwargs,
                                         "ttt": SUITE_TTT if args.ttt else None,
                                         "curve": curve}, indent=1) + "\n")


if __name__ == "__main__":
    main()
