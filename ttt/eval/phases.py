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


class Resident:
    """What a block kept resident on the CPU, from ``/proc/self/status``: ``rss_delta`` (VmRSS
    after − before) and ``anon_peak`` (the highest RssAnon seen, sampled every 5 ms; anonymous
    pages only). ru_maxrss, the CPU figure before, also counts the file pages of a checkpoint
    that safetensors maps while copying it, and the imports: 2.1× the weights of a 1.7B bf16
    checkpoint whose weights exist once (anonymous peak 3.87 GB). None where /proc is absent."""

    INTERVAL_S = 0.005

    def __enter__(self) -> "Resident":
        import threading
        self.start = _status_bytes()
        self.anon_peak = self.start.get("RssAnon") if self.start else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if self.start:
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.INTERVAL_S):
            self._observe()

    def _observe(self) -> None:
        now = _status_bytes().get("RssAnon")
        if now is not None and (self.anon_peak is None or now > self.anon_peak):
            self.anon_peak = now

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._observe()
        end = _status_bytes()
        self.rss_delta = (end["VmRSS"] - self.start["VmRSS"]) if self.start and end else None


def _status_bytes() -> dict[str, int]:
    """VmRSS and RssAnon of this process in bytes ({} where /proc is absent)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon"):
                    out[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return out
