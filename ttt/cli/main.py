"""Command line: python -m ttt COMMAND (or the installed ttt script)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ttt import __version__
from ttt.cli.common import bad_input
from ttt.cli import asr, cost, panel, report, run_cell, selfcheck, speech, train, workflow
from ttt.cli.common import PlainHelp, example

# One module per command (or per small family of them), each registering its own parser. torch
# and moshi are imported inside the commands that compute: `--help` and `submit` (the Snakemake
# driver, one per cell in flight on a login node) stay light (tests/test_layers.py).
DESCRIPTION = ("Test-time training (In-Place TTT) for Kyutai's Moshi: run one cell of the test matrix, "
               "train, judge and compare results. make run runs every cell through the Snakemake "
               "workflow, which calls these commands; each command's --help shows its options and an "
               "example. Documentation: README.md and docs/.")
EPILOG = example("python -m ttt run-cell --config examples/cells/teacher_forced_tiny.yaml --out results/cells/my-cell",
                 "python -m ttt verdicts --results results")


def _plain(parser: argparse.ArgumentParser) -> None:
    """Every (sub)command's --help through :class:`PlainHelp`."""
    parser.formatter_class = PlainHelp
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _plain(sub)


def build_parser(prog: str = "python -m ttt") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"ttt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run_cell.add_parser(sub)
    train.add_parser(sub)
    workflow.add_parsers(sub)   # submit, prepare
    report.add_parsers(sub)     # aggregate, verdicts, compare
    asr.add_parser(sub)
    selfcheck.add_parser(sub)
    panel.add_parser(sub)
    speech.add_parser(sub)
    cost.add_parser(sub)        # GPU cost of a config's matrix
    _plain(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m ttt`` and the ``ttt`` console script (pyproject ``[project.scripts]``)."""
    prog = "ttt" if Path(sys.argv[0]).name == "ttt" else "python -m ttt"
    args = build_parser(prog).parse_args(argv)
    try:
        return args.func(args)
    except OSError as exc:  # the environment: a full or read-only disk, a folder gone
        return bad_input(describe_os_error(exc))


def describe_os_error(exc: OSError) -> str:
    """One line: the file, then what the system said (``[Errno 28] No space left on device``
    without the traceback). Writers are atomic (ttt/base/files.py): nothing half-written."""
    where = exc.filename if exc.filename is not None else ""
    what = exc.strerror or str(exc) or type(exc).__name__
    return f"{where}: {what}" if where else what
