"""Did TTT do anything at all? "No effect" needs both halves, each checked: the fast weights never
moved past the compute dtype's resolution AND the outputs equal the TTT-off twin's. Either half
alone is not enough: bf16 weights that moved 0.48 % (below bf16's 0.78 %) still changed window
perplexities by 0.09 % while lr 0 leaves them bitwise equal, so that change was TTT's, not
rounding (issue 23). Shared by the effect, perplexity, usefulness and τ-stress gates."""
from __future__ import annotations

from ttt.report.tables import number
from ttt.report.verdicts.loading import Cell

# Relative resolution of the compute dtype (machine epsilon): a fast-weight change ‖W − W₀‖/‖W₀‖
# below it is lost when W is cast for the matmul (bf16: 7.8e-3; fp32: 1.2e-7).
DTYPE_EPS = {"float32": 2.0 ** -23, "bfloat16": 2.0 ** -7, "float16": 2.0 ** -10}


def weights_inert(c: Cell) -> tuple[bool, float, str, float]:
    """(inert, largest ‖W − W₀‖/‖W₀‖ over the telemetry, compute dtype, its resolution): inert
    when the fast weights never moved by what the dtype resolves, so any on/off difference is the
    TTT path's rounding, not learning (bf16 at 32k tokens: windows differ by up to 8e-4 while W
    moved 1e-8)."""
    dtype = c.result.dtype
    eps = DTYPE_EPS.get(dtype, DTYPE_EPS["float32"])
    rel = max((number(r.get("w_drift")) / number(r.get("w_norm")) for r in c.table("telemetry.csv")
               if number(r.get("w_drift")) is not None and number(r.get("w_norm"))), default=0.0)
    return not rel >= eps, rel, dtype, eps  # NaN counts as no measurable change too


def effect_of(c: Cell, twin: Cell | None, min_change: float) -> tuple[bool, float, str]:
    """(TTT had an effect, largest relative fast-weight change, why) for a TTT-on cell.

    No effect only when ‖W − W₀‖/‖W₀‖ stays below the compute dtype's resolution in every layer
    *and* the outputs equal the TTT-off twin's (each conversation's mean NLL, per stream, within
    ``min_change`` relative, or the same text). Without a twin the outputs cannot be checked, so TTT is not
    called inert. Names lr·τ, the bound on each update's size."""
    inert, rel, dtype, eps = weights_inert(c)
    ttt = c.result.resolved_ttt or {}  # the resolved TTTConfig (a config mapping, not a result)
    lr, tau = ttt.get("lr"), ttt.get("delta_clip_fro_norm")
    bound = (f"lr·τ = {lr:g}·{tau:g} = {lr * tau:.3g} bounds each update's ‖ΔW‖_F"
             if lr is not None and tau else f"lr = {lr} (no clip: lr·τ bounds nothing)")
    same = outputs_equal(c, twin, min_change) if twin is not None else None
    weights = (f"‖W − W₀‖/‖W₀‖ ≤ {rel:.3g}, below {dtype} resolution {eps:.2g}" if inert else
               f"‖W − W₀‖/‖W₀‖ up to {rel:.3g} (≥ {dtype} resolution {eps:.2g})")
    if inert and same:
        return False, rel, f"no effect: {weights}; outputs equal the TTT-off twin's ({same}); {bound}"
    outputs = ("outputs equal the TTT-off twin's" if same else "no twin to compare outputs with"
               if twin is None else "outputs differ from the TTT-off twin's")
    return True, rel, f"{weights}, {outputs}; {bound}"


def outputs_equal(c: Cell, twin: Cell, min_change: float) -> str | None:
    """What matched, when the outputs equal the twin's: each conversation's mean NLL within
    ``min_change`` relative (teacher-forced cells), else every shared window's perplexities and
    the transcript; None when something differs or nothing compares."""
    from ttt.report.verdicts.paired import pair_of
    pair, _ = pair_of(c, twin)
    if pair is not None:
        worst = pair.max_rel_difference()
        return (f"each conversation's mean NLL within {worst:.2g} relative" if worst <= min_change
                else None)
    on = {(r.get("item"), number(r.get("start_s"))): r for r in c.table("timeseries.csv")}
    off = {(r.get("item"), number(r.get("start_s"))): r for r in twin.table("timeseries.csv")}
    keys = [k for k in on if k in off]
    compared = []
    for column in ("text_ppl", "audio_ppl", "wer"):
        pairs = [(number(on[k].get(column)), number(off[k].get(column))) for k in keys]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if not pairs:
            continue
        if any(abs(a - b) > min_change * abs(b) for a, b in pairs):
            return None
        compared.append(f"{column} over {len(pairs)} windows")
    texts = [x.transcript() for x in (c, twin)]
    if texts[0] is not None and texts[1] is not None:
        if texts[0] != texts[1]:
            return None
        compared.append("identical transcript")
    return ", ".join(compared) or None
