"""The control suite's answer in one line per stream: did TTT recall repeats beyond the reach of
attention, and can this suite tell?

Why a reading and not only tables: on 2026-12-02 the tables showed no recall for any model, full
attention included, and nothing in them said that this made TTT's numbers unreadable. The copying
circuit forms late and as a jump (docs/controls.md); before it forms, "TTT shows no recall" means
nothing. So the reading first asks the ceiling (full attention, whose context covers every
offset) whether it copies beyond the reach; only then does it read TTT.

All figures pool the offsets beyond the reach (offset > layers × context of the TTT model): per
seed and conversation, the mean over those offsets, then seed mean and the bootstrap over
conversations and seeds of :func:`ttt.control.suite_report.seed_conversation_bootstrap`.

Answers (per stream):

- ``inconclusive``: the ceiling's recall (NLL fresh − exact) beyond the reach has a CI that
  reaches 0 (or there is no ceiling, or no offset beyond the reach): the suite cannot tell recall
  from its absence.
- ``recall``: the ceiling copies, and TTT's advantage over the model trained without TTT is
  larger on exact copies than on fresh *and* on shuffled ones (both CIs above 0): the gain owes
  to the repeat and its order.
- ``no recall``: the ceiling copies and TTT does not meet that bar; the figures say whether TTT
  helped anyway (adaptation) or hurt.
"""
from __future__ import annotations

import numpy as np

CEILING, TTT, NO_TTT = "full attention", "TTT", "no-TTT"


def pooled(grids: dict, label: str, first: str, second: str, offsets: list[int]) -> np.ndarray:
    """[seeds, conversations]: mean over ``offsets`` of NLL(``first``) − NLL(``second``)."""
    g = grids[label]
    return np.mean([g[(first, o)] - g[(second, o)] for o in offsets], axis=0)


def read_stream(grids: dict, offsets: list[int], reach: int, summarise) -> dict:
    """The reading of one stream from its grids ({label: {(kind, offset): [seeds, convs]}})."""
    if set(grids) == {CEILING}:  # a call that trained the ceiling alone (VARIANTS=full)
        recall = summarise(pooled(grids, CEILING, "fresh", "exact", offsets))
        said = "it copies" if recall["ci95"][0] > 0 else "it does not copy"
        return {"answer": "inconclusive", f"recall {CEILING}": recall,
                "why": f"only the full-attention ceiling ran: its recall over offsets {offsets} "
                       f"(fresh − exact) is {_ci(recall)}: {said}"}
    beyond = [o for o in offsets if o > reach]
    figures: dict = {"offsets_beyond_reach": beyond}
    if not beyond or CEILING not in grids:
        why = "no offset beyond the reach" if not beyond else "no full-attention ceiling was trained"
        return {"answer": "inconclusive", "why": why, **figures}
    for label in (CEILING, TTT, NO_TTT):
        if label in grids:
            figures[f"recall {label}"] = summarise(pooled(grids, label, "fresh", "exact", beyond))
    ceiling = figures[f"recall {CEILING}"]
    if ceiling["ci95"][0] <= 0:
        return {"answer": "inconclusive", **figures,
                "why": "full attention shows no recall beyond the reach (fresh − exact "
                       f"{_ci(ceiling)}): the ceiling never learned to copy, so TTT's figures "
                       "cannot say whether TTT recalls"}
    if TTT not in grids or NO_TTT not in grids or grids[TTT][("exact", beyond[0])].shape != \
            grids[NO_TTT][("exact", beyond[0])].shape:
        return {"answer": "inconclusive", **figures, "why": "TTT or no-TTT runs are missing, or their seeds do not pair"}
    advantage = {kind: np.mean([grids[NO_TTT][(kind, o)] - grids[TTT][(kind, o)] for o in beyond], axis=0)
                 for kind in ("exact", "shuffled", "fresh")}
    figures["no-TTT − TTT, exact"] = summarise(advantage["exact"])
    figures["no-TTT − TTT, fresh"] = summarise(advantage["fresh"])
    vs_fresh = figures["owed to the repeat (exact − fresh)"] = summarise(advantage["exact"] - advantage["fresh"])
    vs_shuffled = figures["owed to the order (exact − shuffled)"] = summarise(
        advantage["exact"] - advantage["shuffled"])
    share = figures[f"recall {TTT}"]["mean"] / ceiling["mean"]
    figures["share of the ceiling's recall"] = share
    if vs_fresh["ci95"][0] > 0 and vs_shuffled["ci95"][0] > 0:
        return {"answer": "recall", **figures,
                "why": f"TTT's advantage over no-TTT is larger on exact copies than on fresh "
                       f"({_ci(vs_fresh)}) and shuffled ({_ci(vs_shuffled)}) ones; TTT recalls "
                       f"{share:.0%} of what full attention recalls"}
    overall = figures["no-TTT − TTT, fresh"]
    effect = ("helps on fresh copies too (adaptation, not recall)" if overall["ci95"][0] > 0 else
              "hurts" if overall["ci95"][1] < 0 else "changes nothing measurable on fresh copies")
    return {"answer": "no recall", **figures,
            "why": f"full attention recalls ({_ci(ceiling)}) but TTT's advantage owes nothing "
                   f"measurable to the repeat (exact − fresh {_ci(vs_fresh)}, exact − shuffled "
                   f"{_ci(vs_shuffled)}); beyond the reach TTT {effect} "
                   f"(no-TTT − TTT on fresh copies {_ci(overall)})"}


def overfit_warnings(curves: dict, selected: dict, rise: float = 0.10) -> list[str]:
    """Runs whose held-out loss was lowest at their first evaluation and ended more than ``rise``
    (relative) above it. Such a run learned its training rows and not held-out speech (the natural
    suite's phrase rows on the H200, 2026-12-03: held-out loss 7.08 at step 250, 16.6 at 2,000),
    and the checkpoint its offsets score is that first one, long before any copying circuit."""
    out = []
    for run, rows in curves.items():
        evals = [(int(r["step"]), r["eval_loss"]) for r in rows if "eval_loss" in r]
        if len(evals) < 2 or (selected.get(run) or {}).get("step") != evals[0][0]:
            continue
        (first, best), (last_step, last) = evals[0], evals[-1]
        if last > best * (1 + rise):
            out.append(f"{run}: held-out loss lowest at its first evaluation (step {first}), "
                       f"then {best:.2f} → {last:.2f} at step {last_step}: the model learned its "
                       f"training rows, not held-out speech; its offsets score the step-{first} checkpoint")
    return out


def _ci(s: dict) -> str:
    lo, hi = s["ci95"]
    return f"{s['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def markdown(reading: dict, warnings: list[str] = ()) -> list[str]:
    """The reading's lines at the top of report.md, and the runs that did not learn held-out speech."""
    lines = ["**Reading** (offsets beyond the reach pooled; nats/token, 95 % CI over conversations "
             "and seeds)", ""]
    for stream, r in reading.items():
        lines.append(f"- {stream}: **{r['answer']}**: {r['why']}.")
    if warnings:
        lines += ["", "**Runs that overfit from the start** (read their figures with that in mind):", ""]
        lines += [f"- {w}." for w in warnings]
    return lines + [""]
