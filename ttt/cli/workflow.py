"""The commands Snakemake's rules run for each cell: ``ttt submit`` (the driver, one per cell in
flight on a login node: it must stay light) and ``ttt prepare`` (Mimi codes, once per input)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ttt.cli.common import bad_input, example, no_compile


def submit_command(args: argparse.Namespace) -> int:
    """The Snakemake driver: submit one cell, wait, write status.json. A failed cell exits 0 (its
    status says why) so the matrix goes on; a bad launcher config exits 2."""
    from ttt.launch.launcher import read_launcher, submit_and_wait

    try:
        launcher = read_launcher(args.launcher)
    except ValueError as exc:
        return bad_input(exc, stdout=True)
    status = submit_and_wait(Path(args.config), Path(args.out), Path(args.status), launcher,
                             Path(args.log_dir))
    print(f"{args.out}: {status['status']}" + (f" ({status['error']})" if status.get("error") else ""))
    return 0


def prepare_command(args: argparse.Namespace) -> int:
    """Tokenise a cell's inputs once (Mimi codes cache) before its cells run: Mimi alone, never
    the LM, on the CPU where the configured GPU is absent (ttt/eval/prepare.py)."""
    import json

    from ttt.eval.cell import load_cell_config
    from ttt.data.conversations import DataError
    from ttt.eval.prepare import preparation_device, prepare
    from ttt.moshi.model import CheckpointError

    try:
        cfg = load_cell_config(args.config)
        with no_compile(preparation_device(cfg.device) == "cpu"):
            marker = prepare(cfg)
    except (ValueError, DataError, CheckpointError) as exc:
        # Not fatal for the matrix: the cells reading these inputs fail with this same error in
        # their own status rows, and every other cell goes on.
        print(f"error: {exc}")
        Path(args.out).write_text(json.dumps({"error": str(exc)}) + "\n")
        return 0
    Path(args.out).write_text(json.dumps(marker, indent=1) + "\n")
    print(f"prepared {len(marker['items'])} input(s), {sum(marker['frames'])} frames "
          f"on {marker['device']}")
    return 0


def add_parsers(sub) -> None:
    cell = "results/cells/short_form/duration~8/ttt~on"
    s = sub.add_parser(
        "submit", help="submit one cell through submitit and wait (Snakemake driver)",
        description="What the workflow's run_cell rule runs for each cell: submit the cell as one "
                    "job (local or SLURM, per the launcher), wait for it and write status.json (ok, "
                    "diverged, failed, timeout). A failed cell exits 0, its status says why; a bad "
                    "launcher exits 2.",
        epilog=example(f"python -m ttt submit --config {cell}/cell.yaml --out {cell}/cell "
                       f"--status {cell}/status.json --launcher profiles/local/submitit.yaml "
                       f"--log-dir {cell}/jobs"))
    s.add_argument("--config", required=True, help="cell YAML")
    s.add_argument("--out", required=True, help="cell output directory")
    s.add_argument("--status", required=True, help="status.json to write")
    s.add_argument("--launcher", default=None, help="launcher YAML (profiles/*/submitit.yaml)")
    s.add_argument("--log-dir", required=True, help="submitit log folder (shared filesystem on SLURM)")
    s.set_defaults(func=submit_command)
    p = sub.add_parser(
        "prepare", help="tokenise a cell's inputs once (Mimi codes cache)",
        description="Encode a cell's inputs with Mimi (never the LM) into the codes cache before its "
                    "cells run, and write a marker JSON. An input error is written into the marker "
                    "(exit 0): the cells reading it fail with it, every other cell goes on.",
        epilog=example("python -m ttt prepare --config examples/cells/teacher_forced_tiny.yaml "
                       "--out prepared.json"))
    p.add_argument("--config", required=True, help="cell YAML")
    p.add_argument("--out", required=True, help="marker JSON to write")
    p.set_defaults(func=prepare_command)
