"""Scores: teacher-forced negative log-likelihood / perplexity (in streaming blocks, bounded
memory) and word error rate (Whisper's English normaliser + jiwer).

Perplexity is exp(mean NLL in nats) — not 2**loss, the moshi-finetune slip.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from moshi.models.lm_utils import _delay_sequence
from moshi.modules.transformer import RingKVCache


@dataclass
class TokenNLL:
    """Per-token NLL in nats on the original (undelayed) time axis; NaN where moshi's own loss
    masks are false (the delay tail and zero tokens)."""

    text: np.ndarray   # [B, T]
    audio: np.ndarray  # [B, dep_q, T]


@torch.no_grad()
def teacher_forced_nll(lm, codes: torch.Tensor, block: int = 256, on_block=None) -> TokenNLL:
    """What ``lm(codes)`` scores, computed by streaming ``forward_text`` over blocks of ``block``
    steps (TTT layers update exactly as in one pass), so a 60-minute input runs in memory bounded
    by the block, not the length. codes [B, K, T] as for ``lm(codes)``.

    ``on_block(end_step, nll_so_far)`` runs after each block (telemetry, progress, divergence
    checks); returning True stops early, leaving NaN for the steps not reached.

    The main transformer's KV rings get ``block − 1`` extra slots (the attention mask still
    limits every query to moshi's ``context``): with rings of exactly ``context`` slots, as
    upstream allocates them, a block overwrites keys its own earlier queries still need, and the
    scores would depend on the block size."""
    B, K, T = codes.shape
    delays = lm.delays
    initial = lm._get_initial_token().expand(B, -1, -1)
    delayed = torch.cat([initial, _delay_sequence(delays, codes, initial)], dim=2)  # [B, K, T+1]
    text = np.full((B, T), np.nan)
    audio = np.full((B, lm.dep_q, T), np.nan)
    zero = lm.zero_token_id
    with lm.streaming(B):
        widen_kv_rings(lm.transformer, block - 1)
        for a in range(0, T, block):
            b = min(a + block, T)
            out, text_logits = lm.forward_text(delayed[:, :, a:b])
            logits = lm.forward_depformer_training(delayed[:, :, a + 1:b + 1], out)
            streams = [(0, text_logits[:, 0], text, None)] + [
                (q + lm.audio_offset, logits[:, q], audio, q) for q in range(lm.dep_q)]
            for k, lg, dest, q in streams:
                # delayed position s predicts delayed[:, k, s + 1] = codes[:, k, s − delay_k]
                s = torch.arange(a, b, device=codes.device)
                t = s - delays[k]
                ok = t >= 0
                if not bool(ok.any()):
                    continue
                target = delayed[:, k, a + 1:b + 1][:, ok]
                nll = F.cross_entropy(lg[:, ok].float().transpose(1, 2), target.clamp_min(0),
                                      reduction="none")
                nll = torch.where(codes[:, k, t[ok]] != zero, nll, torch.nan).cpu().numpy()
                view = dest if q is None else dest[:, q]
                view[:, t[ok].cpu().numpy()] = nll
            if on_block is not None and on_block(b, TokenNLL(text=text, audio=audio)):
                break
    return TokenNLL(text=text, audio=audio)


def widen_kv_rings(transformer: torch.nn.Module, extra: int) -> None:
    """Replace every streaming self-attention's ring KV cache by an empty one ``extra`` slots
    larger (call right after entering streaming, before the first token)."""
    if extra <= 0:
        return
    for module in transformer.modules():
        state = getattr(module, "_streaming_state", None)
        kv = getattr(state, "kv_cache", None)
        if isinstance(kv, RingKVCache):
            _, batch, heads, capacity, dim = kv.cache.shape
            state.kv_cache = RingKVCache(batch, heads, dim, capacity + extra,
                                         respect_exec_mask=kv.respect_exec_mask,
                                         device=kv.cache.device, dtype=kv.cache.dtype)


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


@lru_cache(maxsize=1)
def _normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer
    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    """Whisper's English text normaliser (maintained package ``whisper-normalizer``)."""
    return " ".join(_normalizer()(text).split())


def word_errors(references: list[str], hypotheses: list[str]) -> dict:
    """WER over pairs after normalisation: ``wer``, ``substitutions``, ``deletions``,
    ``insertions``, ``ref_words``. Pairs whose normalised reference is empty count their
    hypothesis words as insertions (jiwer's ratio is undefined there); ``wer`` is None when no
    reference word exists at all."""
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"wer: {len(references)} references but {len(hypotheses)} hypotheses")
    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
    counts = dict(substitutions=0, deletions=0, insertions=0, ref_words=0)
    scored = [(r, h) for r, h in zip(refs, hyps) if r]
    for r, h in zip(refs, hyps):
        if not r:
            counts["insertions"] += len(h.split())
    if scored:
        out = jiwer.process_words([r for r, _ in scored], [h for _, h in scored])
        counts["substitutions"] += out.substitutions
        counts["deletions"] += out.deletions
        counts["insertions"] += out.insertions
        counts["ref_words"] = out.substitutions + out.deletions + out.hits
    errors = counts["substitutions"] + counts["deletions"] + counts["insertions"]
    return {"wer": errors / counts["ref_words"] if counts["ref_words"] else None, **counts}
