"""An independent In-Place TTT reference, written from the paper's equations (README "The math").

Nothing here imports ``ttt``'s math: tokens are processed one at a time, the conv is an explicit
sum over taps, ΔW an explicit sum of outer products, the clip a scalar min(1, τ/‖ΔW‖_F). The
target reads X₀ (the summed embeddings, recomputed here from the tables) or, for
``target_source: hidden_states``, the layer's own input (moshi passes the normed MLP input). It is
slow on purpose and only meant for tiny models.
"""
from __future__ import annotations

import copy
import math
import types

import torch
from torch import nn
import torch.nn.functional as F


class RefTTTLayer(nn.Module):
    def __init__(self, w_in, w0, conv, w_target, padding, chunk, lr, tau, source="embeddings",
                 decay=None, reset_every=None):
        super().__init__()
        # The stabiliser (README "`TTTConfig` keys"), applied to W after each chunk's update, in
        # this order: W ← W0 + decay·(W − W0); then, after every reset_every-th update, W ← W0.
        self.decay, self.reset_every = decay, reset_every
        self.source = source  # 'embeddings': V̂ from X₀; 'hidden_states': from this layer's input
        self.w_in, self.w0, self.conv, self.w_target = w_in, w0.float(), conv, w_target
        self.padding, self.chunk, self.lr = padding, chunk, lr
        self.tau = None if tau is None or tau <= 0 else tau
        self.x0 = None
        self.delta_norms: list[list[float]] = []  # per row, per applied update
        self.clipped: list[list[bool]] = []
        # per row, per applied update: Figure 5's ℓ(W) = −Σ_t (W z_t)·v̂_t on the updated chunk
        # under W^(0), W^(i) (before) and W^(i+1) (after)
        self.inner_losses: list[list[tuple[float, float, float]]] = []
        # per row, per applied update: (‖W‖_F, ‖W − W^(0)‖_F) of the W snapshot after it (float64)
        self.w_norms: list[list[tuple[float, float]]] = []

    def target(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """v̂_s for one chunk, zero outside the chunk. Ablations (paper Fig. 3c): no conv
        (``conv`` None) takes x_s alone; no W_target (``w_target`` None) is the identity."""
        if self.conv is None:
            convolved = [x.float() for x in xs]
        else:
            convolved = self._conv(xs)
        if self.w_target is None:
            return convolved
        return [self.w_target.float() @ v for v in convolved]

    def _conv(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        C, k = len(xs), self.conv.shape[-1]
        out = []
        for s in range(C):
            acc = torch.zeros_like(xs[0])
            for j in range(k):
                src = s + j if self.padding == "right" else s - (k - 1) // 2 + j
                if 0 <= src < C:
                    if self.padding == "right":
                        acc = acc + self.conv[:, :, j].float() @ xs[src].float()
                    else:
                        acc = acc + self.conv[:, 0, j].float() * xs[src].float()
            out.append(acc)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        hid = self.w0.shape[1]
        outs = torch.zeros(B, T, self.w0.shape[0], dtype=x.dtype)
        self.delta_norms, self.clipped, self.inner_losses, self.w_norms = [], [], [], []
        for b in range(B):
            W = self.w0.clone()
            zs, xs, norms, clips, losses, w_norms = [], [], [], [], [], []
            for t in range(T):
                h = self.w_in @ x[b, t]
                z = F.silu(h[:hid]) * h[hid:]
                outs[b, t] = W.to(x.dtype) @ z
                zs.append(z)
                xs.append(x[b, t] if self.source == "hidden_states" else self.x0[b, t])
                if len(zs) == self.chunk:
                    if t < T - 1:
                        dW = torch.zeros_like(W)
                        targets = self.target(xs)
                        for v, zz in zip(targets, zs):
                            dW += torch.outer(v, zz.float())
                        n = math.sqrt(float((dW ** 2).sum()))
                        scale = 1.0 if self.tau is None else min(1.0, self.tau / n)
                        W_next = W + self.lr * scale * dW
                        if self.decay is not None:
                            W_next = self.w0 + self.decay * (W_next - self.w0)
                        if self.reset_every is not None and (len(norms) + 1) % self.reset_every == 0:
                            W_next = self.w0.clone()
                        losses.append(tuple(
                            -sum(float((w @ zz.float()) @ v) for v, zz in zip(targets, zs))
                            for w in (self.w0, W, W_next)))
                        W = W_next
                        w_norms.append((float(W.double().norm()), float((W.double() - self.w0.double()).norm())))
                        norms.append(n)
                        clips.append(self.tau is not None and n > self.tau)
                    zs, xs = [], []
            self.delta_norms.append(norms)
            self.clipped.append(clips)
            self.inner_losses.append(losses)
            self.w_norms.append(w_norms)
        return outs


def build_reference(upstream_lm: nn.Module, ttt_lm: nn.Module, layers: dict, cfg) -> nn.Module:
    """A copy of the upstream model whose TTT layers run :class:`RefTTTLayer`.

    Parameters are read from ``ttt_lm``'s TTT layers (by state-dict key, so the reference does not
    depend on our module classes). X₀ is recomputed from the embedding tables here.
    """
    ref = copy.deepcopy(upstream_lm)
    sd = ttt_lm.state_dict()
    refs = {}
    for i in layers:
        p = f"transformer.layers.{i}.gating."
        refs[i] = RefTTTLayer(sd[p + "linear_in.weight"], sd[p + "w_down"],
                              sd.get(p + "target_generator.conv1d.conv.weight"),  # None: ablated
                              sd.get(p + "target_generator.W_target.weight"),
                              cfg.conv_padding, cfg.chunk_size, cfg.lr, cfg.delta_clip_fro_norm,
                              cfg.target_source, getattr(cfg, "decay", None),
                              getattr(cfg, "reset_every", None))
        ref.transformer.layers[i].gating = refs[i]
    original = ref.forward_text

    def forward_text(self, sequence, *args):
        x0 = sum(self.emb[c](sequence[:, c + 1]) for c in range(self.num_audio_codebooks))
        x0 = x0 + self.text_emb(sequence[:, 0])
        for layer in refs.values():
            layer.x0 = x0
        return original(sequence, *args)

    ref.forward_text = types.MethodType(forward_text, ref)
    ref.ref_layers = refs
    return ref
