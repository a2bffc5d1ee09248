"""The In-Place TTT chunk update, as pure tensor code (no moshi import).

Notation (docs/architecture.md): Z = SiLU(h W_gateᵀ) ⊙ (h W_upᵀ) ∈ ℝ^{C×hid} for one chunk of C tokens,
X₀ the target source (``TTTConfig.target_source``: the summed token embeddings, or the MLP's
own normed input h for 'hidden_states'; the math is the same), V̂ = Conv1D(X₀) W_targetᵀ ∈ ℝ^{C×d},
ΔW = V̂ᵀ Z ∈ ℝ^{d×hid}, clipped to Frobenius norm τ before the learning rate,
W^(i+1) = W^(i) + lr · clip(ΔW_i). Chunk i is computed with W^(i) ("apply, then update").

All update math runs in fp32 whatever the model dtype, so every execution mode (parallel,
streaming, CUDA graphs) produces the same fast weights from the same buffered Z and X₀.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def chunk_target(x0: torch.Tensor, conv_weight: torch.Tensor | None,
                 w_target: torch.Tensor | None, padding: str,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """V̂ for whole chunks: x0 [N, C, d] → [N, C, d] in ``dtype``, zero padded at the chunk edges.

    'right': full conv, weight [d, d, k], target_t = Σ_j W[:, :, j] x_{t+j}  (t … t+k−1);
             the weight may also come as :func:`conv_as_matrix` of it.
    'center': depthwise conv, weight [d, 1, k], target_t = Σ_j w[:, 0, j] x_{t−(k−1)/2+j}.
    Ablations (paper Fig. 3c): ``conv_weight`` None = no conv (target_t from x_t alone),
    ``w_target`` None = identity projection.
    """
    N, C, d = x0.shape
    x = x0.to(dtype)
    if conv_weight is None:
        y = x
    elif padding == "right":
        # One GEMM per tap on the unshifted tokens, the products added shifted in place (no
        # padded or concatenated copy of X₀; cuDNN's conv1d with d×d×k weights was several
        # times slower on an H100).
        matrix = (conv_weight if conv_weight.dim() == 2 else conv_as_matrix(conv_weight)).to(dtype)
        y = F.linear(x, matrix[:, :d])
        for j in range(1, matrix.shape[1] // d):
            if j < C:
                # add_ on the view (``y[...] +=`` would also copy the sum back onto itself)
                y[:, :C - j].add_(F.linear(x, matrix[:, j * d:(j + 1) * d])[:, j:])
    elif padding == "center":
        half = (conv_weight.shape[-1] - 1) // 2
        xt = F.pad(x.transpose(1, 2), (half, half))
        y = F.conv1d(xt, conv_weight.to(dtype), groups=d).transpose(1, 2)
    else:  # pragma: no cover - validated by TTTConfig
        raise ValueError(f"conv_padding: unknown {padding!r}")
    return y if w_target is None else F.linear(y, w_target.to(dtype))


def conv_as_matrix(conv_weight: torch.Tensor) -> torch.Tensor:
    """[d, d, k] full conv weight → [d, k·d] so that tap j multiplies columns j·d … (j+1)·d."""
    d, _, k = conv_weight.shape
    return conv_weight.permute(0, 2, 1).reshape(d, k * d)


def chunk_delta(z: torch.Tensor, v_hat: torch.Tensor) -> torch.Tensor:
    """ΔW = V̂ᵀ Z per batch row: z [N, C, hid], v_hat [N, C, d] → [N, d, hid] (fp32)."""
    return torch.matmul(v_hat.float().transpose(1, 2), z.float())


def clip_scale(delta: torch.Tensor, tau: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frobenius clip factor min(1, τ/‖ΔW‖_F) per row, the norms, and whether each row clipped.

    Returns (scale [N], norm [N], clipped [N] bool). With τ None the scale is 1 and nothing clips.
    """
    norm = torch.linalg.vector_norm(delta, dim=(-2, -1))
    return clip_factor(norm, tau), norm, (norm > tau) if tau is not None else torch.zeros_like(
        norm, dtype=torch.bool)


def clip_factor(norm: torch.Tensor, tau: float | None) -> torch.Tensor:
    """min(1, τ/‖ΔW‖_F), or 1 when clipping is off."""
    if tau is None:
        return torch.ones_like(norm)
    return (tau / norm.clamp_min(torch.finfo(norm.dtype).tiny)).clamp(max=1.0)


