"""Mimi codes of audio of any length in bounded memory.

Why: one ``mimi.encode`` call keeps the activations of the whole input alive, about 25 MB per
second of audio and channel on CPU in fp32 (docs/checkpoints-and-data.md):
an hour of a stereo conversation would need ~180 GB. Audio up to
``ONE_SHOT_MAX_S`` is still encoded in one call (its codes, and the cache files of earlier runs,
stay bitwise as they were); longer audio goes through Mimi in chunks of ``CHUNK_FRAMES`` frames in
upstream streaming mode, whose convolutions carry their history from chunk to chunk.

Upstream's streaming attention keeps only ``context`` keys (a ring of 250 steps): right for one
frame at a time, wrong for a chunk of many frames (the chunk's first queries lose keys the
one-shot path sees). So each encoder attention's ring is widened to ``context`` + one chunk; the
attention mask still limits every query to ``context`` keys, so a streamed encode computes what
the one-shot encode computes, up to float summation order (measured in the README).
"""
from __future__ import annotations

import math

import torch

ONE_SHOT_MAX_S = 60.0  # longer audio is streamed (the default config's longest input is 60 s)
CHUNK_FRAMES = 125  # 10 s at 12.5 Hz: ~0.5 GB of activations for a stereo input on CPU in fp32


def chunk_frames(seconds: float) -> int | None:
    """Frames per streamed chunk for audio of ``seconds``, or None: encoded in one call."""
    return None if seconds <= ONE_SHOT_MAX_S else CHUNK_FRAMES


def encode(mimi, audio: torch.Tensor, frames_per_chunk: int | None) -> torch.Tensor:
    """[B, n_q, frames] codes of ``audio`` [B, samples] (each row one channel): one call when
    ``frames_per_chunk`` is None, else streamed. Both pad the last partial frame with zeros
    (upstream's one-shot rule), so both give ceil(samples / frame_size) frames."""
    x = audio[:, None].to(next(mimi.parameters()).device)
    if frames_per_chunk is None:
        return mimi.encode(x)
    return _encode_streamed(mimi, x, frames_per_chunk * mimi.frame_size)


def _encode_streamed(mimi, x: torch.Tensor, chunk: int) -> torch.Tensor:
    from moshi.modules.transformer import RingKVCache, StreamingMultiheadAttention
    from moshi.utils.compile import no_cuda_graph

    batch, _, samples = x.shape
    steps = chunk // mimi.frame_size * round(mimi.encoder_frame_rate / mimi.frame_rate)
    codes = []
    with no_cuda_graph(), mimi.streaming(batch):
        for module in mimi.encoder_transformer.modules():
            if isinstance(module, StreamingMultiheadAttention) and module.context is not None:
                ring = module._streaming_state.kv_cache.cache  # [2, B, heads, context, head dim]
                module._streaming_state.kv_cache = RingKVCache(
                    batch, ring.shape[2], ring.shape[4], module.context + steps,
                    device=ring.device, dtype=ring.dtype)
        for start in range(0, samples, chunk):
            part = x[..., start:start + chunk]
            if part.shape[-1] % mimi.frame_size:  # the last partial frame: zeros, as one call pads
                part = torch.nn.functional.pad(
                    part, (0, math.ceil(part.shape[-1] / mimi.frame_size) * mimi.frame_size - part.shape[-1]))
            codes.append(mimi.encode(part))
    return torch.cat(codes, dim=-1)
