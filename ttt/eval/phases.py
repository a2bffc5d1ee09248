"""What a cell measures about its own cost: wall seconds per phase and peak memory (metrics.json
``timing`` and ``memory``)."""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch


class Phases:
    """Wall seconds per phase of a cell (metrics.json ``timing``): ``load`` (checkpoint),
    ``prepare`` (data, Mimi codes, warm-up), ``run`` (the measured passes and the checks beside
    them), ``write`` (tables, plots, audio). CUDA is synchronised at every boundary so queued
    work is counted where it was issued."""

    NAMES = ("load", "prepare", "run", "write")

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.totals = dict.fromkeys(self.NAMES, 0.0)

    @contextmanager
    def __call__(self, name: str):
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.totals[name] += time.perf_counter() - start

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def seconds(self) -> dict:
        return {f"{name}_s": round(value, 4) for name, value in self.totals.items()}


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str) -> int | None:
    """CUDA peak allocation since the last reset, or the process's peak RSS on CPU (which cannot
    be reset: there the run peak includes the load)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except ImportError:  # pragma: no cover
        return None
