"""Fast-weight telemetry, read off the streaming state on demand (never on the per-token path)."""
from __future__ import annotations

import torch
from torch import nn

from .surgery import ttt_layers


def ttt_state(lm: nn.Module) -> dict[int, dict[str, torch.Tensor]]:
    """Per TTT layer (by index), device tensors with one value per batch row:

    ``w_norm`` ‖W‖_F, ``w_drift`` ‖W − W^(0)‖_F, ``clip_events``, ``updates``,
    ``last_delta_norm`` (‖ΔW‖_F of the last update, before clipping), ``chunk_fill``, and the
    Figure-5 inner losses ℓ(W) = −⟨W, ΔW⟩_F of the last updated chunk under W^(0), before and
    after its update (``inner_loss_initial/before/after``).
    Empty dict entries for layers that are not streaming.
    """
    out: dict[int, dict[str, torch.Tensor]] = {}
    for index, layer in ttt_layers(lm).items():
        s = layer._streaming_state
        if s is None:
            out[index] = {}
            continue
        with torch.no_grad():
            out[index] = {
                "w_norm": torch.linalg.vector_norm(s.w, dim=(-2, -1)),
                "w_drift": torch.linalg.vector_norm(s.w - s.w0[None], dim=(-2, -1)),
                "clip_events": s.clip_events.clone(),
                "updates": s.updates.clone(),
                "last_delta_norm": s.last_delta_norm.clone(),
                "chunk_fill": s.pos.clone(),
                "inner_loss_initial": s.inner_loss[:, 0].clone(),
                "inner_loss_before": s.inner_loss[:, 1].clone(),
                "inner_loss_after": s.inner_loss[:, 2].clone(),
            }
    return out
