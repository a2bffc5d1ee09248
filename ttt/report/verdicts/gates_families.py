"""Gates for the families whose purpose is to break TTT: the τ-stress family must clip every update
into a no-op, and the lr grid must bracket its best lr and reach a diverging one."""
from __future__ import annotations

from ttt.report.verdicts.effect import effect_of
from ttt.report.tables import number
from ttt.report.verdicts.loading import Cell
from ttt.report.verdicts.registry import Scope, check, gate


@gate("stress.clips", section="stress")
def clips(s: Scope):
    """The τ-stress family does what it is for: every update clips (at least ``min_fraction``)
    and the effect signal recognises the resulting no-op ("no effect", naming lr·τ)."""
    g = s.g
    out = []
    for c in s.cells:
        if not (c.done and c.ttt_on):
            continue
        clipped = sum(number(r) or 0 for r in _final(c, "clip_events"))
        updates = sum(number(r) or 0 for r in _final(c, "updates"))
        fraction = clipped / updates if updates else 0.0
        works, _, why = effect_of(c, s.twin(c), s.cfg["effect"]["min_output_change"])
        out.append(check(c.name, fraction, g["min_fraction"],
                         fraction >= g["min_fraction"] and not works,
                         f"{clipped:.0f} of {updates:.0f} updates clipped; effect: {why}"))
    return out


def _final(c: Cell, key: str) -> list:
    """A cumulative counter's last value per (input, layer)."""
    last = {(r.get("item"), r["layer"]): r.get(key) for r in c.table("telemetry.csv")}
    return list(last.values())


@gate("lr_grid.boundary", section="lr_grid")
def boundary(s: Scope):
    """Per chunk size, the lr grid brackets its optimum: the best lr (lowest text perplexity among
    cells not diverged; aggregate's ``best_lr_for_chunk``) beats TTT off and lies strictly inside
    the grid, and a larger lr diverges (``divergence_boundary_lr``: non-finite, clip-saturated,
    or perplexity above ``aggregate.BLOWUP_PPL_RATIO`` × TTT off)."""
    out = []
    grid = [c for c in s.cells if c.row.get("ttt") == "on" and c.row.get("lr")]
    for chunk in sorted({c.row.get("chunk") for c in grid}, key=lambda x: number(x) or 0):
        rows = [c.row for c in grid if c.row.get("chunk") == chunk]
        lrs = sorted({number(r["lr"]) for r in rows})
        best = next((r for r in rows if r.get("best_lr_for_chunk") == "True"), None)
        boundary = number(rows[0].get("divergence_boundary_lr"))
        name = f"lr_grid chunk {chunk}"
        if best is None:
            out.append(check(name, None, "inside", False, "every lr diverged: no best lr"))
            continue
        lr, ppl, off = number(best["lr"]), number(best.get("perplexity_text")), number(best.get("perplexity_text_off"))
        text = (f"best lr {lr:g} (text ppl {ppl:.4g} vs TTT off {off if off is None else f'{off:.4g}'})"
                f" in grid {[f'{x:g}' for x in lrs]}; "
                + (f"diverges from lr {boundary:g}" if boundary else "no lr diverged"))
        if off is not None and ppl is not None and ppl >= off:
            out.append(check(name, lr, "inside", False,
                             f"no effect: no lr beats TTT off; {text}", no_effect=True))
            continue
        inside = lrs[0] < lr < lrs[-1] and boundary is not None and boundary > lr
        out.append(check(name, lr, "inside", inside,
                         text + ("" if inside else "; the grid must bracket the best lr and reach "
                                 "a diverging lr (extend lr_grid.lrs)")))
    return out
