"""Where the In-Place TTT target V̂ = Conv1D(X₀) W_targetᵀ comes from: :class:`EmbeddingTap`
catches X₀ (the token embeddings) on its way into moshi's transformer, :class:`TargetGenerator`
holds the conv and projection weights under the seeds' state-dict keys."""
from __future__ import annotations

import torch
from torch import nn

from ttt.base.config import TTTConfig


class EmbeddingTap:
    """Holds X₀, the summed token embeddings of the current ``forward_text`` call.

    moshi passes no extra kwargs to its layers, so X₀ reaches the TTT layers through hooks.
    Without a condition fuser the transformer's input *is* X₀ (bitwise), taken by a pre-hook at no
    cost. With a fuser, moshi adds the conditioning first, so X₀ is rebuilt from forward hooks on
    the embedding tables, summed in ``forward_text``'s order (audio codebooks, then text).
    """

    def __init__(self) -> None:
        self.x0: torch.Tensor | None = None
        self.handles: list = []

    def attach(self, lm: nn.Module, from_embeddings: bool | None = None) -> None:
        if from_embeddings is None:
            from_embeddings = getattr(lm, "fuser", None) is not None
        if not from_embeddings:
            self.handles.append(lm.transformer.register_forward_pre_hook(self._take_input))
            return
        tables = [lm.emb[i] for i in range(lm.num_audio_codebooks)] + [lm.text_emb]
        for index, table in enumerate(tables):
            self.handles.append(table.register_forward_hook(self._hook(first=index == 0)))

    def _take_input(self, _module, args) -> None:
        self.x0 = args[0]

    def _hook(self, first: bool):
        def hook(_module, _inputs, output):
            self.x0 = output if first or self.x0 is None else self.x0 + output
        return hook


class _Conv(nn.Module):
    """Holds the conv weight under the seeds' key ``conv1d.conv.weight``."""

    def __init__(self, d: int, cfg: TTTConfig, **factory) -> None:
        super().__init__()
        k = cfg.conv_kernel_size
        in_per_group = d if cfg.conv_padding == "right" else 1
        self.conv = nn.Module()
        self.conv.weight = nn.Parameter(torch.zeros(d, in_per_group, k, **factory))


class TargetGenerator(nn.Module):
    """Parameters of V̂ = Conv1D(X₀) W_targetᵀ.

    Initialisation (``cfg.conv_init``): 'identity' (ours, the default) passes the current token's
    input through (a one at tap 0 for 'right', the centre tap for 'center'), so TTT acts from the
    first update even untrained; 'zero' is the official code's init (V̂ = 0: a fresh layer does
    nothing until trained). W_target is diagonal N(0, init_std²) in both, as in the official code.
    Either way the first chunk equals the pretrained model, and a trained checkpoint overwrites both.

    Orientation: V̂ = Conv1D(X) W_targetᵀ (``nn.Linear``), so ``W_target.weight`` is the transpose
    of the official projection ``P`` (used there as ``conv(X) @ P``). Official-layout weights load
    as ``W_target.weight = Pᵀ``, and their depthwise conv ``[d, 1, k]`` needs ``conv_padding:
    center`` (see docs/python-api.md).

    Ablations (``cfg.target_conv`` / ``cfg.target_projection`` off): the part is not created
    (no parameters, no state-dict keys) and :attr:`conv_weight` / :attr:`projection` are None,
    which the target computation reads as "no conv" / "identity".
    """

    def __init__(self, d: int, cfg: TTTConfig, **factory) -> None:
        super().__init__()
        if cfg.target_conv:
            self.conv1d = _Conv(d, cfg, **factory)
        if cfg.target_projection:
            self.W_target = nn.Linear(d, d, bias=False, **factory)
        with torch.no_grad():
            if cfg.target_conv and cfg.conv_init == "identity":
                tap = 0 if cfg.conv_padding == "right" else (cfg.conv_kernel_size - 1) // 2
                w = self.conv1d.conv.weight
                if cfg.conv_padding == "right":
                    w[:, :, tap] = torch.eye(d, **factory)
                else:
                    w[:, 0, tap] = 1.0
            # Drawn even when unused, so an ablation leaves the random stream of later draws as is.
            diag = torch.randn(d, device=factory["device"], dtype=torch.float32) * cfg.init_std
            if cfg.target_projection:
                self.W_target.weight.copy_(torch.diag(diag).to(self.W_target.weight.dtype))

    @property
    def conv_weight(self) -> torch.Tensor | None:
        return self.conv1d.conv.weight if hasattr(self, "conv1d") else None

    @property
    def projection(self) -> torch.Tensor | None:
        return self.W_target.weight if hasattr(self, "W_target") else None
