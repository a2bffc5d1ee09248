"""The embedded default model: a tiny random moshi with moshi's stream layout, no downloads."""
from __future__ import annotations

import torch
from moshi.models import loaders

# The 7B layout (text + 8 Moshi + 8 user codebooks, moshi's delays, silu gating, interleaved rope,
# rms_norm_f32, depformer with weights per step) at toy sizes.
TINY_LM_KWARGS = dict(loaders._lm_kwargs)
TINY_LM_KWARGS.update(dim=32, num_heads=4, num_layers=4, context=256, card=24, text_card=40,
                      depformer_dim=16, depformer_dim_feedforward=32, depformer_num_heads=2,
                      depformer_num_layers=2)


def tiny_lm(seed: int = 0, dtype=torch.float32, device="cpu", **overrides):
    """Deterministic from ``seed``; built in well under a second on CPU."""
    torch.manual_seed(seed)
    return loaders.get_moshi_lm(None, lm_kwargs={**TINY_LM_KWARGS, **overrides},
                                device=device, dtype=dtype).eval()
