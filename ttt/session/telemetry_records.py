"""Telemetry as it is read back, without torch (the reports and the verdicts read it on a login
node): the ``TTT-TELEMETRY {json}`` log line's format and parser, and the next-chunk gain from
telemetry rows. ``ttt.session.telemetry`` writes both from the streaming state."""
from __future__ import annotations

import json

LOG_PREFIX = "TTT-TELEMETRY "
LOG_FIELDS = ("updates", "clip_events", "w_norm", "last_delta_norm")


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


def parse_telemetry_line(line: str) -> dict | None:
    """The record of a :func:`telemetry_line` anywhere in ``line`` (log prefixes allowed), or None
    when the line has none. Raises ``ValueError`` for a line that has the prefix but not a
    well-formed record."""
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
