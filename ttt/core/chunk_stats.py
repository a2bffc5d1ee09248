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
                               before: torch.Tensor) -> torch.Tensor:
    """‖W^(j+1)‖² and ‖W^(j+1) − W^(0)‖² after each chunk j of a block, [B, n, 2] float64, from the
    norms at the block's start ``w_norm``, ``w_drift`` [B], each chunk's step size ``c`` (lr times
    the clip factor), ‖ΔW_j‖ ``delta_norm`` and inner losses ℓ(W^(0)) ``initial``, ℓ(W^(j))
    ``before`` [B, n]: ‖W + cΔ‖² = ‖W‖² + 2c⟨W, Δ⟩ + c²‖Δ‖², with ⟨W^(j), ΔW_j⟩ = −ℓ(W^(j)) and
    ⟨W^(0), ΔW_j⟩ = −ℓ(W^(0)). Both norms in one [B, n, 2] pass (a handful of kernels per block,
    not one per term and norm). Rounding grows along the block: the caller overwrites the last
    chunk's with the norms read off W itself."""
    c64, before64 = c.double()[:, None], before.double()
    sq_c = c64 * delta_norm.double()[:, None] ** 2
    # −2⟨W^(j), Δ⟩ and −2⟨W^(j) − W^(0), Δ⟩, as ``a − 2b`` = ``a + (−2b)`` exactly; rows [B, 2, n]
    # so that each running sum is a scan along the last dim, as one [B, n] row's would be
    inner = torch.stack([-2 * before64, 2 * (initial.double() - before64)], dim=1)
    start = torch.stack([w_norm, w_drift], dim=1).double()[..., None] ** 2
    return (start + (c64 * (sq_c + inner)).cumsum(2)).transpose(1, 2)


def add_gain_stats(gain_stats: torch.Tensor, initial: torch.Tensor, before: torch.Tensor,
                   counted: torch.Tensor) -> torch.Tensor:
    """Add chunks [B, n] (ℓ(W^(0)), ℓ(W^(j)), whether chunk j counts: j ≥ 1 and updated) to
    ``gain_stats`` [B, 4] in place (Σ gain ℓ(W^(0)) − ℓ(W^(j)), Σ |ℓ(W^(0))|, chunks with a
    positive gain, chunks); returns the statistics as they stand after each chunk [B, n, 4] (for
    the per-chunk telemetry). The four terms are formed once, as rows [B, 4, n]: each row's sum
    is the sum of that term alone."""
    weight = counted.to(initial.dtype)
    gain = (initial - before) * weight  # 0 where not counted, so gain > 0 only where counted
    # one dtype: a single concatenation kernel
    terms = torch.stack([gain, initial.abs() * weight, (gain > 0).to(gain.dtype), weight], dim=1)
    running = gain_stats[:, None] + terms.transpose(1, 2).cumsum(1)
    gain_stats.add_(terms.sum(2))
    return running


def chunk_record(counts: torch.Tensor, norms: torch.Tensor, losses: torch.Tensor,
                 gains: torch.Tensor, valid: torch.Tensor, w0_norm: torch.Tensor) -> torch.Tensor:
    """One float64 record per chunk, [B, n, len(CHUNK_FIELDS)], from columns grouped as they
    come (one cast per group, not per column): ``counts`` [B, n, 2] (updates, clip_events),
    ``norms`` [B, n, 2] (w_norm, w_drift), ``losses`` [B, n, 4] (last_delta_norm, inner losses
    initial / before / after), ``gains`` [B, n, 4], ``valid`` [B, n]; ``w_rel_change`` is added
    here as ``w_drift`` / ‖W^(0)‖_F."""
    norms = norms.double()
    rel = norms[..., 1:] / w0_norm.double().clamp_min(1e-300)
    floats = torch.cat([losses, gains.to(losses.dtype)], dim=-1).double()
    return torch.cat([counts.double(), norms, rel, floats, valid.double()[..., None]], dim=-1)
