"""Command line: ``python -m ttt <command>``."""
from __future__ import annotations

import argparse
import time

import torch
from moshi.utils.compile import no_compile

from .config import TTTConfig
from .surgery import apply_ttt, ttt_layers
from .telemetry import ttt_state
from .tiny import tiny_lm


def selfcheck(args: argparse.Namespace) -> int:
    """Run In-Place TTT on the embedded tiny model in every CPU execution mode and compare."""
    with no_compile():  # a CPU inductor compile of RMSNorm costs more than the whole check
        return _selfcheck(args)


def _selfcheck(args: argparse.Namespace) -> int:
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


def run_cell_command(args: argparse.Namespace) -> int:
    """Exit 0 for a completed or diverged cell, 2 for bad input, anything else is a crash."""
    import sys
    from .cell import load_cell_config, run_cell
    from .data import DataError
    from .model import CheckpointError

    try:
        cfg = load_cell_config(args.config)
        if args.device:
            cfg = type(cfg).from_dict({**cfg.to_dict(), "device": args.device})
        with no_compile() if cfg.device == "cpu" else _nullcontext():
            metrics = run_cell(cfg, args.out, log=lambda m: print(m, file=sys.stderr, flush=True))
    except (ValueError, FileExistsError, DataError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ppl, wer = metrics["perplexity"], metrics["wer"]
    parts = [f"text ppl {ppl['text']:.3f}, audio ppl {ppl['audio']:.3f}" if ppl else None,
             f"WER {wer['wer']:.3f}" if wer and wer["wer"] is not None else None,
             f"{metrics['throughput']['ms_per_step_p50']:.1f} ms/step",
             f"diverged={metrics['diverged']}"]
    print(f"{cfg.cell}: " + ", ".join(p for p in parts if p) + f" → {args.out}")
    return 0


def _nullcontext():
    import contextlib
    return contextlib.nullcontext()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ttt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "run-cell", help="run one matrix cell (see examples/cells/*.yaml)",
        description="Run one cell: load the model (a checkpoint directory or the embedded 'tiny' "
                    "default), tokenise the data once (cached), run the mode, and write "
                    "metrics.json, timeseries.csv, telemetry.csv and plots into --out, atomically. "
                    "Exit codes: 0 completed or diverged (recorded), 2 bad input, other = crash.")
    r.add_argument("--config", required=True, help="cell YAML (keys: see README 'Cell config')")
    r.add_argument("--out", required=True, help="output directory (must not exist)")
    r.add_argument("--device", default=None, help="override the config's device (cpu, cuda)")
    r.set_defaults(func=run_cell_command)
    p = sub.add_parser("selfcheck", help="run TTT on the embedded tiny model and compare modes")
    p.add_argument("--tokens", type=int, default=64, help="sequence length (default 64)")
    p.add_argument("--chunk", type=int, default=16, help="TTT chunk size (default 16)")
    p.add_argument("--lr", type=float, default=0.5, help="TTT learning rate (default 0.5)")
    p.add_argument("--clip", type=float, default=1.0, help="Frobenius clip τ, <= 0 for off")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=selfcheck)
    args = parser.parse_args(argv)
    return args.func(args)
