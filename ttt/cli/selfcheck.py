"""``ttt selfcheck``: In-Place TTT on the tiny model in every CPU execution mode, compared."""
from __future__ import annotations

import argparse
import time

from ttt.cli.common import example, no_compile


def selfcheck(args: argparse.Namespace) -> int:
    """Run In-Place TTT on the embedded tiny model in every CPU execution mode and compare."""
    with no_compile():  # a CPU inductor compile of RMSNorm costs more than the whole check
        return _selfcheck(args)


def _selfcheck(args: argparse.Namespace) -> int:
    import torch

    from ttt.base.config import TTTConfig
    from ttt.moshi.surgery import apply_ttt, ttt_layers
    from ttt.moshi.tiny import tiny_lm
    from ttt.session.telemetry import ttt_state

    cfg = TTTConfig(start_layer=1, layer_frequency=2, chunk_size=args.chunk, lr=args.lr,
                    delta_clip_fro_norm=args.clip, init_std=0.5)
    upstream = tiny_lm(args.seed)
    lm = apply_ttt(tiny_lm(args.seed), cfg)
    g = torch.Generator().manual_seed(args.seed)
    seq = torch.randint(0, 24, (1, 17, args.tokens), generator=g)
    t0 = time.perf_counter()
    with torch.no_grad():
        parallel = lm.forward_text(seq)[1]
        off = upstream.forward_text(seq)[1]
        with lm.streaming(1):
            streamed = torch.cat([lm.forward_text(seq[:, :, t:t + 1])[1] for t in range(args.tokens)], 2)
            stats = ttt_state(lm)
    elapsed = time.perf_counter() - t0

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max()).item()

    C = cfg.chunk_size
    first = rel(parallel[:, :, :C], off[:, :, :C])
    stream_err = rel(streamed, parallel)
    print(f"ttt selfcheck: tiny moshi, TTT layers {sorted(ttt_layers(lm))}, chunk {C}, "
          f"lr {cfg.lr}, tau {cfg.clip}, {args.tokens} tokens ({elapsed:.2f} s)")
    print(f"  first chunk, TTT on vs off       max rel err {first:.2e}  (expect 0)")
    print(f"  streaming 1 token vs parallel    max rel err {stream_err:.2e}  (expect <= 1e-5)")
    print(f"  after first chunk, on vs off     max rel err {rel(parallel[:, :, C:], off[:, :, C:]):.2e}"
          "  (TTT at work)")
    for i, s in stats.items():
        print(f"  layer {i}: updates {int(s['updates'])}, clip events {int(s['clip_events'])}, "
              f"|W| {float(s['w_norm']):.4f}, |W - W0| {float(s['w_drift']):.3e}")
    ok = first == 0.0 and stream_err <= 1e-5
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


def add_parser(sub) -> None:
    p = sub.add_parser(
        "selfcheck", help="run TTT on the embedded tiny model and compare modes",
        description="Run In-Place TTT on a tiny random Moshi in the parallel and the streaming form "
                    "and compare them (and the first chunk against TTT off), in about a second. "
                    "Exit codes: 0 OK, 1 a mode disagrees.",
        epilog=example("python -m ttt selfcheck --tokens 64 --chunk 16"))
    p.add_argument("--tokens", type=int, default=64, help="sequence length (default 64)")
    p.add_argument("--chunk", type=int, default=16, help="TTT chunk size (default 16)")
    p.add_argument("--lr", type=float, default=0.5, help="TTT learning rate (default 0.5)")
    p.add_argument("--clip", type=float, default=1.0, help="Frobenius clip τ, <= 0 for off")
    p.add_argument("--seed", type=int, default=0, help="model and input seed (default 0)")
    p.set_defaults(func=selfcheck)
