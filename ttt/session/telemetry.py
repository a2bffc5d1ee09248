"""Fast-weight telemetry, read off the streaming state on demand (never on the per-token path),
and the per-chunk records the In-Place layers log on the device as each update happens."""
from __future__ import annotations

import torch
from torch import nn

from ttt.core.chunk_stats import CHUNK_FIELDS
from ttt.moshi.surgery import ttt_layers
from ttt.session.telemetry_records import (LOG_FIELDS, LOG_PREFIX,  # noqa: F401 (re-exported)
                                           next_chunk_gain, parse_telemetry_line)


def ttt_state(lm: nn.Module, copy: bool = True) -> dict[int, dict[str, torch.Tensor]]:
    """Per TTT layer (by index), device tensors with one value per batch row:

    ``w_norm`` ‖W‖_F, ``w_drift`` ‖W − W^(0)‖_F, ``w_rel_change`` ‖W − W^(0)‖_F / ‖W^(0)‖_F
    (all three kept by the layer since its last update: reading them forms no d×hid tensor),
    ``clip_events``, ``updates``,
    ``last_delta_norm`` (‖ΔW‖_F of the last update, before clipping), ``chunk_fill``, and the
    Figure-5 inner losses ℓ(W) = −⟨W, ΔW⟩_F of the last updated chunk under W^(0), before and
    after its update (``inner_loss_initial/before/after``), and the next-chunk gain
    ``inner_gain`` = ℓ(W^(0)) − ℓ(W^(i)) on that chunk: how much the earlier chunks' updates
    already help it. (after < before is true by construction for In-Place TTT, whose ℓ is linear
    in W: ℓ_after = ℓ_before − lr·s·‖ΔW‖²; the gain is the informative comparison.)
    Empty dict entries for layers that are not streaming. ``copy=False``: the In-Place layers'
    values are views of their live state (no copy kernel per value), for a caller that reads them
    before the next forward (:class:`ttt.session.monitor.StreamMonitor`).
    """
    keep = (lambda t: t.clone()) if copy else (lambda t: t)  # noqa: E731
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
                "w_norm": keep(s.w_norm), "w_drift": keep(s.w_drift),
                "w_rel_change": s.w_drift / s.w0_norm.clamp_min(torch.finfo(torch.float32).tiny),
                "clip_events": keep(s.clip_events),
                "updates": keep(s.updates),
                "last_delta_norm": keep(s.last_delta_norm),
                "chunk_fill": keep(s.pos),
                "inner_loss_initial": keep(s.inner_loss[:, 0]),
                "inner_loss_before": keep(s.inner_loss[:, 1]),
                "inner_loss_after": keep(s.inner_loss[:, 2]),
                "gain_sum": keep(s.gain_stats[:, 0]), "gain_initial_abs_sum": keep(s.gain_stats[:, 1]),
                "gain_positive": keep(s.gain_stats[:, 2]), "gain_chunks": keep(s.gain_stats[:, 3]),
            })
    return out


def _with_gain(record: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if record:
        record["inner_gain"] = record["inner_loss_initial"] - record["inner_loss_before"]
    return record


def chunk_telemetry(lm: nn.Module) -> dict[int, torch.Tensor]:
    """Per In-Place TTT layer, the chunk updates logged since the last call (the log is emptied):
    a [B, n, len(CHUNK_FIELDS)] float64 device tensor, one record per chunk, the state right after
    that chunk's update (``chunk_rows`` turns a row into telemetry rows). No host sync: transfer
    it together with whatever else the caller reads. Layers without a log (the hybrid) are absent.

    Inside a streamed block of whole chunks the fast weights of the middle chunks are never formed
    (dual form): their ‖W‖ and ‖W − W^(0)‖ come from the update's own inner products
    (‖W + cΔW‖² = ‖W‖² + 2c⟨W, ΔW⟩ + c²‖ΔW‖², float64); every call's last chunk is read off W."""
    out = {}
    for index, layer in ttt_layers(lm).items():
        log = getattr(layer, "chunk_log", None)
        if log is None or getattr(layer, "_streaming_state", None) is None:
            continue
        d = len(CHUNK_FIELDS)
        records = torch.cat(log, dim=1) if log else torch.zeros(
            layer._streaming_state.batch_size, 0, d, dtype=torch.float64,
            device=layer.w_down.device)
        log.clear()
        out[index] = records
    return out


def chunk_rows(values: list[float]) -> list[dict[str, float]]:
    """Telemetry rows (the keys of :func:`ttt_state` but ``chunk_fill``, 0 at a chunk's end) from
    one batch row's records flattened to host floats (``len(CHUNK_FIELDS)`` per chunk); records of
    a row that did not update are left out."""
    d = len(CHUNK_FIELDS)
    rows = []
    for at in range(0, len(values), d):
        row = dict(zip(CHUNK_FIELDS, values[at:at + d]))
        if not row.pop("valid"):
            continue
        row["chunk_fill"] = 0.0
        rows.append(_with_gain(row))
    return rows


# ---- the structured log line (seed 000 item 10: "log line structure stable") ------------------

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
