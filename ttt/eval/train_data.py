"""What training reads: the base checkpoint's tokenizer and Mimi, the conversations' codes
(Mimi codes cached by content, as cells cache them) and random batches of them."""
from __future__ import annotations

from pathlib import Path

import torch

from ttt.base.identity import file_digest
from ttt.eval.data import conversation_codes, read_manifest
from ttt.moshi.checkpoints import resolve_checkpoint
from ttt.moshi.model import load_mimi


class TrainBase:
    """Tokenizer and Mimi of the base checkpoint; Mimi (385 MB for the random one) is loaded only
    when a conversation's codes are not cached yet."""

    def __init__(self, spec: str, directory: Path, device: str, mimi=None) -> None:
        import sentencepiece
        self.spec, self.sources, self.device, self._mimi = spec, resolve_checkpoint(directory), device, mimi
        self.tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(self.sources.tokenizer))
        self.mimi_id = file_digest(self.sources.mimi)

    @property
    def mimi(self):
        if self._mimi is None:
            self._mimi = load_mimi(self.sources, self.device)
        return self._mimi


def load_codes(manifest: str, base: TrainBase, cache_dir: str) -> list[torch.Tensor]:
    """[17, T] codes of every conversation of a manifest (Mimi codes cached by content)."""
    items = read_manifest(manifest)
    if any(i.reference is not None for i in items):
        raise ValueError(f"{manifest}: training needs stereo conversations with alignments")
    cache = Path(cache_dir) / "codes"
    mimi = _LazyMimi(base)
    return [conversation_codes(mimi, base.tokenizer, item, cache, base.mimi_id)[0]
            for item in items]


class _LazyMimi:
    """Stands for the base's Mimi; loads it on first use (a cached conversation never does)."""

    def __init__(self, base: TrainBase) -> None:
        self._base = base
        self.num_codebooks = base.sources.num_codebooks  # part of the codes cache key

    def __getattr__(self, name):
        return getattr(self._base.mimi, name)


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
