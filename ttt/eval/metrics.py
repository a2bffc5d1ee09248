"""Scores: teacher-forced negative log-likelihood / perplexity (in streaming blocks, bounded
memory) and word error rate (Whisper's English normaliser + jiwer).

Perplexity is exp(mean NLL in nats) — not 2**loss, the moshi-finetune slip.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from moshi.models.lm_utils import _delay_sequence
from moshi.modules.transformer import RingKVCache

# Text scores live in ttt.asr.words (no torch: the ASR job imports them); re-exported here.
from ttt.asr.words import normalize, word_errors


@dataclass
class TokenNLL:
    """Per-token NLL in nats on the original (undelayed) time axis; NaN where moshi's own loss
    masks are false (the delay tail and zero tokens)."""

    text: np.ndarray   # [B, T]
    audio: np.ndarray  # [B, dep_q, T]
    # text logits [B, 1, head, text_card] of the first ``head`` steps (delayed axis, on the
    # device) when asked for: the A/B twin's pre-update comparison, without a pass of its own
    head_text_logits: torch.Tensor | None = None


@torch.no_grad()
def teacher_forced_nll(lm, codes: torch.Tensor, block: int = 256, on_block=None,
                       head: int = 0) -> TokenNLL:
    """What ``lm(codes)`` scores, computed by streaming ``forward_text`` over blocks of ``block``
    steps (TTT layers update exactly as in one pass), so a 60-minute input runs in memory bounded
    by the block, not the length. codes [B, K, T] as for ``lm(codes)``.

    The per-token NLL stays on the device until the end (one transfer, no host sync per block):
    ``on_block(end_step, block_nll)`` runs after each block with that block's raw cross-entropy
    [B, 1 + dep_q, steps] on the device (delayed axis, unmasked: a divergence check needs only
    ``isfinite``); returning True stops early, leaving NaN for the steps not reached.
    ``head`` > 0 keeps the text logits of the first ``head`` steps (``head_text_logits``; at most
    the first block's).

    The main transformer's KV rings hold ``min(context + block − 1, T)`` slots (the attention
    mask still limits every query to moshi's ``context``): with rings of exactly ``context``
    slots, as upstream allocates them, a block would overwrite keys its own earlier queries still
    need; and a ring longer than the input would only add masked keys every query reads."""
    B, K, T = codes.shape
    delays = lm.delays
    head_logits = None
    initial = lm._get_initial_token().expand(B, -1, -1)
    delayed = torch.cat([initial, _delay_sequence(delays, codes, initial)], dim=2)  # [B, K, T+1]
    streams = [0] + [q + lm.audio_offset for q in range(lm.dep_q)]
    # raw[:, i, s]: NLL of delayed position s predicting delayed[:, streams[i], s + 1]
    raw = torch.full((B, len(streams), T), float("nan"), device=codes.device)
    with lm.streaming(B):
        size_kv_rings(lm.transformer, block, T)
        for a in range(0, T, block):
            b = min(a + block, T)
            out, text_logits = lm.forward_text(delayed[:, :, a:b])
            if a == 0 and head:
                head_logits = text_logits[:, :, :head].clone()
            logits = lm.forward_depformer_training(delayed[:, :, a + 1:b + 1], out)
            # the initial tokens (ids = card) are targets only where t < 0: clamped, then masked
            target = delayed[:, streams, a + 1:b + 1].clamp_min(0)
            nll = raw[:, :, a:b]
            # classes last and contiguous (a log-softmax over a strided class axis cost ≈ 50 ms
            # per 2048-frame block at 7B on an H100)
            nll[:, 0] = _token_ce(text_logits[:, 0], target[:, 0])
            nll[:, 1:] = _token_ce(logits, target[:, 1:])
            if on_block is not None and on_block(b, nll):
                break
    # back to the original time axis: codes step t = s − delay_k; moshi masks zero tokens
    out = torch.full_like(raw, float("nan"))
    for i, k in enumerate(streams):
        d = delays[k]
        if d < T:
            out[:, i, :T - d] = raw[:, i, d:]
    out = torch.where(codes[:, streams] != lm.zero_token_id, out, torch.nan).cpu().numpy()
    return TokenNLL(text=out[:, 0].astype(np.float64), audio=out[:, 1:].astype(np.float64),
                    head_text_logits=head_logits)


# Rows of logits per cross-entropy call: the fp32 copy and its log-softmax exist for these rows
# only (at 7B a 1,500-frame block's text logits took 2 × 192 MB at once; now 2 × 65 MB).
CE_ROWS = 512


def _token_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy in fp32, logits [..., V] → [...] (targets clamped into range),
    ``CE_ROWS`` rows at a time (each row's value does not depend on the others)."""
    V = logits.shape[-1]
    rows, labels = logits.reshape(-1, V), target.reshape(-1).clamp_max(V - 1)
    flat = torch.empty(rows.shape[0], device=rows.device, dtype=torch.float32)
    for a in range(0, rows.shape[0], CE_ROWS):
        flat[a:a + CE_ROWS] = F.cross_entropy(rows[a:a + CE_ROWS].float(), labels[a:a + CE_ROWS],
                                              reduction="none")
    return flat.view(target.shape)


def size_kv_rings(transformer: torch.nn.Module, block: int, length: int) -> None:
    """Give every streaming self-attention of ``transformer`` an empty ring KV cache of
    ``min(capacity + block − 1, length)`` slots (call right after entering streaming, before the
    first token)."""
    for module in transformer.modules():
        state = getattr(module, "_streaming_state", None)
        kv = getattr(state, "kv_cache", None)
        if isinstance(kv, RingKVCache):
            _, batch, heads, capacity, dim = kv.cache.shape
            want = min(capacity + block - 1, length)
            if want != capacity:
                mask, device, dtype = kv.respect_exec_mask, kv.cache.device, kv.cache.dtype
                # the entry ring freed before its replacement is allocated: the two never count
                # together in the peak (0.8 GB at 7B for a 1,500-frame regression cell)
                state.kv_cache = kv = None
                state.kv_cache = RingKVCache(batch, heads, dim, want, respect_exec_mask=mask,
                                             device=device, dtype=dtype)


def perplexity(nll: np.ndarray) -> float | None:
    """exp(mean NLL) over the valid (non-NaN) tokens; None when there are none."""
    valid = nll[~np.isnan(nll)]
    return float(math.exp(valid.mean())) if valid.size else None


def sliding_perplexity(nll: np.ndarray, window: int, hop: int | None = None
                       ) -> list[tuple[int, float | None]]:
    """(start step, perplexity) over windows of ``window`` steps along the last axis."""
    hop = hop or window
    T = nll.shape[-1]
    return [(start, perplexity(nll[..., start:start + window]))
            for start in range(0, max(T - window, 0) + 1, hop)]
