"""The fast-weight stabiliser (``TTTConfig.decay`` / ``reset_every``), an option beyond the
official In-Place TTT, whose fast weights only ever accumulate updates.

Semantics, per chunk i = 0, 1, … of a stream (chunk i is computed with W^(i), as without it):

    W ← W^(i) + lr·clip(ΔW_i)                       (the official update)
    W ← W^(0) + γ·(W − W^(0))                        (decay γ = ``decay``, after the update)
    W ← W^(0)  if (i + 1) is a multiple of N         (N = ``reset_every``)
    W^(i+1) = W

so W^(i) − W^(0) = Σ_{j<i, ⌊j/N⌋ = ⌊i/N⌋} γ^(i−j) c_j ΔW_j with c_j = lr·min(1, τ/‖ΔW_j‖_F):
chunk j's update reaches chunk i with the weight :func:`carry` (i, j). Without the stabiliser
every weight is 1 and the code paths of :mod:`ttt.core.inplace_math` run unchanged (bitwise).

Two paths use this module: the parallel form (:func:`stabilised_dual_form_output`, the dual form
with those weights on the Gram products) and the streaming chunk update
(``TTTGating.update_full_chunks``, through :func:`keep_factor` and :func:`stabilise_`), which
counts chunks by the stream's applied updates (``TTTState.updates``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ttt.core.inplace_math import apply_fast_weight, scaled_targets


def carry(i: torch.Tensor, j: torch.Tensor, decay: float | None, reset_every: int | None,
          strict: bool = True) -> torch.Tensor:
    """Weight with which chunk j's update is still in W^(i): γ^(i−j) if j < i (``strict``; j ≤ i
    otherwise) and no reset falls between them (⌊i/N⌋ = ⌊j/N⌋), else 0. Broadcasts i against j;
    float64 (γ^k of a long stream underflows to 0, as the weight itself does)."""
    i, j = torch.broadcast_tensors(i, j)
    weight = torch.ones(i.shape, dtype=torch.float64, device=i.device)
    if decay is not None and decay < 1:
        weight = weight * torch.pow(torch.tensor(float(decay), dtype=torch.float64),
                                    (i - j).clamp_min(0).double())
    live = (j < i) if strict else (j <= i)
    if reset_every is not None:
        live = live & (torch.div(i, reset_every, rounding_mode="floor")
                       == torch.div(j, reset_every, rounding_mode="floor"))
    return weight * live


def keep_factor(updates: torch.Tensor, decay: float | None, reset_every: int | None) -> torch.Tensor:
    """Per row, the factor k of W ← W^(0) + k·(W − W^(0)) after an update that brought the
    row's applied-update count to ``updates``: γ (1 without decay), or 0 on a reset chunk."""
    keep = torch.full(updates.shape, 1.0 if decay is None else float(decay), device=updates.device)
    if reset_every is not None:
        keep = keep.masked_fill(updates % reset_every == 0, 0.0)
    return keep


def stabilise_(w: torch.Tensor, w0: torch.Tensor, keep: torch.Tensor, rows: torch.Tensor) -> None:
    """In place, for the rows in ``rows``: W ← W^(0) + keep·(W − W^(0)); w [B, d, hid] fp32,
    w0 [d, hid], keep [B], rows [B] bool."""
    w.copy_(torch.where(rows[:, None, None], torch.lerp(w0, w, keep[:, None, None]), w))


def stabilised_dual_form_output(z: torch.Tensor, x0: torch.Tensor, w0: torch.Tensor,
                                conv_weight: torch.Tensor | None, w_target: torch.Tensor | None,
                                padding: str, chunk: int, lr: float, tau: float | None, block: int,
                                decay: float | None, reset_every: int | None) -> torch.Tensor:
    """:func:`ttt.core.inplace_math.dual_form_output` with the stabiliser: z [B, T, hid],
    x0 [B, T, d] → O [B, T, d] in z's dtype.

    O_s = z_s W^(0)ᵀ + Σ_t carry(i(s), j(t)) (z_s·z_t) c_j v̂_t. Tokens go in blocks of ``block``
    (a multiple of ``chunk``); inside a block the Gram product is masked by the carry weights
    (the whole block × block rectangle, not the unstabilised form's recursive triangle); a block
    starts from the drift D = W^(i₀) − W^(0) at its first chunk i₀ (fp32 [B, d, hid]), which
    reaches chunk i of the block with carry(i, i₀). Memory stays one d×hid state per block.
    """
    T = z.shape[1]
    v_scaled = scaled_targets(z, x0, conv_weight, w_target, padding, chunk, lr, tau)  # c_j v̂_t
    if v_scaled is None:
        return F.linear(z, w0.to(z.dtype))
    U = v_scaled.shape[1]
    chunk_of = torch.arange(T, device=z.device) // chunk
    block = max(chunk, block // chunk * chunk)
    weight = lambda i, j, strict=True: carry(i, j, decay, reset_every, strict).to(z.dtype)  # noqa: E731
    parts, drift = [], None
    for lo in range(0, T, block):
        hi, src = min(lo + block, T), min(lo + block, U)
        zb, query = z[:, lo:hi], chunk_of[lo:hi]
        out = F.linear(zb, w0.to(z.dtype))
        if drift is not None:
            out = out + weight(query, query[:1], strict=False)[:, None] * apply_fast_weight(
                zb, drift.to(z.dtype))
        if src > lo:
            gram = zb @ z[:, lo:src].transpose(1, 2) * weight(query[:, None], chunk_of[None, lo:src])
            out = out + gram @ v_scaled[:, lo:src]
        parts.append(out)
        if hi < T:  # the drift at the next block's first chunk
            nxt = chunk_of[hi:hi + 1]
            fresh = ((v_scaled[:, lo:src] * weight(nxt, chunk_of[lo:src])[:, None]).transpose(1, 2)
                     @ z[:, lo:src]).float()
            drift = fresh if drift is None else drift * carry(
                nxt, query[:1], decay, reset_every, strict=False).float() + fresh
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
