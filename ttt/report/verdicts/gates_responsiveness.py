"""Gates: TTT does something (its fast weights move past the dtype's resolution and its outputs
differ from the TTT-off twin's), is not worse than its twin window by window, and the earlier
chunks' updates help the next chunk (Figure 5). An inert TTT reads "no effect", never "pass"."""
from __future__ import annotations

import math

import numpy as np

from ttt.report.verdicts.effect import effect_of, weights_inert
from ttt.report.tables import number
from ttt.report.verdicts.registry import Scope, check, gate
from ttt.report.verdicts.stats import bootstrap_ci


@gate("responsiveness.effect", section="effect")
def effect(s: Scope):
    """TTT did something: the fast weights moved by more than the compute dtype resolves, and
    the outputs differ from the TTT-off twin's past the first chunk. Fails with "no effect"."""
    out = []
    for c in s.cells:
        if not (c.done and c.ttt_on):
            continue
        works, rel, why = effect_of(c, s.twin(c), s.g["min_output_change"])
        out.append(check(c.name, rel, "≥ dtype resolution", works, why, no_effect=not works))
    return out


def _not_worse(s: Scope, column: str, relative: bool, tol: float):
    """TTT on is not worse than its TTT-off twin, window by window: the mean per-window difference
    (perplexity: relative, on/off − 1; WER: absolute) with a bootstrap CI over windows. Fails
    when the whole CI lies above the tolerance (significantly worse); says "no effect" when on
    equals off in every window (within ``effect.min_output_change``), or when the fast weights
    never moved past the dtype's resolution and on is not significantly worse."""
    g = s.g
    min_change = s.cfg["effect"]["min_output_change"]
    out = []
    for c in s.cells:
        twin = s.twin(c)
        if not (c.done and c.ttt_on and twin is not None):
            continue
        on = {(r.get("item"), number(r.get("start_s"))): r for r in c.table("timeseries.csv")}
        off = {(r.get("item"), number(r.get("start_s"))): r for r in twin.table("timeseries.csv")}
        pairs = [(number(on[k].get(column)), number(off[k].get(column))) for k in on if k in off]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None
                 and math.isfinite(a) and math.isfinite(b) and (b > 0 or not relative)]
        if not pairs:
            continue
        a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        d = a / b - 1 if relative else a - b
        lo, hi = bootstrap_ci(d, g["confidence"], g["resamples"])
        mean = float(d.mean())
        fmt = (lambda x: f"{x:+.2%}") if relative else (lambda x: f"{x:+.4f}")
        what = "relative" if relative else "absolute"
        same = bool(np.all(np.abs(d) <= (min_change if relative else 0.0)))
        inert, rel, dtype, _ = weights_inert(c)
        # weights that never moved: a difference not significantly worse is rounding, no effect
        rounding = inert and lo <= tol and not same
        why = ("no effect: TTT on equals off in every window; " if same else
               f"no effect: fast weights moved ≤ {rel:.3g} (below {dtype} resolution), so on − off "
               "is the TTT path's rounding; " if rounding else "")
        out.append(check(f"{c.name} vs {twin.name}", mean, tol, lo <= tol,
                         why + f"{column} on − off ({what}) {fmt(mean)} [{fmt(lo)}, {fmt(hi)}] "
                         f"{g['confidence']:.0%} CI over {len(d)} windows; mean on "
                         f"{a.mean():.4g} vs off {b.mean():.4g}", no_effect=same or rounding))
    return out


@gate("responsiveness.perplexity_text", section="responsiveness")
def perplexity_text(s: Scope):
    """Text perplexity, TTT on over off − 1 per window, not significantly above ``max_rel_worse``."""
    return _not_worse(s, "text_ppl", True, s.g["max_rel_worse"])


@gate("responsiveness.perplexity_audio", section="responsiveness")
def perplexity_audio(s: Scope):
    """Audio perplexity, TTT on over off − 1 per window, not significantly above ``max_rel_worse``."""
    return _not_worse(s, "audio_ppl", True, s.g["max_rel_worse"])


@gate("responsiveness.wer", section="responsiveness")
def wer(s: Scope):
    """Transcription WER, TTT on − off per window, not significantly above ``max_wer_worse``."""
    return _not_worse(s, "wer", False, s.g["max_wer_worse"])


@gate("health.next_chunk_gain", section="next_chunk_gain")
def next_chunk_gain(s: Scope):
    """Figure 5's health signal: ℓ(W⁽⁰⁾) − ℓ(W⁽ⁱ⁾) on chunk i ≥ 1, the help the earlier chunks'
    updates give this chunk's inner loss (after < before is true by construction for In-Place TTT
    and is not judged). Per layer the mean gain relative to mean |ℓ(W⁽⁰⁾)|; the worst layer must be
    positive: below ``min_rel_gain`` in size, or when the effect test finds TTT inert (a gain of
    weights that move below the dtype's resolution changes nothing), it is "no effect"; negative
    it fails."""
    from ttt.session.telemetry_records import next_chunk_gain as gains_of
    g = s.g
    out = []
    for c in s.cells:
        if not (c.done and c.ttt_on):
            continue
        works, _, why = effect_of(c, s.twin(c), s.cfg["effect"]["min_output_change"])
        gains = gains_of(c.table("telemetry.csv"))
        if not gains:
            out.append(check(c.name, None, "> 0", None,
                             "fewer than 2 chunk updates per input: nothing to judge"))
            continue
        layer = min(gains, key=lambda k: gains[k]["rel"] if math.isfinite(gains[k]["rel"]) else -math.inf)
        worst = gains[layer]
        inert = not works or (math.isfinite(worst["rel"]) and all(
            abs(x["rel"]) < g["min_rel_gain"] for x in gains.values()))
        out.append(check(c.name, worst["rel"], "> 0", worst["rel"] > 0,
                         (f"{why}; " if not works else "no effect: " if inert else "")
                         + f"layer {layer}: ℓ(W⁽⁰⁾) − ℓ(W⁽ⁱ⁾) = {worst['mean']:.4g} on average "
                         f"({worst['rel']:+.3g} of |ℓ(W⁽⁰⁾)|), positive on {worst['positive']:.0%} "
                         f"of {worst['chunks']} chunks", no_effect=inert))
    return out
