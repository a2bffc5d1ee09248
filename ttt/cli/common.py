"""What the commands share: the argument groups several take, the one-line bad-input exit, moshi's
compile switch and commands imported on use. Nothing here imports torch or moshi at load time:
``--help`` and the Snakemake drivers on a login node stay light (tests/test_layers.py)."""
from __future__ import annotations

import argparse
import importlib
import sys
from contextlib import nullcontext

BAD_INPUT = 2  # docs/reliability.md: one line naming the file or key, before heavy work


def bad_input(exc: BaseException, stdout: bool = False) -> int:
    """Print ``error: <exc>`` (stderr, or stdout where the command always printed there) → 2."""
    print(f"error: {exc}", file=None if stdout else sys.stderr)
    return BAD_INPUT


def no_compile(on: bool = True):
    """moshi's compile off (a CPU inductor compile costs more than the work it speeds up)."""
    if not on:
        return nullcontext()
    from moshi.utils.compile import no_compile as upstream
    return upstream()


class PlainHelp(argparse.HelpFormatter):
    """``--help`` as plain text: paragraphs (blank-line separated) are filled to the terminal,
    lines indented by two spaces (the examples) are kept as written, so a command can be copied."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in text.split("\n\n"):
            lines = para.splitlines()
            verbatim = [i for i, line in enumerate(lines) if line.startswith("  ")]
            head = " ".join(line.strip() for line in lines[:verbatim[0] if verbatim else None])
            filled = [super()._fill_text(head, width, indent)] if head else []
            out.append("\n".join(filled + [indent + lines[i] for i in verbatim]))
        return "\n\n".join(out)


def example(*commands: str) -> str:
    """An epilog showing ``commands``, one per line, ready to copy."""
    return ("example:\n" if len(commands) == 1 else "examples:\n") + "\n".join(f"  {c}" for c in commands)


def add_config_out_device(parser: argparse.ArgumentParser, config_help: str, out_help: str) -> None:
    """``--config``, ``--out`` and the ``--device`` override of a command that runs a config."""
    parser.add_argument("--config", required=True, help=config_help)
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--device", default=None, help="override the config's device (cpu, cuda)")


def with_device(cfg, device: str | None):
    """The config with ``--device`` in place of its own (validated again), or as it is."""
    return type(cfg).from_dict({**cfg.to_dict(), "device": device}) if device else cfg


def command(module: str, name: str):
    """``ttt.<module>.<name>`` as a command, imported only when it runs."""
    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(f"ttt.{module}"), name)(args)
    return run
