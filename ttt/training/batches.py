"""Random training batches of conversations' codes (:func:`ttt.data.codes.load_codes`)."""
from __future__ import annotations

import queue
import threading
from typing import Callable

import torch


def sample_batch(codes: list[torch.Tensor], batch_size: int, segment_frames: int | None,
                 g: torch.Generator) -> torch.Tensor:
    """[B, 17, L] from conversations drawn with replacement; random crops of ``segment_frames``
    (all rows cut to the shortest conversation's length when that is shorter)."""
    idx = torch.randint(len(codes), (batch_size,), generator=g).tolist()
    length = min(codes[i].shape[-1] for i in idx)
    if segment_frames is not None:
        length = min(length, segment_frames)
    rows = []
    for i in idx:
        start = int(torch.randint(codes[i].shape[-1] - length + 1, (1,), generator=g))
        rows.append(codes[i][:, start:start + length])
    return torch.stack(rows)


def mixed_batch(codes: list[torch.Tensor], batch_size: int, frames: int | None, block: int,
                g: torch.Generator) -> torch.Tensor:
    """[B, 17, L] rows each made of ``block``-frame spans of random conversations at random
    places, end to end (L: ``frames``, or the shortest conversation). Why: a model that can
    memorise its training conversations predicts their repeats from memory, not from the
    context; spans of a few words, shuffled across conversations, leave recall of the row's own
    earlier frames (``recurrence``) as the only way to predict a repeat."""
    length = min(c.shape[-1] for c in codes)
    if frames is not None:
        length = min(length, frames)
    n = -(-length // block)
    rows = []
    for _ in range(batch_size):
        idx = torch.randint(len(codes), (n,), generator=g).tolist()
        starts = (torch.rand(n, generator=g, dtype=torch.float64) *
                  torch.tensor([codes[i].shape[-1] - block + 1 for i in idx], dtype=torch.float64))
        rows.append(torch.cat([codes[i][:, int(s):int(s) + block]
                               for i, s in zip(idx, starts.tolist())], dim=1)[:, :length])
    return torch.stack(rows)


class Prefetched:
    """Training batches built ahead by a worker thread while the model steps on the one before.

    Why: the control suite's loop built each batch on the CPU before stepping, and the GPU waited
    (83 ms of a ~180-ms step on an H200 machine). The worker alone draws from ``g``. Each batch
    comes with ``g``'s state right after it; a checkpoint saves the state of the batch consumed,
    so a resumed run continues the very stream the one-thread loop drew, however far the worker
    had got."""

    def __init__(self, make: Callable[[torch.Generator], torch.Tensor], g: torch.Generator,
                 ahead: int = 2) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(make, g), daemon=True,
                                        name="training-batches")
        self._thread.start()

    def _fill(self, make, g) -> None:
        while not self._stop.is_set():
            try:
                item = (make(g), g.get_state())
            except BaseException as exc:  # noqa: BLE001 - handed to the training loop, raised there
                item = (exc, None)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[1] is None:
                return

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch and ``g``'s state after it; an error of the batch builder is raised here."""
        batch, state = self._queue.get()
        if state is None:
            raise batch
        return batch, state

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
