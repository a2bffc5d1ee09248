"""Can the control suite's architecture learn to copy at all, and how many steps does it take?

Rows of random tokens (every stream, ``--vocab`` values) in which a span of ``--length`` frames is
repeated later in the same row: at one fixed lag (``--lag N``: a head that looks N frames back
solves it), or at a lag drawn per row (``--lag random``: only matching content, an induction
circuit, solves it; this is what the suite's offset sets ask). Prints the NLL on the repeated
frames (chance = ln(vocab)) against step. No data, no Mimi: seconds per hundred steps on a GPU.

CPU toy (2026-12-03, moshi LM dim 64, 4 layers, two codebooks per channel, batch 16):
``--lag 32 --length 32 --frames 64``: text copy NLL 4.10 → 0.05 by step 400; ``--lag random
--length 24 --frames 96``: still 4.10 at step 1,300.

    python gpu/control/copy_probe.py --lag random --steps 6000 --device cuda
"""
import argparse
import math
import time

import torch
from moshi.models import loaders

from ttt.moshi.tiny import DEFAULT_LM_KWARGS
from ttt.training.held_out import token_losses
from ttt.training.train import lm_loss


def rows(n, args, g):
    """[n, 1 + 2Q, frames] random codes, each with one repeat; and the repeated spans."""
    x = torch.randint(0, args.vocab, (n, 1 + 2 * args.codebooks, args.frames), generator=g)
    x[:, 0] = (x[:, 0] + 4).clamp(max=63)  # text ids 4..63: no padding ids
    spans = []
    for i in range(n):
        lag = (args.lag if args.lag != "random" else
               int(torch.randint(args.length, args.frames - args.length + 1, (1,), generator=g)))
        start = int(torch.randint(0, args.frames - args.length - int(lag) + 1, (1,), generator=g))
        x[i, :, start + int(lag):start + int(lag) + args.length] = x[i, :, start:start + args.length]
        spans.append((start + int(lag) + 2, start + int(lag) + args.length))  # +2: past the seam
    return x, spans


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lag", default="random", help="frames between copy and source, or 'random'")
    p.add_argument("--length", type=int, default=24)
    p.add_argument("--frames", type=int, default=96)
    p.add_argument("--vocab", type=int, default=60)
    p.add_argument("--codebooks", type=int, default=2, help="per channel (moshi needs >= 2)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    args.lag = args.lag if args.lag == "random" else int(args.lag)
    q = args.codebooks
    kwargs = {**DEFAULT_LM_KWARGS, "dim": 64, "num_heads": 4, "num_layers": 4, "context": 2 * args.frames,
              "depformer_dim": 32, "depformer_dim_feedforward": 64, "depformer_num_heads": 2,
              "depformer_num_layers": 2, "n_q": 2 * q, "dep_q": q, "delays": [0] + ([0] + [1] * (q - 1)) * 2}
    torch.manual_seed(0)
    lm = loaders.get_moshi_lm(None, lm_kwargs=kwargs, device=args.device, dtype=torch.float32)
    opt = torch.optim.AdamW(lm.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(0)
    held, spans = rows(64, args, g)
    held, started = held.to(args.device), time.time()
    print(f"lag {args.lag}, copy {args.length} of {args.frames} frames; chance {math.log(args.vocab):.3f}")
    for step in range(1, args.steps + 1):
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, step / 50)
        text, audio = lm_loss(lm, rows(args.batch, args, g)[0].to(args.device))
        opt.zero_grad()
        (text + audio).backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        if step % args.log_every == 0:
            lm.eval()
            t, a = token_losses(lm, held)
            lm.train()
            copy_t = sum(float(t[i, s:e].mean()) for i, (s, e) in enumerate(spans)) / len(spans)
            copy_a = sum(float(a[i, :, s:e].nanmean()) for i, (s, e) in enumerate(spans)) / len(spans)
            print(f"step {step}: copy NLL text {copy_t:.3f} audio {copy_a:.3f} "
                  f"(all frames {float(t.nanmean()):.3f} / {float(a.nanmean()):.3f}) "
                  f"{time.time() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
