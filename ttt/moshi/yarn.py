"""YaRN context extension for the main transformer's rotary embedding (Peng et al. 2023).

Frequencies follow HF transformers' ``rope_type: "yarn"``: pairs whose wavelength is shorter than
L/β_fast keep their frequency, pairs longer than L/β_slow are divided by the scale s, with a linear
ramp between the floor/ceil correction dims; q and k are each multiplied by 0.1·ln(s) + 1. Keys
are cached already rotated, so the rope is fixed before streaming starts.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ttt.base.config import YarnConfig


def base_inv_freq(head_dim: int, base: float) -> torch.Tensor:
    """moshi's rope frequencies θ_i = base^(−2i/D), computed exactly as moshi computes them."""
    ds = torch.arange(head_dim // 2, dtype=torch.float32)
    return torch.exp(ds * (-math.log(base) * 2 / head_dim))


def _correction_dim(rotations: float, head_dim: int, base: float, context: int) -> float:
    """Pair index whose wavelength completes ``rotations`` turns over ``context`` tokens."""
    return head_dim * math.log(context / (rotations * 2 * math.pi)) / (2 * math.log(base))


def yarn_ramp(head_dim: int, base: float, cfg: YarnConfig) -> torch.Tensor:
    """Per pair: 0 keeps the original frequency, 1 divides it by the scale (fp32, [D/2])."""
    pairs = torch.arange(head_dim // 2, dtype=torch.float32)
    L = cfg.original_context
    if cfg.ramp == "standard":
        low = max(math.floor(_correction_dim(cfg.beta_fast, head_dim, base, L)), 0)
        high = min(math.ceil(_correction_dim(cfg.beta_slow, head_dim, base, L)), head_dim - 1)
        if low == high:
            high += 0.001
        return ((pairs - low) / (high - low)).clamp(0, 1)
    # 'seeds': our reconstruction of the seeds' variant from its description (wavelength bounds
    # β·L instead of L/β): interpolation ramps in between wavelengths β_slow·L and β_fast·L.
    wavelength = 2 * math.pi / base_inv_freq(head_dim, base)
    lo, hi = cfg.beta_slow * L, cfg.beta_fast * L
    return ((wavelength - lo) / (hi - lo)).clamp(0, 1)


def yarn_inv_freq(head_dim: int, base: float, cfg: YarnConfig) -> torch.Tensor:
    theta = base_inv_freq(head_dim, base)
    if cfg.scale == 1:
        return theta
    ramp = yarn_ramp(head_dim, base, cfg)
    return theta / cfg.scale * ramp + theta * (1 - ramp)


class YarnRotaryEmbedding(nn.Module):
    """Drop-in for moshi's ``RotaryEmbedding`` with given frequencies and q/k scaling."""

    def __init__(self, inv_freq: torch.Tensor, attention_factor: float, interleave: bool,
                 max_period: float) -> None:
        super().__init__()
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.attention_factor = attention_factor
        self.interleave = interleave
        self.max_period = max_period  # kept for code that reads it; frequencies come from inv_freq

    def forward(self, q: torch.Tensor, k: torch.Tensor, offset: torch.Tensor,
                time_before_heads: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        if time_before_heads:
            B, T, H, D = q.shape
        else:
            B, H, T, D = q.shape
        ts = offset.float().view(-1, 1) + torch.arange(T, device=q.device, dtype=torch.float32)
        ts = ts.view(B, -1, 1, 1) if time_before_heads else ts.view(B, 1, -1, 1)
        angle = self.inv_freq.to(q.device) * ts
        cos, sin = torch.cos(angle), torch.sin(angle)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        D = x.shape[-1]
        if self.interleave:
            pairs = x.view(*x.shape[:-1], D // 2, 2)
            re, im = pairs[..., 0].float(), pairs[..., 1].float()
        else:
            re, im = x[..., : D // 2].float(), x[..., D // 2:].float()
        out_re = (re * cos - im * sin) * self.attention_factor
        out_im = (re * sin + im * cos) * self.attention_factor
        if self.interleave:
            return torch.stack([out_re.to(x.dtype), out_im.to(x.dtype)], dim=-1).view(*x.shape)
        return torch.cat([out_re.to(x.dtype), out_im.to(x.dtype)], dim=-1)


def apply_yarn(lm: nn.Module, cfg: YarnConfig) -> nn.Module:
    """Replace the main transformer's shared rope with YaRN and set every attention layer's
    context (ring KV capacity) to ``cfg.resolved_context``. In place; before any streaming."""
    if not isinstance(cfg, YarnConfig):
        raise TypeError(f"apply_yarn: cfg must be a YarnConfig, got {type(cfg).__name__}")
    if getattr(lm, "_streaming_state", None) is not None:
        raise RuntimeError("apply_yarn: the model is streaming; apply YaRN before lm.streaming()")
    transformer = lm.transformer
    old = transformer.rope
    if old is None:
        raise ValueError("yarn: the main transformer has no rotary embedding to extend")
    if isinstance(old, YarnRotaryEmbedding):
        raise RuntimeError("apply_yarn: YaRN is already applied to this model")
    attn0 = transformer.layers[0].self_attn
    head_dim = attn0.embed_dim // attn0.num_heads
    rope = YarnRotaryEmbedding(yarn_inv_freq(head_dim, old.max_period, cfg), cfg.attention_factor,
                               old.interleave, old.max_period).to(next(lm.parameters()).device)
    transformer.rope = rope
    context = cfg.resolved_context
    for layer in transformer.layers:
        if layer.self_attn.rope is old:
            layer.self_attn.rope = rope
        layer.self_attn.context = context
    lm.yarn_config = cfg
    return lm
