"""What the In-Place fast weights did, chunk by chunk, as pure tensor code (no moshi import): the
norms of W, the next-chunk gain statistics and the per-chunk telemetry record.

Everything here runs on the device without a host sync, and never forms a d×hid temporary per
chunk: inside a streamed block of whole chunks (dual form) the fast weights of the middle chunks
are never formed, so their norms come from the update's own inner products (float64).
"""
from __future__ import annotations

import torch

# Per-chunk telemetry (TTTGating.chunk_log): one record per chunk update, these columns, the state
# as it is right after that chunk's update. ``valid`` marks the rows that updated.
CHUNK_FIELDS = ("updates", "clip_events", "w_norm", "w_drift", "w_rel_change", "last_delta_norm",
                "inner_loss_initial", "inner_loss_before", "inner_loss_after",
                "gain_sum", "gain_initial_abs_sum", "gain_positive", "gain_chunks", "valid")


def weight_distance(w: torch.Tensor, w0: torch.Tensor, max_elements: int = 1 << 22) -> torch.Tensor:
    """‖w[b] − w0‖_F per row b, w [B, d, hid], w0 [d, hid]: the difference formed ``max_elements``
    at a time (a few MB), not as a B×d×hid temporary (46 M elements per layer at 7B)."""
    d, hid = w0.shape
    rows = max(1, max_elements // max(1, w.shape[0] * hid))
    sq = torch.zeros(w.shape[0], device=w.device, dtype=torch.float32)
    for lo in range(0, d, rows):
        part = torch.linalg.vector_norm(w[:, lo:lo + rows] - w0[lo:lo + rows], dim=(-2, -1))
        sq.add_(part.float().square())
    return sq.sqrt_()


def squared_norms_after_chunks(w_norm: torch.Tensor, w_drift: torch.Tensor, c: torch.Tensor,
                               delta_norm: torch.Tensor, initial: torch.Tensor,
                               before: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """‖W^(j+1)‖² and ‖W^(j+1) − W^(0)‖² after each chunk j of a block [B, n], float64, from the
    norms at the block's start ``w_norm``, ``w_drift`` [B], each chunk's step size ``c`` (lr times
    the clip factor), ‖ΔW_j‖ ``delta_norm`` and inner losses ℓ(W^(0)) ``initial``, ℓ(W^(j))
    ``before``: ‖W + cΔ‖² = ‖W‖² + 2c⟨W, Δ⟩ + c²‖Δ‖², with ⟨W^(j), ΔW_j⟩ = −ℓ(W^(j)) and
    ⟨W^(0), ΔW_j⟩ = −ℓ(W^(0)). Rounding grows along the block: the caller overwrites the last
    chunk's with the norms read off W itself."""
    c64, sq64, before64 = c.double(), delta_norm.double() ** 2, before.double()
    w_sq = w_norm.double()[:, None] ** 2 + (c64 * (c64 * sq64 - 2 * before64)).cumsum(1)
    drift_sq = w_drift.double()[:, None] ** 2 + (
        c64 * (c64 * sq64 + 2 * (initial.double() - before64))).cumsum(1)
    return w_sq, drift_sq


def add_gain_stats(gain_stats: torch.Tensor, initial: torch.Tensor, before: torch.Tensor,
                   counted: torch.Tensor) -> torch.Tensor:
    """Add chunks [B, n] (ℓ(W^(0)), ℓ(W^(j)), whether chunk j counts: j ≥ 1 and updated) to
    ``gain_stats`` [B, 4] in place (Σ gain ℓ(W^(0)) − ℓ(W^(j)), Σ |ℓ(W^(0))|, chunks with a
    positive gain, chunks); returns the statistics as they stand after each chunk [B, n, 4] (for
    the per-chunk telemetry)."""
    gain = (initial - before) * counted
    terms = torch.stack([gain, initial.abs() * counted, ((gain > 0) & counted).float(),
                         counted.float()], dim=2)
    running = gain_stats[:, None] + terms.cumsum(1)
    gain_stats.add_(torch.stack([gain.sum(1), (initial.abs() * counted).sum(1),
                                 ((gain > 0) & counted).sum(1).float(),
                                 counted.sum(1).float()], dim=1))
    return running


def chunk_record(columns: tuple[torch.Tensor, ...], w0_norm: torch.Tensor) -> torch.Tensor:
    """One float64 record per chunk, [B, n, len(CHUNK_FIELDS)], from ``columns`` [B, n] (``gains``
    [B, n, 4]) in CHUNK_FIELDS order but ``w_rel_change``, which is added here as
    ``w_drift`` / ‖W^(0)‖_F."""
    drift = columns[3].double()
    columns = (*columns[:4], drift / w0_norm.double().clamp_min(1e-300), *columns[4:])
    parts = [c.double()[..., None] if c.dim() == 2 else c.double() for c in columns]
    return torch.cat(parts, dim=-1)
