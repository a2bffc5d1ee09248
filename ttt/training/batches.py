"""Random training batches of conversations' codes (:func:`ttt.data.codes.load_codes`)."""
from __future__ import annotations

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
