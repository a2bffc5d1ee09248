"""Gates: does TTT help? Each TTT-on cell against its TTT-off twin, conversation by conversation,
beyond the attention context (where a memory outliving the window is what TTT adds). Four
answers: helps and hurts when the conversation-bootstrap interval of the gain excludes 0 on that
side, "no significant difference" when it does not, "no effect" when TTT did nothing at all
(:mod:`.effect`: weights inert and outputs equal, both checked). One conversation gives no
interval that generalises: such a cell is not judged, and says so (docs/verdicts.md)."""
from __future__ import annotations

import math

import numpy as np

from ttt.base.paired_effect import paired_effect
from ttt.report.tables import number
from ttt.report.verdicts.effect import effect_of
from ttt.report.verdicts.paired import twin_pairs
from ttt.report.verdicts.registry import Scope, check, gate


@gate("responsiveness.effect", section="effect")
def effect(s: Scope):
    """TTT did something: "no effect" when the fast weights never moved past the compute dtype's
    resolution and the outputs equal the TTT-off twin's, both checked; else pass."""
    out = []
    for c in s.cells:
        if not (c.done and c.ttt_on):
            continue
        works, rel, why = effect_of(c, s.twin(c), s.g["min_output_change"])
        out.append(check(c.name, rel, "≥ dtype resolution", works, why, no_effect=not works))
    return out


def _perplexity(s: Scope, stream: str):
    """The four-answer verdict on ``stream``'s perplexity beyond the context, with the positions
    before it reported beside."""
    g, min_change = s.g, s.cfg["effect"]["min_output_change"]
    out = []
    for name, c, twin, pair in twin_pairs(s, "CI excludes 0", out):
        works, _, inert_why = effect_of(c, twin, min_change)
        beyond = pair.effect(stream, "beyond_context", g)
        before = pair.effect(stream, "before_context", g)
        detail = (f"{stream} beyond the {pair.context}-frame context: {beyond.describe()}; before "
                  f"it: gain {before.rel_gain:+.2%} [{before.ci_rel_gain[0]:+.2%}, "
                  f"{before.ci_rel_gain[1]:+.2%}]")
        if not works:
            out.append(check(name, beyond.rel_gain, "CI excludes 0", False,
                             f"{inert_why}; {detail}", no_effect=True))
            continue
        answer = beyond.answer(g["min_conversations"])
        if answer is None:
            reason = (f"no position beyond the {pair.context}-frame context"
                      if not beyond.tokens else
                      f"{beyond.conversations} conversation(s), fewer than min_conversations "
                      f"{g['min_conversations']}: an interval over one conversation's windows "
                      "would not generalise")
            out.append(check(name, beyond.rel_gain, "CI excludes 0", None,
                             f"not judged: {reason}; {detail}"))
            continue
        out.append(check(name, beyond.rel_gain, "CI excludes 0", None, f"{answer}: {detail}",
                         answer=answer))
    return out


@gate("responsiveness.perplexity_text", section="responsiveness")
def perplexity_text(s: Scope):
    """Text perplexity beyond the attention context, TTT on vs its twin, interval from resampling
    conversations: helps / no significant difference / hurts (a fail) / no effect."""
    return _perplexity(s, "text")


@gate("responsiveness.perplexity_audio", section="responsiveness")
def perplexity_audio(s: Scope):
    """Audio perplexity beyond the attention context, as the text one."""
    return _perplexity(s, "audio")


@gate("responsiveness.wer", section="responsiveness")
def wer(s: Scope):
    """Transcription WER (transcribe cells), TTT on vs its twin: each conversation's mean window
    WER, interval from resampling conversations; lower is better, four answers as perplexity."""
    g, min_change = s.g, s.cfg["effect"]["min_output_change"]
    out = []
    for c in s.cells:
        twin = s.twin(c)
        if not (c.done and c.ttt_on and twin is not None):
            continue
        per = [_wer_by_item(x) for x in (c, twin)]
        items = sorted(set(per[0]) & set(per[1]))
        if not items:
            continue
        on = (np.array([per[0][i][0] for i in items]), np.array([per[0][i][1] for i in items]))
        off = (np.array([per[1][i][0] for i in items]), np.array([per[1][i][1] for i in items]))
        e = paired_effect(on, off, confidence=g["confidence"], resamples=g["resamples"],
                          transform=lambda x: x)
        works, _, inert_why = effect_of(c, twin, min_change)
        lo, hi = e.ci_gain
        detail = (f"WER on {e.ppl_on:.3f} vs off {e.ppl_off:.3f}, off − on {e.gain:+.3f} "
                  f"[{lo:+.3f}, {hi:+.3f}] {g['confidence']:.0%} CI over {e.conversations} "
                  "conversation(s)")
        name = f"{c.name} vs {twin.name}"
        if not works:
            out.append(check(name, e.gain, "CI excludes 0", False, f"{inert_why}; {detail}",
                             no_effect=True))
            continue
        answer = e.answer(g["min_conversations"]) if not math.isnan(e.gain) else None
        out.append(check(name, e.gain, "CI excludes 0", None,
                         f"{answer or 'not judged: too few conversations'}: {detail}",
                         answer=answer))
    return out


def _wer_by_item(c) -> dict:
    """item → (sum of window WERs, windows)."""
    out: dict = {}
    for r in c.table("timeseries.csv"):
        w = number(r.get("wer"))
        if w is None or not math.isfinite(w):
            continue
        s, n = out.get(r.get("item"), (0.0, 0))
        out[r.get("item")] = (s + w, n + 1)
    return out
