"""Fast-weight telemetry, read off the streaming state on demand (never on the per-token path)."""
from __future__ import annotations

import torch
from torch import nn

from ttt.moshi.surgery import ttt_layers


def ttt_state(lm: nn.Module) -> dict[int, dict[str, torch.Tensor]]:
    """Per TTT layer (by index), device tensors with one value per batch row:

    ``w_norm`` ‖W‖_F, ``w_drift`` ‖W − W^(0)‖_F, ``clip_events``, ``updates``,
    ``last_delta_norm`` (‖ΔW‖_F of the last update, before clipping), ``chunk_fill``, and the
    Figure-5 inner losses ℓ(W) = −⟨W, ΔW⟩_F of the last updated chunk under W^(0), before and
    after its update (``inner_loss_initial/before/after``), and the next-chunk gain
    ``inner_gain`` = ℓ(W^(0)) − ℓ(W^(i)) on that chunk: how much the earlier chunks' updates
    already help it. (after < before is true by construction for In-Place TTT, whose ℓ is linear
    in W: ℓ_after = ℓ_before − lr·s·‖ΔW‖²; the gain is the informative comparison.)
    Empty dict entries for layers that are not streaming.
    """
    out: dict[int, dict[str, torch.Tensor]] = {}
    for index, layer in ttt_layers(lm).items():
        s = layer._streaming_state
        if hasattr(layer, "telemetry"):  # the TTT-MLP hybrid reports its own (same keys)
            out[index] = _with_gain(layer.telemetry())
            continue
        if s is None:
            out[index] = {}
            continue
        with torch.no_grad():
            out[index] = _with_gain({
                "w_norm": torch.linalg.vector_norm(s.w, dim=(-2, -1)),
                "w_drift": torch.linalg.vector_norm(s.w - s.w0[None], dim=(-2, -1)),
                "clip_events": s.clip_events.clone(),
                "updates": s.updates.clone(),
                "last_delta_norm": s.last_delta_norm.clone(),
                "chunk_fill": s.pos.clone(),
                "inner_loss_initial": s.inner_loss[:, 0].clone(),
                "inner_loss_before": s.inner_loss[:, 1].clone(),
                "inner_loss_after": s.inner_loss[:, 2].clone(),
                "gain_sum": s.gain_stats[:, 0].clone(), "gain_initial_abs_sum": s.gain_stats[:, 1].clone(),
                "gain_positive": s.gain_stats[:, 2].clone(), "gain_chunks": s.gain_stats[:, 3].clone(),
            })
    return out


def _with_gain(record: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if record:
        record["inner_gain"] = record["inner_loss_initial"] - record["inner_loss_before"]
    return record


def next_chunk_gain(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per layer, from telemetry rows (values may be CSV strings): the mean next-chunk gain
    ℓ(W^(0)) − ℓ(W^(i)) over the chunks i ≥ 1 of every input (chunk 0 has W^(i) = W^(0)), its
    value relative to the mean |ℓ(W^(0))| (``rel``), the fraction of those chunks with a
    positive gain, and how many chunks were seen. In-Place layers count every chunk on the device
    (``gain_*`` columns, cumulative per input: each input's last row is read), whatever the
    telemetry cadence; without those columns (the hybrid) a chunk counts once per logged
    ``updates`` value."""
    if rows and _float(rows[0].get("gain_chunks")) is not None:
        return _gain_from_counters(rows)
    per_chunk: dict[tuple, tuple[float, float]] = {}
    for r in rows:
        updates = _float(r.get("updates"))
        initial, before = _float(r.get("inner_loss_initial")), _float(r.get("inner_loss_before"))
        if updates is None or updates < 2 or initial is None or before is None:
            continue
        per_chunk[(str(r.get("item")), str(r["layer"]), updates)] = (initial - before, abs(initial))
    out: dict[str, dict[str, float]] = {}
    for layer in sorted({k[1] for k in per_chunk}, key=lambda x: float(x)):
        gains = [g for k, g in per_chunk.items() if k[1] == layer]
        mean = sum(g for g, _ in gains) / len(gains)
        scale = sum(a for _, a in gains) / len(gains)
        out[layer] = {"mean": mean, "rel": mean / scale if scale > 0 else 0.0,
                      "positive": sum(g > 0 for g, _ in gains) / len(gains), "chunks": len(gains)}
    return out


def _gain_from_counters(rows: list[dict]) -> dict[str, dict[str, float]]:
    last = {(str(r.get("item")), str(r["layer"])): r for r in rows}
    out: dict[str, dict[str, float]] = {}
    for layer in sorted({k[1] for k in last}, key=lambda x: float(x)):
        sums = [sum(_float(r.get(k)) or 0.0 for (_, lay), r in last.items() if lay == layer)
                for k in ("gain_sum", "gain_initial_abs_sum", "gain_positive", "gain_chunks")]
        gain, scale, positive, chunks = sums
        if chunks:
            out[layer] = {"mean": gain / chunks, "rel": gain / scale if scale > 0 else 0.0,
                          "positive": positive / chunks, "chunks": int(chunks)}
    return out


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# ---- the structured log line (seed 000 item 10: "log line structure stable") ------------------

LOG_PREFIX = "TTT-TELEMETRY "
LOG_FIELDS = ("updates", "clip_events", "w_norm", "last_delta_norm")


def telemetry_line(state: dict[int, dict[str, torch.Tensor]], step: int, row: int = 0,
                   **fields) -> str:
    """One log line, ``TTT-TELEMETRY {json}``: ``step``, the extra ``fields`` (cell, item) and
    per layer ``updates``, ``clip_events``, ``w_norm``, ``last_delta_norm`` of batch row ``row``
    (one host sync; call it at the logging cadence, not per token)."""
    import json
    counters = ("updates", "clip_events")
    layers = {str(i): {k: (int if k in counters else float)(s[k][row]) for k in LOG_FIELDS}
              for i, s in state.items() if s}
    return LOG_PREFIX + json.dumps({**fields, "step": int(step), "layers": layers},
                                   separators=(",", ":"))


def parse_telemetry_line(line: str) -> dict | None:
    """The record of a :func:`telemetry_line` anywhere in ``line`` (log prefixes allowed), or None
    when the line has none. Raises ``ValueError`` for a line that has the prefix but not a
    well-formed record."""
    import json
    at = line.find(LOG_PREFIX)
    if at < 0:
        return None
    try:
        record = json.loads(line[at + len(LOG_PREFIX):])
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int) \
            or not isinstance(record.get("layers"), dict):
        raise ValueError("needs an integer 'step' and a 'layers' mapping")
    for layer, values in record["layers"].items():
        if not isinstance(values, dict) or set(values) != set(LOG_FIELDS):
            raise ValueError(f"layer {layer}: needs exactly {list(LOG_FIELDS)}")
        if not all(isinstance(v, (int, float)) for v in values.values()):
            raise ValueError(f"layer {layer}: values must be numbers")
    return record
