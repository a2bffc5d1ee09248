"""TTT on against TTT off, conversation by conversation: the one statistic behind the effect
verdicts (``ttt.report.verdicts``) and the positive control's table (``ttt.control.gain``).

Conversations, not windows, are resampled. Windows of one conversation share its speakers, its
content and the fast weights it built up, so their spread says nothing about the next
conversation; a confidence interval over them generalises to nothing (issue 23). Positions are
split at the attention context: before it, the context still holds the whole conversation and a
memory beyond attention has nothing to add; beyond it, recall of what left the window is what
TTT is for.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REGIONS = ("all", "before_context", "beyond_context")

HELPS, NO_DIFFERENCE, HURTS, NO_EFFECT = "helps", "no significant difference", "hurts", "no effect"


def region_slice(region: str, length: int, context: int) -> slice:
    """Positions of ``region`` in a conversation of ``length`` frames under an attention context
    of ``context`` frames."""
    if region == "all":
        return slice(0, length)
    if region == "before_context":
        return slice(0, min(context, length))
    if region == "beyond_context":
        return slice(min(context, length), length)
    raise ValueError(f"unknown region {region!r}; regions are {REGIONS}")


def pooled_nll(nlls: list[np.ndarray], region: str, context: int) -> tuple[np.ndarray, np.ndarray]:
    """(sum of NLL, count of scored tokens) per conversation over ``region``. Each array is
    [..., T] with NaN where nothing is scored (moshi's masks, the acoustic delay)."""
    sums, counts = [], []
    for nll in nlls:
        part = np.asarray(nll, dtype=np.float64)[..., region_slice(region, nll.shape[-1], context)]
        valid = ~np.isnan(part)
        sums.append(part[valid].sum())
        counts.append(valid.sum())
    return np.array(sums, dtype=np.float64), np.array(counts, dtype=np.float64)


@dataclass(frozen=True)
class PairedEffect:
    """TTT on vs off over a set of conversations: perplexities (or rates) pooled over their tokens,
    the gain ``ppl_off − ppl_on`` and ``rel_gain = 1 − ppl_on/ppl_off`` (positive: TTT helps),
    and their
    percentile-bootstrap intervals from resampling whole conversations. ``draws`` holds the
    bootstrap replicates of ``gain`` (a difference of gains between groups needs them)."""

    conversations: int
    tokens: int
    ppl_on: float
    ppl_off: float
    gain: float
    rel_gain: float
    ci_gain: tuple[float, float]
    ci_rel_gain: tuple[float, float]
    confidence: float
    draws: np.ndarray

    def answer(self, min_conversations: int = 2) -> str | None:
        """helps / hurts when the interval of the gain excludes 0 on that side, else "no
        significant difference"; None when fewer than ``min_conversations`` conversations (one
        conversation's interval would be a window interval in disguise)."""
        if self.conversations < min_conversations or not self.tokens:
            return None
        lo, hi = self.ci_rel_gain
        return HELPS if lo > 0 else HURTS if hi < 0 else NO_DIFFERENCE

    def describe(self) -> str:
        lo, hi = self.ci_rel_gain
        return (f"perplexity on {self.ppl_on:.4g} vs off {self.ppl_off:.4g}, gain "
                f"{self.rel_gain:+.2%} [{lo:+.2%}, {hi:+.2%}] {self.confidence:.0%} CI over "
                f"{self.conversations} conversation(s), {self.tokens} tokens")


def paired_effect(on: tuple[np.ndarray, np.ndarray], off: tuple[np.ndarray, np.ndarray], *,
                  confidence: float = 0.95, resamples: int = 2000,
                  rng: np.random.Generator | int = 0, transform=np.exp) -> PairedEffect:
    """``on``/``off``: (NLL sums, token counts) per conversation, the same conversations in the
    same order (``pooled_nll``). Every bootstrap replicate draws conversations with replacement
    and pools their tokens, as the point estimate does. ``transform`` maps a pooled mean to the
    reported value: ``exp`` gives perplexity; identity gives a mean rate (WER: errors, words)."""
    son, con = (np.asarray(x, dtype=np.float64) for x in on)
    soff, coff = (np.asarray(x, dtype=np.float64) for x in off)
    if not (len(son) == len(con) == len(soff) == len(coff)):
        raise ValueError("on and off must hold the same conversations")
    n = len(son)
    tokens = int(con.sum())
    if n == 0 or tokens == 0 or coff.sum() == 0:
        nan = float("nan")
        return PairedEffect(n, tokens, nan, nan, nan, nan, (nan, nan), (nan, nan), confidence,
                            np.array([]))
    ppl_on = float(transform(son.sum() / con.sum()))
    ppl_off = float(transform(soff.sum() / coff.sum()))
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    pick = rng.integers(0, n, (resamples, n))
    with np.errstate(invalid="ignore", divide="ignore"):
        boot_on = transform(son[pick].sum(1) / con[pick].sum(1))
        boot_off = transform(soff[pick].sum(1) / coff[pick].sum(1))
    gain, rel = boot_off - boot_on, 1 - boot_on / boot_off
    alpha = (1 - confidence) / 2
    ci = lambda d: tuple(float(x) for x in np.nanquantile(d, [alpha, 1 - alpha]))  # noqa: E731
    return PairedEffect(n, tokens, ppl_on, ppl_off, ppl_off - ppl_on, 1 - ppl_on / ppl_off,
                        ci(gain), ci(rel), confidence, gain)


def difference_ci(a: PairedEffect, b: PairedEffect, confidence: float = 0.95) -> tuple[float, float]:
    """Interval of ``a.gain − b.gain`` from their independent bootstrap replicates (two disjoint
    groups of conversations, e.g. recurrent minus plain)."""
    alpha = (1 - confidence) / 2
    d = a.draws - b.draws
    return tuple(float(x) for x in np.nanquantile(d, [alpha, 1 - alpha]))
