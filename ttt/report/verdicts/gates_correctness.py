"""Gates: the surgery is correct (TTT off is upstream Moshi bit for bit, TTT on equals off before
its first update, every TTT layer receives the summed token embeddings)."""
from __future__ import annotations

from ttt.report.verdicts.registry import Scope, check, gate


@gate("correctness.pre_update_logits", section="pre_update_logits")
def pre_update_logits(s: Scope):
    """YaRN A/B: before the first update, TTT-on logits equal TTT-off (relative error)."""
    g = s.g
    out = []
    for c in s.cells:
        if not (c.done and c.ttt_on):
            continue
        err = c.result.ab.pre_update_logits_rel_err if c.result.ab else None
        if err is None:
            out.append(check(c.name, None, g["max_rel_err"], False,
                             "no A/B result in metrics.json (the cell needs ab: true)"))
            continue
        out.append(check(c.name, err, g["max_rel_err"],
                         err <= g["max_rel_err"], f"max |on − off| / max |off| = {err:.3g} "
                         "on the first chunk"))
    return out


@gate("correctness.ttt_off_bitwise", section="ttt_off_bitwise")
def ttt_off_bitwise(s: Scope):
    """TTT off: logits bitwise equal to upstream moshi's own loader."""
    out = []
    for c in s.cells:
        if not c.done or c.ttt_on:
            continue
        reg = c.result.regression
        if reg is None:
            out.append(check(c.name, None, 0.0, False,
                             "no upstream comparison in metrics.json (the cell needs check_upstream)"))
            continue
        diff, equal = reg.max_abs_diff, reg.bitwise_equal
        out.append(check(c.name, diff, 0.0, equal,
                         f"{'bitwise equal' if equal else 'differs'} over {reg.steps} steps "
                         f"(max |diff| {diff:.3g})"))
    return out


@gate("correctness.embedding_plumbing", section="embedding_plumbing")
def embedding_plumbing(s: Scope):
    """The X₀ every In-Place TTT layer receives equals the summed token embeddings."""
    g = s.g
    out = []
    for c in s.cells:
        if not (c.done and c.ttt_on):
            continue
        resolved = c.result.resolved_ttt or {}
        if resolved.get("variant", "inplace") != "inplace" or \
                resolved.get("target_source", "embeddings") != "embeddings":
            continue  # no token-embedding target (the hybrid, or V̂ from the MLP's own input)
        plumbing = c.result.plumbing
        diff = plumbing.max_abs_diff if plumbing else None
        if diff is None:
            out.append(check(c.name, None, g["max_abs_diff"],
                             False, "no plumbing check in metrics.json"))
            continue
        out.append(check(c.name, diff, g["max_abs_diff"],
                         diff <= g["max_abs_diff"],
                         f"layers {plumbing.layers}: max |X0 received − Σ embeddings| "
                         f"{diff:.3g} over {plumbing.steps} steps"))
    return out
