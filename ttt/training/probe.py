"""Figure-5 inner losses and fast-weight norms of the In-Place layers, logged while training
(docs/training.md): a collapse of the fast weights shows while it happens."""
from __future__ import annotations

import torch

from ttt.core.inplace_math import chunk_delta, chunk_target, clip_factor
from ttt.moshi.gating import TTTGating, gated_hidden
from ttt.moshi.surgery import ttt_layers


class InnerProbe:
    """Captures each In-Place layer's input on one forward and recomputes, for batch row 0, the
    per-chunk inner losses ℓ(W⁽⁰⁾), ℓ(W⁽ⁱ⁾) and ℓ(W⁽ⁱ⁺¹⁾) on chunk i (means over chunks), ‖W⁽⁰⁾‖
    and the relative change ‖W_end − W⁽⁰⁾‖/‖W⁽⁰⁾‖ (explicit fast weights; logging steps only)."""

    def __init__(self, lm) -> None:
        self.inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.handles = []
        for i, layer in ttt_layers(lm).items():
            if isinstance(layer, TTTGating):
                self.handles.append(layer.register_forward_hook(self._hook(i)))
        self.layers = ttt_layers(lm)

    def _hook(self, index: int):
        def hook(module, args, _out):
            self.inputs[index] = (args[0][:1].detach(), module._tap.x0[:1].detach())
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        out = {}
        for i, (x, x0) in sorted(self.inputs.items()):
            layer = self.layers[i]
            cfg = layer.cfg
            z = gated_hidden(layer.linear_in.weight, layer.activation, x).float()
            C = cfg.chunk_size
            n = (z.shape[1] - 1) // C
            w0 = layer.w_down.float()
            prefix = f"l{i}_"
            out[prefix + "w0_norm"] = float(w0.norm())
            if n == 0:
                continue
            tg = layer.target_generator
            v = chunk_target(x0[0, :n * C].reshape(n, C, -1), tg.conv_weight, tg.projection,
                             cfg.conv_padding)
            deltas = chunk_delta(z[0, :n * C].reshape(n, C, -1), v)
            steps = deltas * (cfg.lr * clip_factor(deltas.norm(dim=(1, 2)), cfg.clip))[:, None, None]
            w_before = w0[None] + torch.cumsum(steps, 0) - steps  # W^(i) for chunk i
            inner = lambda w: float(-(w * deltas).sum((1, 2)).mean())  # noqa: E731
            out[prefix + "inner_w0"] = inner(w0[None])
            out[prefix + "inner_before"] = inner(w_before)
            out[prefix + "inner_after"] = inner(w_before + steps)
            w_end = w0 + steps.sum(0)
            out[prefix + "w_norm"] = float(w_end.norm())
            out[prefix + "w_rel_change"] = float((w_end - w0).norm() / w0.norm())
        self.inputs.clear()
        return out
