"""One monitor for every streamed pass, whatever drives it (teacher-forced blocks, generated
steps): at each observation it times the work since the previous one, reads the fast-weight
telemetry in one device → host transfer, records the attention-vs-TTT diagnostics, decides
divergence (a non-finite loss or telemetry value, clip saturation) and logs progress with the
``TTT-TELEMETRY`` / ``TTT-DIAGNOSTICS`` lines (docs/checkpoints-and-data.md).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ttt.session.diagnostics import Diagnostics, diagnostics_line
from ttt.session.telemetry import chunk_rows, chunk_telemetry, telemetry_line, ttt_state


@dataclass(frozen=True)
class MonitorSettings:
    """How one kind of pass is watched, the same for every input of a cell. Cadences are in
    steps; a block that crosses a multiple of one counts once: telemetry per TTT layer every
    ``chunk`` (an update; None: TTT off), a diagnostics record every ``diagnostics_every`` (0:
    none), a progress line every ``log_every``, at the last step and on divergence.
    ``clip_saturation``: diverged once a layer clipped at least this fraction of ≥ 4 updates.
    ``record_last``: telemetry and diagnostics at the last step too (a teacher-forced pass
    records its final, partial block; a generated stream only whole chunks). ``per_chunk``: one
    telemetry row per chunk update from the layer's own log where it keeps one (the In-Place
    layer: a block of several chunks gives a row each), else one, the state at the block's end
    (a generated stream reads the state)."""

    chunk: int | None
    log_every: int
    frame_rate: float
    diagnostics_every: int = 0
    clip_saturation: float | None = None
    record_last: bool = True
    per_chunk: bool = True


@dataclass(frozen=True)
class MonitoredInput:
    """The one input watched: ``total`` steps; rows are ``row_fields`` (the caller's item) +
    ``step`` (``offset`` + steps into this input) + ``layer``; progress goes to ``log``, whose
    telemetry and diagnostics lines carry ``log_fields`` (cell, item); ``start``: the step a
    resumed stream continues from."""

    total: int
    log: Callable[[str], None]
    offset: int = 0
    start: int = 0
    row_fields: dict = field(default_factory=dict)
    log_fields: dict = field(default_factory=dict)


@dataclass
class MonitorSinks:
    """What the monitor appends to: telemetry rows, diagnostics rows, each block's milliseconds.
    They may be the caller's own lists (a snapshot saves them; a cell shares them across inputs)."""

    telemetry: list = field(default_factory=list)
    diagnostics: list = field(default_factory=list)
    block_ms: list = field(default_factory=list)


class StreamMonitor:
    """Watches one input streamed through ``lm``: call :meth:`observe` after each block of steps
    (a teacher-forced block, or one generated step); it returns whether the stream diverged.
    ``diagnostics``: the recorder whose hooks the caller owns (used when the settings ask for
    diagnostics)."""

    def __init__(self, lm, settings: MonitorSettings, watched: MonitoredInput,
                 sinks: MonitorSinks | None = None, diagnostics: Diagnostics | None = None) -> None:
        self.lm, self.settings, self.watched = lm, settings, watched
        self.sinks = MonitorSinks() if sinks is None else sinks
        self.chunk, self.total = settings.chunk, watched.total
        self.diag = diagnostics if settings.diagnostics_every else None
        self.step = watched.start
        self.block_steps: list[int] = []
        self.clip_events: dict[int, float] = {}
        self.diverged = False
        self.cuda = any(p.is_cuda for p in lm.parameters())
        self.restart()

    def restart(self) -> None:
        """Start timing the next block here (the queued device work is done first)."""
        if self.cuda:
            torch.cuda.synchronize()
        self.clock = time.perf_counter()

    def observe(self, end: int, loss: torch.Tensor | None = None) -> bool:
        """The block ending at step ``end`` (steps into this input) is done; ``loss``: its
        per-token losses, checked for finiteness in the same transfer as the telemetry."""
        if self.cuda:
            torch.cuda.synchronize()
        self.sinks.block_ms.append((time.perf_counter() - self.clock) * 1e3)
        self.block_steps.append(end - self.step)
        s, w = self.settings, self.watched
        last = s.record_last and end == self.total
        states = None
        if self._crossed(self.chunk, end) or last:
            states = ttt_state(self.lm, copy=False)  # read before the next forward: no copies
        self._read(end, loss, states or {})
        if self.diag is not None and (self._crossed(s.diagnostics_every, end) or last):
            record = self.diag.record()
            self.sinks.diagnostics.extend({**w.row_fields, "step": w.offset + end, "layer": i,
                                           **r} for i, r in record.items())
            w.log(diagnostics_line(record, w.offset + end, **w.log_fields))
        updates = end // self.chunk if self.chunk else 0
        if s.clip_saturation is not None and updates >= 4 and any(
                c >= s.clip_saturation * updates for c in self.clip_events.values()):
            self.diverged = True
        if self._crossed(s.log_every, end) or end == self.total or self.diverged:
            self._log_progress(end, states)
        self.step = end
        self.restart()
        return self.diverged

    def _crossed(self, every: int | None, end: int) -> bool:
        return bool(every) and end // every > self.step // every

    def _read(self, end: int, loss: torch.Tensor | None, states: dict) -> None:
        """One device → host transfer: the loss's finiteness flag, every telemetry value and,
        with ``per_chunk``, the layers' per-chunk records since the last read."""
        chunks = chunk_telemetry(self.lm) if self.settings.per_chunk and states else {}
        flat = [torch.isfinite(loss).all().reshape(1).double()] if loss is not None else []
        flat += [v[:1].double() for s in states.values() for v in s.values()]
        flat += [c[0].reshape(-1) for c in chunks.values()]
        if not flat:
            return
        values = torch.cat(flat).tolist()
        if loss is not None:
            self.diverged |= values.pop(0) == 0.0
        at, per_chunk = sum(map(len, states.values())), {}
        for layer, c in chunks.items():
            per_chunk[layer] = chunk_rows(values[at:at + c[0].numel()])
            at += c[0].numel()
        at = 0
        for layer, s in states.items():
            block_row = dict(zip(s, values[at:at + len(s)]))
            at += len(s)
            rows = [(int(r["updates"]) * self.chunk, r) for r in per_chunk.get(layer, [])]
            for step, row in rows or [(end, block_row)]:
                row = {**row, **self.watched.row_fields, "step": self.watched.offset + step,
                       "layer": layer}
                self.sinks.telemetry.append(row)
                self.clip_events[layer] = row.get("clip_events", 0)
                if not all(math.isfinite(v) for v in row.values()):
                    self.diverged = True

    def _log_progress(self, end: int, states: dict | None) -> None:
        fr, w = self.settings.frame_rate, self.watched
        w.log(f"step {end}/{self.total} ({end / fr:.0f} s of {self.total / fr:.0f} s)")
        states = ttt_state(self.lm, copy=False) if states is None else states
        if states:
            w.log(telemetry_line(states, w.offset + end, **w.log_fields))

    def per_step_ms(self) -> list[float]:
        """Each observed block's milliseconds per step."""
        return [ms / max(n, 1) for ms, n in zip(self.sinks.block_ms, self.block_steps)]
