"""Gates: what TTT costs (throughput against its TTT-off twin) and what was heard (a recogniser's
transcript of the generated audio against Moshi's own text stream)."""
from __future__ import annotations

import numpy as np

from ttt.asr.recogniser import UNTRAINED_CODEC
from ttt.report.tables import number
from ttt.report.verdicts.registry import Scope, check, gate
from ttt.report.verdicts.stats import bootstrap_ci


@gate("cost.throughput", section="cost")
def throughput(s: Scope):
    """Throughput: TTT-on ms/step (p50) over its TTT-off twin's, minus 1, at most
    ``max_regression``."""
    g = s.g
    out = []
    for c in s.cells:
        twin = s.twin(c)
        if not (c.done and c.ttt_on and twin is not None):
            continue
        on = c.result.throughput.ms_per_step_p50
        off = twin.result.throughput.ms_per_step_p50
        if not on or not off:
            out.append(check(f"{c.name} vs {twin.name}", None,
                             g["max_regression"], False, "no throughput measured"))
            continue
        value = on / off - 1
        out.append(check(f"{c.name} vs {twin.name}", value, g["max_regression"],
                         value <= g["max_regression"],
                         f"{on:.3g} vs {off:.3g} ms/step (p50): {value:+.1%}"))
    return out


def _heard(c) -> dict | None:
    """The cell's ASR summary when the ASR stage ran on it successfully."""
    asr = c.asr() if c.done else None
    return asr if asr and asr.get("status") == "ok" else None


@gate("quality.consistency_wer", section="consistency")
def consistency_wer(s: Scope):
    """Does Moshi speak sense: what a recogniser heard in a cell's audio matches Moshi's text
    stream. Fails, with the reason in one line: the text stream empty or filler only (under
    ``min_words`` words after Whisper's normaliser, which drops um/uh/hmm) while the audio speaks
    (``min_words`` words heard and at least ``min_speech_s`` of speech found by the speech
    detector); the audio silent (under ``min_speech_s`` of speech) while the text says
    ``min_words`` or more; or a consistency WER over ``max_wer``. n/a when neither stream says
    anything, and never judged on an untrained codec's noise."""
    g = s.g
    out = []
    for c in s.cells:
        asr = _heard(c)
        if asr is None:
            continue
        cons = asr.get("consistency") or {}
        wer, said = number(cons.get("wer")), int(number(cons.get("ref_words")) or 0)
        heard = int(number((asr.get("indicators") or {}).get("asr_words")) or 0)
        speech = speech_seconds(asr)
        silent = speech is not None and speech < g["min_speech_s"]
        speaks = heard >= g["min_words"] and not silent
        if asr.get("codec_untrained"):
            out.append(check(c.name, wer, g["max_wer"], None, UNTRAINED_CODEC))
        elif said < g["min_words"] and speaks:
            out.append(check(c.name, wer, g["max_wer"], False,
                             f"gibberish: Moshi's text stream is {_emptiness(asr, said)} while "
                             f"its audio speaks ({heard} words heard, {_seconds(speech)} of speech)"))
        elif said >= g["min_words"] and silent:
            out.append(check(c.name, wer, g["max_wer"], False,
                             f"gibberish: the audio is silent ({_seconds(speech)} of speech, {heard} "
                             f"words heard) while Moshi's text stream says {said} words"))
        elif wer is None:
            out.append(check(c.name, None, g["max_wer"], None,
                             f"neither stream speaks ({heard} words heard, none in the text "
                             "stream): nothing to compare"))
        else:
            out.append(check(c.name, wer, g["max_wer"], wer <= g["max_wer"],
                             f"heard vs text stream: WER {wer:.3f} over {said} text words"
                             + ("" if wer <= g["max_wer"] else f", over {g['max_wer']:g}")))
    return out


def speech_seconds(asr: dict) -> float | None:
    """Seconds of speech the speech detector found in the cell's audio (asr.json's silence
    fraction × the audio's length), None when either is missing."""
    silence = number((asr.get("indicators") or {}).get("silence_fraction"))
    seconds = number((asr.get("audio") or {}).get("seconds"))
    return None if silence is None or seconds is None else (1 - silence) * seconds


def _seconds(value: float | None) -> str:
    return "unmeasured" if value is None else f"{value:.1f} s"


def _emptiness(asr: dict, said: int) -> str:
    """"empty", "filler only (…)" or "nearly empty (…)": what the text stream held."""
    raw = asr.get("text_words")
    if said == 0:
        return "empty" if raw in (0, None) else f"filler only ({raw} word(s), none after the normaliser)"
    return f"nearly empty ({said} word(s))"


@gate("quality.consistency_wer_vs_off", section="consistency")
def consistency_wer_vs_off(s: Scope):
    """TTT on is not less consistent than its TTT-off twin (per-window consistency WER on − off,
    bootstrap CI, fails when the whole CI is above ``max_worse``); "no effect" when both said,
    and were heard saying, the same in every window. Never judged on an untrained codec's noise."""
    g = s.g
    out = []
    for c in s.cells:
        asr = _heard(c)
        if asr is None:
            continue
        twin = s.twin(c)
        twin_asr = _heard(twin) if twin is not None and c.ttt_on else None
        if twin_asr is None:
            continue
        name = f"{c.name} vs {twin.name}"
        if asr.get("codec_untrained") or twin_asr.get("codec_untrained"):
            out.append(check(name, None, g["max_worse"], None, UNTRAINED_CODEC))
            continue
        on = {number(r.get("start_s")): number(r.get("consistency_wer")) for r in c.asr_windows()}
        off = {number(r.get("start_s")): number(r.get("consistency_wer")) for r in twin.asr_windows()}
        pairs = [(on[k], off[k]) for k in on if k in off and on[k] is not None and off[k] is not None]
        if not pairs:
            out.append(check(name, None, g["max_worse"], None,
                             "no window where both text streams have words"))
            continue
        d = np.array([a - b for a, b in pairs])
        lo, hi = bootstrap_ci(d, g["confidence"], g["resamples"])
        said = lambda rows: [(r.get("start_s"), r.get("hypothesis"), r.get("asr_hypothesis")) for r in rows]
        same = said(c.asr_windows()) == said(twin.asr_windows())
        out.append(check(name, float(d.mean()), g["max_worse"], lo <= g["max_worse"],
                         ("no effect: TTT on said and was heard saying the same as off in every "
                          "window; " if same else "")
                         + f"consistency WER on − off {d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}] "
                         f"{g['confidence']:.0%} CI over {len(d)} windows", no_effect=same))
    return out
