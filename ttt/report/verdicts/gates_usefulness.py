"""Is TTT still useful late in a long stream? The outer NLL with TTT minus its twin's, chunk by
chunk beyond the attention context (``usefulness.csv``, ``usefulness.png``), judged on its late
part: TTT that helps early and hurts late fails. And Figure 5's next-chunk gain, now a
diagnostic: the In-Place inner loss is linear in W, so ℓ(W⁽⁰⁾) − ℓ(W⁽ⁱ⁾) is positive whenever
successive updates point the same way, even while TTT does harm (100 % positive on the untrained
model at lr 1e-2, text loss 2.36 nats/token worse): no scenario makes it a useful "fail"."""
from __future__ import annotations

import math
from pathlib import Path

from ttt.base.paired_effect import HURTS
from ttt.report.tables import number
from ttt.report.verdicts.effect import effect_of
from ttt.report.verdicts.paired import chunk_series, pair_of, twin_pairs
from ttt.report.verdicts.registry import Scope, check, gate

FRAME_RATE = 12.5  # Moshi's frames per second


@gate("stability.usefulness", section="usefulness")
def usefulness(s: Scope):
    """TTT's text gain over its twin on the last ``late_fraction`` of each conversation's
    positions beyond the context, interval from resampling conversations: fails when TTT is
    significantly worse there (helps early and hurts late fails too); "no effect" when TTT did
    nothing; not judged below ``min_conversations``."""
    g, min_change = s.g, s.cfg["effect"]["min_output_change"]
    out = []
    for name, c, twin, pair in twin_pairs(s, "late CI not below 0", out):
        split = 1 - g["late_fraction"]
        early = pair.effect("text", "beyond_context", g, (0.0, split))
        late = pair.effect("text", "beyond_context", g, (split, 1.0))
        detail = (f"text gain beyond the context, late {g['late_fraction']:.0%}: "
                  f"{late.rel_gain:+.2%} [{late.ci_rel_gain[0]:+.2%}, {late.ci_rel_gain[1]:+.2%}], "
                  f"early: {early.rel_gain:+.2%} [{early.ci_rel_gain[0]:+.2%}, "
                  f"{early.ci_rel_gain[1]:+.2%}], {late.conversations} conversation(s)")
        works, _, inert_why = effect_of(c, twin, min_change)
        if not works:
            out.append(check(name, late.rel_gain, "late CI not below 0", False,
                             f"{inert_why}; {detail}", no_effect=True))
            continue
        answer = late.answer(g["min_conversations"])
        if answer is None:
            out.append(check(name, late.rel_gain, "late CI not below 0", None,
                             f"not judged: fewer than {g['min_conversations']} conversations or "
                             f"nothing beyond the context; {detail}"))
            continue
        verdict = ("TTT hurts late in the stream" if answer == HURTS else
                   "TTT still helps late in the stream" if late.ci_rel_gain[0] > 0 else
                   "TTT is not significantly worse late in the stream")
        out.append(check(name, late.rel_gain, "late CI not below 0", answer != HURTS,
                         f"{verdict}: {detail}"))
    return out


@gate("diagnostic.next_chunk_gain", section="next_chunk_gain", diagnostic=True)
def next_chunk_gain(s: Scope):
    """Figure 5's inner-loss gain ℓ(W⁽⁰⁾) − ℓ(W⁽ⁱ⁾) on chunk i ≥ 1, worst layer, relative to mean
    |ℓ(W⁽⁰⁾)|: a diagnostic of whether updates point the same way, not evidence of usefulness."""
    from ttt.session.telemetry_records import next_chunk_gain as gains_of
    out = []
    for c in s.cells:
        if not (c.done and c.ttt_on):
            continue
        gains = gains_of(c.table("telemetry.csv"))
        if not gains:
            out.append(check(c.name, None, None, None,
                             "fewer than 2 chunk updates per input: nothing to report"))
            continue
        layer = min(gains, key=lambda k: gains[k]["rel"] if math.isfinite(gains[k]["rel"]) else -math.inf)
        worst = gains[layer]
        out.append(check(c.name, worst["rel"], None, True,
                         f"layer {layer}: ℓ(W⁽⁰⁾) − ℓ(W⁽ⁱ⁾) = {worst['mean']:.4g} on average "
                         f"({worst['rel']:+.3g} of |ℓ(W⁽⁰⁾)|), positive on {worst['positive']:.0%} "
                         f"of {worst['chunks']} chunks"))
    return out


def usefulness_rows(cells, by_name, families) -> list[dict]:
    """The per-chunk series of every TTT-on cell of ``families`` (None: all) with a twin."""
    rows = []
    for c in cells:
        twin = by_name.get(c.row.get("twin") or "")
        if not (c.done and c.ttt_on and twin is not None and twin.done):
            continue
        if families is not None and c.family not in families:
            continue
        pair, _ = pair_of(c, twin)
        if pair is None:
            continue
        chunk = int(number((c.result.resolved_ttt or {}).get("chunk_size")) or 16)
        rows += [{"cell": c.name, "twin": twin.name, **r}
                 for r in chunk_series(pair, chunk, FRAME_RATE)]
    return rows


def effect_rows(cells, by_name, g: dict) -> list[dict]:
    """The effect of every TTT-on teacher-forced cell against its twin, per stream and region
    (all positions, before and beyond the context): the numbers behind the effect verdicts, in
    one table (``effects.csv``)."""
    from ttt.base.paired_effect import REGIONS
    rows = []
    for c in cells:
        twin = by_name.get(c.row.get("twin") or "")
        if not (c.done and c.ttt_on and twin is not None and twin.done):
            continue
        pair, _ = pair_of(c, twin)
        if pair is None:
            continue
        for stream in ("text", "audio"):
            for region in REGIONS:
                e = pair.effect(stream, region, g)
                rows.append({"cell": c.name, "twin": twin.name, "stream": stream, "region": region,
                             "context_frames": pair.context, "conversations": e.conversations,
                             "tokens": e.tokens, "ppl_on": e.ppl_on, "ppl_off": e.ppl_off,
                             "rel_gain": e.rel_gain, "ci_low": e.ci_rel_gain[0],
                             "ci_high": e.ci_rel_gain[1],
                             "answer": e.answer(g["min_conversations"]) or "not judged"})
    return rows


def plot_usefulness(rows: list[dict], path: Path) -> Path | None:
    """TTT's text gain over its twin (nats/token, off − on) per chunk against stream time, one
    panel per cell: each conversation thin, their mean thick; grey before the context."""
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(rows)
    cells = list(dict.fromkeys(df["cell"]))
    fig, axes = plt.subplots(len(cells), 1, figsize=(8, 2.2 * len(cells) + 0.6), squeeze=False,
                             sharex=False)
    for ax, cell in zip(axes[:, 0], cells):
        d = df[df["cell"] == cell]
        for _, conv in d.groupby("item"):
            ax.plot(conv["start_s"], conv["text_gain"], lw=0.6, alpha=0.4, color="tab:blue")
        mean = d[d["beyond_context"]].groupby("start_s")["text_gain"].mean()
        ax.plot(mean.index, mean.values, lw=2, color="tab:blue", label="mean beyond the context")
        before = d[~d["beyond_context"].astype(bool)]
        if len(before):
            ax.axvspan(0, before["start_s"].max(), color="0.9", label="before the context")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(cell, fontsize=8)
        ax.set_ylabel("gain (nats/token)")
    axes[-1, 0].set_xlabel("stream time (s)")
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle("TTT's usefulness along the stream: off − on text NLL per chunk (> 0: TTT helps)",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from ttt.base.files import atomic_write
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path
