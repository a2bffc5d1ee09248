"""One pass over the fast weights after an update: W → its model-dtype copy, ‖W‖_F and
‖W − W^(0)‖_F per row, read together (a Triton kernel on CUDA).

After every chunk update (or whole-chunk block) the layer needs the model-dtype copy of W that
the next tokens multiply with, and the two norms telemetry reads. Done one by one these were four
passes over the 46 M fp32 elements of a 7B layer's W (the cast, ‖W‖, and ‖W − W^(0)‖ formed in
slabs: a subtraction pass and a norm pass) and ≈ 55 kernel launches; here W and W^(0) are read
once and the copy written once. Partial sums per program, then summed by torch (no atomics:
the same inputs give the same bits every time). Values equal the unfused path within fp32
summation order (the copy is bitwise: one rounding of each element). Elsewhere (CPU, no
Triton) :func:`apply_copy_and_norms` runs the unfused path.
"""
from __future__ import annotations

import warnings

import torch

from ttt.core.chunk_stats import weight_distance

try:  # Triton comes with torch's CUDA wheels; CPU-only installs lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

_broken = False  # set once the kernel failed to build on this machine

# Elements per program: BLOCK lanes × ITERS steps (a 7B layer's W: ≈ 700 programs per row).
BLOCK, ITERS = 1024, 64


if triton is not None:
    @triton.jit
    def _copy_and_norms_kernel(w_ptr, w0_ptr, out_ptr, part_ptr, n, programs,
                               STORE: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr):
        pid = tl.program_id(0)
        row = tl.program_id(1).to(tl.int64)  # row * n may pass 2**31 for a batch of 7B rows
        base = pid * BLOCK * ITERS
        lanes = tl.arange(0, BLOCK)
        sq = tl.zeros([BLOCK], dtype=tl.float32)
        drift = tl.zeros([BLOCK], dtype=tl.float32)
        for i in range(ITERS):
            offs = base + i * BLOCK + lanes
            mask = offs < n
            w = tl.load(w_ptr + row * n + offs, mask=mask, other=0.0)
            w0 = tl.load(w0_ptr + offs, mask=mask, other=0.0)
            if STORE:
                tl.store(out_ptr + row * n + offs, w.to(out_ptr.dtype.element_ty), mask=mask)
            sq += w * w
            diff = w - w0
            drift += diff * diff
        tl.store(part_ptr + (row * programs + pid) * 2, tl.sum(sq, axis=0))
        tl.store(part_ptr + (row * programs + pid) * 2 + 1, tl.sum(drift, axis=0))


def fused_copy_and_norms(w: torch.Tensor, w0: torch.Tensor, out: torch.Tensor | None,
                         w_norm: torch.Tensor, w_drift: torch.Tensor) -> None:
    """The Triton pass: ``out`` [B, d, hid] ← W [B, d, hid] fp32 in out's dtype (None: W is its
    own copy), ``w_norm`` [B] ← ‖W‖_F, ``w_drift`` [B] ← ‖W − w0‖_F, w0 [d, hid] fp32."""
    B = w.shape[0]
    n = w0.numel()
    assert w.is_contiguous() and w0.is_contiguous() and w.numel() == B * n
    programs = triton.cdiv(n, BLOCK * ITERS)
    part = torch.empty(B, programs, 2, device=w.device, dtype=torch.float32)
    store = out is not None
    if store:
        assert out.is_contiguous() and out.shape == w.shape
    _copy_and_norms_kernel[(programs, B)](w, w0, out if store else w, part, n, programs,
                                          STORE=store, BLOCK=BLOCK, ITERS=ITERS)
    sums = part.sum(1).sqrt_()
    w_norm.copy_(sums[:, 0])
    w_drift.copy_(sums[:, 1])


def apply_copy_and_norms(w: torch.Tensor, w0: torch.Tensor, w_apply: torch.Tensor,
                         w_norm: torch.Tensor, w_drift: torch.Tensor) -> None:
    """What follows every update of W: the copy the next tokens use (``w_apply``, unless it is W
    itself) and the two norms, fused on CUDA; the unfused path elsewhere."""
    global _broken
    if triton is not None and not _broken and w.is_cuda and w.is_contiguous() \
            and w0.is_contiguous() and w_apply.is_contiguous():
        try:
            fused_copy_and_norms(w, w0, None if w_apply is w else w_apply, w_norm, w_drift)
            return
        except Exception as exc:  # a Triton that cannot build the kernel here: the unfused path
            _broken = True
            warnings.warn(f"fused W pass unavailable ({type(exc).__name__}: {exc}); "
                          "using the unfused path")
    if w_apply is not w:
        w_apply.copy_(w)
    torch.linalg.vector_norm(w, dim=(-2, -1), out=w_norm)
    w_drift.copy_(weight_distance(w, w0))
