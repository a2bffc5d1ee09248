"""Gates: what TTT costs (throughput against its TTT-off twin) and what was heard (a recogniser's
transcript of the generated audio against Moshi's own text stream)."""
from __future__ import annotations

import numpy as np

from ttt.report.tables import number
from ttt.report.verdicts.registry import Scope, check, gate
from ttt.report.verdicts.stats import bootstrap_ci

UNTRAINED_CODEC = "n/a: the codec is untrained (random Mimi: its audio is noise, nothing to hear)"


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
    """What a recogniser heard in a generate cell's audio matches Moshi's text stream: the cell's
    consistency WER at most ``max_wer``. Never judged on an untrained codec's noise."""
    g = s.g
    out = []
    for c in s.cells:
        asr = _heard(c)
        if asr is None:
            continue
        wer = number((asr.get("consistency") or {}).get("wer"))
        if asr.get("codec_untrained"):
            out.append(check(c.name, wer, g["max_wer"], None, UNTRAINED_CODEC))
        elif wer is None:
            out.append(check(c.name, None, g["max_wer"], None,
                             "Moshi's text stream has no word: nothing to compare"))
        else:
            ref = (asr.get("consistency") or {}).get("ref_words")
            out.append(check(c.name, wer, g["max_wer"], wer <= g["max_wer"],
                             f"heard vs text stream: WER {wer:.3f} over {ref} text words"))
    return out


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
