"""What the commands share: the argument groups several take, the one-line bad-input exit, moshi's
compile switch and commands imported on use. Nothing here imports torch or moshi at load time:
``--help`` and the Snakemake drivers on a login node stay light (tests/test_layers.py)."""
from __future__ import annotations

import argparse
import importlib
import sys
from contextlib import nullcontext

BAD_INPUT = 2  # README "Bad input": one line naming the file or key, before heavy work


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
