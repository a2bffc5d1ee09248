"""``ttt train``: a Moshi-architecture LM with TTT layers, teacher forcing, resumable."""
from __future__ import annotations

import argparse

from ttt.cli.common import add_config_out_device, bad_input, example, no_compile, with_device


def train_command(args: argparse.Namespace) -> int:
    """Exit 0 trained (or already at its last step), 2 bad config, data or checkpoint."""
    from ttt.data.conversations import DataError
    from ttt.training.train import load_train_config, train
    from ttt.moshi.model import CheckpointError

    try:
        cfg = with_device(load_train_config(args.config), args.device)
        with no_compile():
            summary = train(cfg, args.out, log=lambda m: print(m, flush=True))
    except (ValueError, DataError, CheckpointError) as exc:
        return bad_input(exc)
    final = summary["final"] or {}
    print(f"trained {summary['steps']} steps in {summary['train_time_s']:.0f} s on "
          f"{summary['device']}: text loss {final.get('text_loss', float('nan')):.4f}, audio loss "
          f"{final.get('audio_loss', float('nan')):.4f} → {args.out}/checkpoint; evaluate "
          f"{summary['selected']['checkpoint']} ({summary['selected']['criterion']}, step "
          f"{summary['selected']['step']})")
    return 0


def add_parser(sub) -> None:
    t = sub.add_parser(
        "train", help="train a Moshi-architecture LM with TTT layers (teacher forcing)",
        description="Train from scratch or only the TTT parameters of a checkpoint on "
                    "moshi-finetune manifests; writes OUT/checkpoint (run-cell loads it), "
                    "OUT/train_log.csv and OUT/summary.json; rerun with the same --out to resume. "
                    "Exit codes: 0 trained, 2 bad config, data or checkpoint.",
        epilog=example("python -m ttt train --config ttt/assets/tiny-control/train.yaml "
                       "--out runs/control --device cuda"))
    add_config_out_device(t, "training YAML (keys: docs/training.md)",
                          "output directory (resumed when it holds a run)")
    t.set_defaults(func=train_command)
