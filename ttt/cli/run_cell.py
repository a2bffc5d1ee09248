"""``ttt run-cell``: one matrix cell into a fresh output folder."""
from __future__ import annotations

import argparse
import sys

from ttt.cli.common import add_config_out_device, bad_input, example, no_compile, with_device


def run_cell_command(args: argparse.Namespace) -> int:
    """Exit 0 for a completed or diverged cell, 2 for bad input, anything else is a crash."""
    from ttt.eval.cell import load_cell_config, run_cell
    from ttt.data.conversations import DataError
    from ttt.moshi.model import CheckpointError

    try:
        cfg = with_device(load_cell_config(args.config), args.device)
        with no_compile(cfg.device == "cpu"):
            metrics = run_cell(cfg, args.out, log=lambda m: print(m, file=sys.stderr, flush=True),
                               fresh=args.fresh)
    except (ValueError, FileExistsError, DataError, CheckpointError) as exc:
        return bad_input(exc)
    ppl, wer = metrics["perplexity"], metrics["wer"]
    ms = metrics["throughput"]["ms_per_step_p50"]  # None: no model step ran (playback)
    parts = [f"text ppl {ppl['text']:.3f}, audio ppl {ppl['audio']:.3f}" if ppl else None,
             f"WER {wer['wer']:.3f}" if wer and wer["wer"] is not None else None,
             f"{ms:.1f} ms/step" if ms is not None else None,
             f"diverged={metrics['diverged']}"]
    print(f"{cfg.cell}: " + ", ".join(p for p in parts if p) + f" → {args.out}")
    return 0


def add_parser(sub) -> None:
    r = sub.add_parser(
        "run-cell", help="run one matrix cell (see examples/cells/*.yaml)",
        description="Run one cell: load the model (a checkpoint directory or the embedded 'tiny' "
                    "default), tokenise the data once (cached), run the mode, and write "
                    "metrics.json, timeseries.csv, telemetry.csv and plots into --out, atomically. "
                    "Exit codes: 0 completed or diverged (recorded), 2 bad input, other = crash.",
        epilog=example("python -m ttt run-cell --config examples/cells/teacher_forced_tiny.yaml "
                       "--out results/cells/my-cell"))
    add_config_out_device(r, "cell YAML (keys: docs/config-reference.md)",
                          "output directory (must not exist)")
    r.add_argument("--fresh", action="store_true",
                   help="discard the snapshots an interrupted run of this --out left, instead of "
                        "resuming from them (a snapshot of another config, model or input is "
                        "refused without this flag)")
    r.set_defaults(func=run_cell_command)