def apply_fast_weight(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """O = Z Wᵀ in the dtype of z. w is [d, hid] (shared) or [B, d, hid] (one per row)."""
    w = w.to(z.dtype)
    if w.dim() == 2:
        return F.linear(z, w)
    if w.shape[0] == 1:
        return F.linear(z, w[0])
    return torch.matmul(z, w.transpose(1, 2))



def dual_form_output(z: torch.Tensor, x0: torch.Tensor, w0: torch.Tensor,
                     conv_weight: torch.Tensor | None, w_target: torch.Tensor | None, padding: str, chunk: int, lr: float,
                     tau: float | None, block: int) -> torch.Tensor:
    """Parallel In-Place TTT without per-chunk fast weights (the dual form), z [B, T, hid],
    x0 [B, T, d] → O [B, T, d] in z's dtype; w0 fp32 or already in z's dtype.

    O_s = z_s W^(0)ᵀ + Σ_{t in an earlier chunk} c_{chunk(t)} (z_s·z_t) v̂_t with
    c_j = lr · min(1, τ/‖ΔW_j‖_F), and ‖ΔW_j‖²_F = Σ (V̂_j V̂_jᵀ) ⊙ (Z_j Z_jᵀ) from C×C Grams, so no
    d×hid matrix is formed to clip. Tokens go in blocks of ``block`` (rounded to a multiple of
    ``chunk``). A block starts from W_b = W^(0) + Σ_{earlier blocks} c_j ΔW_j (fp32, one d×hid
    state folded and cast once per block: O = Z_b W_bᵀ costs what upstream's down projection
    costs); inside the block each chunk adds its product with the block's earlier chunks (a
    block-lower-triangular Gram product, :func:`_add_chunk_causal`). A sequence of at most one block never creates a d×hid
    tensor. Per token, the Gram work grows with the block and the fold cost shrinks with it;
    4096 was the better side of that trade on an H100 at 7B. Targets and Grams run in the model dtype (tensor cores, as attention does); norms,
    clip factors and the state are fp32. The first chunk is exactly Z W^(0)ᵀ.
    """
    T = z.shape[1]
    v_scaled = scaled_targets(z, x0, conv_weight, w_target, padding, chunk, lr, tau)
    if v_scaled is None:
        return F.linear(z, w0.to(z.dtype))
    U = v_scaled.shape[1]
    block = max(chunk, block // chunk * chunk)
    parts, w_fast = [], None  # w_fast: W^(0) + Σ c_j ΔW_j over earlier blocks [B, d, hid] fp32
    for lo in range(0, T, block):
        hi = min(lo + block, T)
        if lo > 0:
            w_fast = _fold(w0 if w_fast is None else w_fast, v_scaled[:, lo - block:lo],
                           z[:, lo - block:lo], fresh=w_fast is None)
        out = apply_fast_weight(z[:, lo:hi], w0 if w_fast is None else w_fast.to(z.dtype))
        _add_chunk_causal(out, z[:, lo:hi], v_scaled[:, lo:min(hi, U)], chunk)
        parts.append(out)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def scaled_targets(z: torch.Tensor, x0: torch.Tensor, conv_weight: torch.Tensor | None,
                   w_target: torch.Tensor | None, padding: int, chunk: int, lr: float,
                   tau: float | None) -> torch.Tensor | None:
    """ṽ_t = c_j v̂_t [B, U, d] for the U tokens of the chunks that update (those followed by at
    least one token), c_j = lr × the clip factor of ‖ΔW_j‖_F, the norm taken from the chunk's two
    Gram matrices (‖V̂ᵀZ‖² = Σ (V̂V̂ᵀ)∘(ZZᵀ)) so no d×hid ΔW_j exists; None when no chunk updates.
    Shared by the plain and the stabilised dual forms."""
    B, T, hid = z.shape
    d = x0.shape[-1]
    n_upd = (T - 1) // chunk
    if n_upd == 0:
        return None
    U = n_upd * chunk
    v_hat = chunk_target(x0[:, :U].reshape(B * n_upd, chunk, d), conv_weight, w_target, padding,
                         dtype=z.dtype)
    zc = z[:, :U].reshape(B * n_upd, chunk, hid)
    sq_norm = ((v_hat @ v_hat.transpose(1, 2)).float() * (zc @ zc.transpose(1, 2)).float()).sum((1, 2))
    c = lr * clip_factor(sq_norm.clamp_min(0).sqrt(), tau)
    return (v_hat * c.to(z.dtype)[:, None, None]).reshape(B, U, d)


def _add_chunk_causal(out: torch.Tensor, z: torch.Tensor, v: torch.Tensor, chunk: int) -> None:
    """out_s += Σ_{t: chunk(t) < chunk(s)} (z_s·z_t) v_t, in place, for one block: out/z over its
    tokens, v over its source tokens (a prefix). Split at a chunk boundary near the middle: the
    second half's queries see every first-half source (one rectangular Gram product, no mask),
    then each half recursively — the triangle's FLOPs in a few large GEMMs rather than one
    256-row product per chunk."""
    n, m = z.shape[1], v.shape[1]
    if n <= chunk or m == 0:
        return
    half = (n // chunk + 1) // 2 * chunk
    first = min(half, m)
    gram = z[:, half:] @ z[:, :first].transpose(1, 2)
    out[:, half:].baddbmm_(gram, v[:, :first])
    _add_chunk_causal(out[:, :half], z[:, :half], v[:, :first], chunk)
    _add_chunk_causal(out[:, half:], z[:, half:], v[:, half:], chunk)


def _fold(w: torch.Tensor, v: torch.Tensor, z: torch.Tensor, fresh: bool) -> torch.Tensor:
    """W + vᵀ z for one block: w [d, hid] (W^(0)) or [B, d, hid] fp32, v [B, n, d], z [B, n, hid].

    On CUDA with a half-precision model the product accumulates straight into the fp32 state
    (``addmm`` with ``out_dtype``: one pass over the d×hid state, no model-dtype temporary);
    elsewhere the product is formed in the model dtype and added."""
    if fresh:
        w = w.float()[None].expand(v.shape[0], *w.shape).clone()
    if torch.is_grad_enabled():
        return w + v.transpose(1, 2) @ z
    if w.is_cuda and v.dtype in (torch.bfloat16, torch.float16):
        for b in range(v.shape[0]):
            torch.addmm(w[b], v[b].t(), z[b], out_dtype=torch.float32, out=w[b])
        return w
    return w.add_(v.transpose(1, 2) @ z)
