"""Module surgery on an unforked moshi ``LMModel``: the only place that knows moshi's module names."""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn
from moshi.modules.gating import ActivationGating
from moshi.modules.streaming import StreamingModule
from moshi.modules.transformer import StreamingTransformerLayer

from ttt.base.config import TTTConfig
from ttt.moshi.gating import TTTGating
from ttt.moshi.inplace_target import EmbeddingTap
from ttt.moshi.ttt_mlp import HybridTransformerLayer, TTTMLPBranch


def apply_ttt(lm: nn.Module, cfg: TTTConfig) -> nn.Module:
    """Turn the chosen main-transformer layers' gated MLP into In-Place TTT, in place.

    ``cfg.enabled=False`` returns the model untouched (bitwise upstream). The new parameters are
    initialised from the existing ``linear_in`` / ``linear_out``, so the first chunk is exactly the
    pretrained model. Must run before any streaming context is opened on ``lm``.
    """
    if not isinstance(cfg, TTTConfig):
        raise TypeError(f"apply_ttt: cfg must be a TTTConfig, got {type(cfg).__name__}")
    if not cfg.enabled:
        return lm
    if getattr(lm, "_streaming_state", None) is not None:
        raise RuntimeError("apply_ttt: the model is streaming; apply TTT before lm.streaming()")
    if "_ttt_originals" in lm.__dict__:
        raise RuntimeError("apply_ttt: TTT is already applied to this model")
    layers = lm.transformer.layers
    indices = cfg.layer_indices(len(layers))
    if cfg.variant == "ttt_mlp":
        return _apply_hybrid(lm, cfg, indices)
    tap = EmbeddingTap()
    originals = {}
    for i in indices:
        layer = layers[i]
        gating = layer.gating
        if not isinstance(gating, ActivationGating) or not isinstance(gating.linear_in, nn.Linear):
            raise ValueError(f"ttt.layers: layer {i} has no plain gated MLP ({type(gating).__name__}); "
                             "TTT needs moshi's ActivationGating with nn.Linear weights")
        originals[i] = gating
        layer.gating = TTTGating(gating.linear_in, gating.linear_out, gating.activation, cfg, tap)
        layer.gating.train(layer.training)  # a new module starts in training mode
    if cfg.target_source == "embeddings":  # 'hidden_states' reads the layer's own input
        tap.attach(lm)
    lm.ttt_tap = tap
    lm.ttt_config = cfg
    lm.__dict__["_ttt_originals"] = originals  # plain dict: not submodules, not in the state dict
    _forget_streaming_children(lm)
    return lm


def _apply_hybrid(lm: nn.Module, cfg: TTTConfig, indices: list[int]) -> nn.Module:
    """TTT-MLP hybrid: a gated fast-weight MLP branch after the chosen layers' self-attention,
    installed by swapping the layer's class for a subclass (no upstream parameter changes)."""
    layers = lm.transformer.layers
    originals = {}
    for i in indices:
        layer = layers[i]
        if type(layer) is not StreamingTransformerLayer:
            raise ValueError(f"ttt.layers: layer {i} is a {type(layer).__name__}, not moshi's "
                             "StreamingTransformerLayer")
        attn = layer.self_attn
        heads = cfg.mlp_heads or attn.num_heads
        device = next(layer.parameters()).device
        layer.ttt_mlp = TTTMLPBranch(attn.embed_dim, heads, cfg, device=device)
        layer.ttt_mlp.train(layer.training)  # a new module starts in training mode
        originals[i] = type(layer)
        layer.__class__ = HybridTransformerLayer
    lm.ttt_tap = None
    lm.ttt_config = cfg
    lm.__dict__["_ttt_originals"] = originals
    _forget_streaming_children(lm)
    return lm


def _swap(layer: nn.Module, original) -> nn.Module | type:
    """Put ``original`` (a gating module or a layer class) back; returns what it replaced."""
    if isinstance(original, type):
        current, layer.__class__ = type(layer), original
        return current
    current, layer.gating = layer.gating, original
    return current


def remove_ttt(lm: nn.Module) -> nn.Module:
    """Undo :func:`apply_ttt`: the original gated MLPs (same weights) and no embedding hooks.

    Lets one job run the TTT-off twin of a model without building it twice.
    """
    if getattr(lm, "_streaming_state", None) is not None:
        raise RuntimeError("remove_ttt: the model is streaming")
    originals = lm.__dict__.pop("_ttt_originals", None)
    if originals is None:
        return lm
    for i, original in originals.items():
        layer = lm.transformer.layers[i]
        _swap(layer, original)
        if isinstance(original, type):
            del layer.ttt_mlp
    for handle in lm.ttt_tap.handles if lm.ttt_tap is not None else []:
        handle.remove()
    del lm.ttt_tap, lm.ttt_config
    _forget_streaming_children(lm)
    return lm


@contextmanager
def ttt_disabled(lm: nn.Module):
    """Temporarily run the model with its original gated MLPs (the TTT-off twin), keeping the
    TTT modules and their weights to put back afterwards."""
    originals = lm.__dict__.get("_ttt_originals") or {}
    if getattr(lm, "_streaming_state", None) is not None:
        raise RuntimeError("ttt_disabled: the model is streaming")
    swapped = {i: _swap(lm.transformer.layers[i], original) for i, original in originals.items()}
    _forget_streaming_children(lm)
    try:
        yield lm
    finally:
        for i, current in swapped.items():
            _swap(lm.transformer.layers[i], current)
        _forget_streaming_children(lm)


def ttt_layers(lm: nn.Module) -> dict[int, TTTGating | TTTMLPBranch]:
    """TTT modules by main-transformer layer index (In-Place gating or TTT-MLP branch); a layer
    whose TTT is temporarily disabled (:func:`ttt_disabled`) is not listed."""
    out = {}
    for i, layer in enumerate(lm.transformer.layers):
        if isinstance(layer.gating, TTTGating):
            out[i] = layer.gating
        elif isinstance(layer, HybridTransformerLayer):
            out[i] = layer.ttt_mlp
    return out


def _forget_streaming_children(model: nn.Module) -> None:
    """moshi caches each streaming module's children on first use; drop the caches after surgery."""
    for module in model.modules():
        if isinstance(module, StreamingModule):
            module._cached_children = None
