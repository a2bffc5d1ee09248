"""Held-out losses logged while training: TTT as trained and its TTT-off twin, over whole
conversations and over a known repeated span, so the log holds the TTT gain against training
steps beside validation loss (a curve, not one point), and the checkpoint selection criterion.

With a ``recurrence`` spec, every other held-out conversation (odd positions) gets one exact
repeat drawn by a generator of fixed seed ``EVAL_REPEAT_SEED``: every run, seed and variant of a
comparison is validated on the same spliced conversations.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from ttt.data.recurrence import add_repeats

EVAL_REPEAT_SEED = 20_241


def eval_items(codes: list[torch.Tensor], spec) -> list[tuple[torch.Tensor, tuple | None]]:
    """(codes [17, T], repeated span or None) per held-out conversation."""
    g = torch.Generator().manual_seed(EVAL_REPEAT_SEED)
    items = []
    for i, c in enumerate(codes):
        if spec is not None and i % 2 == 1:
            spliced, spans = add_repeats(c[None], {**spec, "fraction": 1.0}, g)
            items.append((spliced[0], spans[0]))
        else:
            items.append((c, None))
    return items


def selection_loss(row: dict, text_weight: float, audio_weight: float) -> float:
    """The declared checkpoint criterion: held-out loss as trained (TTT on), weighted as the
    training loss is."""
    return text_weight * row["eval_text_loss"] + audio_weight * row["eval_audio_loss"]


@torch.no_grad()
def evaluate_loss(lm, items: list, device: str) -> dict:
    """Mean held-out text/audio NLL per condition (``on``; ``off`` for a model with TTT layers),
    whole conversations (``eval_*``) and repeated spans (``eval_copy_*``), and the TTT gains
    off − on (nats/token)."""
    was_training = lm.training
    lm.eval()
    row = {}
    try:
        for name, condition in twin_conditions(lm).items():
            suffix = "" if name == "on" else "_off"
            whole, copy = [], []
            with condition():
                for codes, span in items:
                    text, audio = token_losses(lm, codes[None].to(device))
                    whole.append(span_means(text[0], audio[0], None))
                    if span is not None:
                        copy.append(span_means(text[0], audio[0], span))
            row[f"eval_text_loss{suffix}"] = float(np.mean([t for t, _ in whole]))
            row[f"eval_audio_loss{suffix}"] = float(np.mean([a for _, a in whole]))
            if copy:
                row[f"eval_copy_text_loss{suffix}"] = float(np.nanmean([t for t, _ in copy]))
                row[f"eval_copy_audio_loss{suffix}"] = float(np.nanmean([a for _, a in copy]))
    finally:
        lm.train(was_training)
    for key in ("text_loss", "audio_loss", "copy_text_loss", "copy_audio_loss"):
        if f"eval_{key}_off" in row:
            row[f"eval_ttt_gain_{key.replace('_loss', '')}"] = row[f"eval_{key}_off"] - row[f"eval_{key}"]
    return {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}


@torch.no_grad()
def token_losses(lm, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position NLL of ``lm(codes)`` [B, 17, T]: text [B, T] and Moshi's audio [B, K, T],
    NaN where moshi's masks are false (fp32 at least)."""
    out = lm(codes)
    text = -torch.log_softmax(out.text_logits[:, 0].float(), -1).gather(
        -1, codes[:, 0, :, None].clamp_min(0))[..., 0]
    target = codes[:, lm.audio_offset:lm.audio_offset + lm.dep_q]
    audio = -torch.log_softmax(out.logits.float(), -1).gather(
        -1, target[..., None].clamp_min(0))[..., 0]
    nan = torch.tensor(float("nan"), device=text.device)
    return torch.where(out.text_mask[:, 0], text, nan), torch.where(out.mask, audio, nan)


def span_means(text: torch.Tensor, audio: torch.Tensor, span) -> tuple[float, float]:
    """Mean valid NLL of one row's text [T] and audio [K, T] over ``span`` (all frames: None)."""
    a, b = span if span is not None else (0, text.shape[-1])
    return float(text[a:b].nanmean()), float(audio[:, a:b].nanmean())


def twin_conditions(lm) -> dict:
    """{"on": context} and, for a model with TTT layers, {"off": its TTT-off twin's context}."""
    from ttt.moshi.surgery import ttt_disabled, ttt_layers

    out = {"on": contextlib.nullcontext}
    if ttt_layers(lm):
        out["off"] = lambda: ttt_disabled(lm)
    return out
