"""The older TTT-MLP hybrid (Sun et al. 2024, arXiv 2407.04620; the seeds' Moshi-TTT; docs/python-api.md):
a fast-weight MLP per head beside attention, mixed into the residual stream through a gate.

Per layer, on the residual stream x after self-attention (what the seeds fed it):
  XQ, XK = l2norm(x W_q + b_q), l2norm(x W_k + b_k) per head; XV = x W_v + b_v
  target  = LN(XV − XK)                      (ttt_norm γ, β; the seeds' fix #2: LN of the difference)
  η_t     = lr · sigmoid(x_t w_h + b_h) / (M · head_dim)   (M = mini-batch = ``chunk_size``)
  f(u; W) = gelu_tanh(u W1 + b1) W2 + b2,   ℓ_t(W) = ½ ‖LN(f(XK_t; W)) − target_t‖²
  In mini-batch b starting from W_b, token i uses W_i = W_b − Σ_{j ≤ i, j in b} η_j ∇ℓ_j(W_b)
  (gradients at W_b, causal inside the mini-batch); W_{b+1} = W_b after its last token.
  ttt(x)_i = wo(post_norm(concat_h[XQ_i + LN(f(XQ_i; W_i))]))
  out      = x + tanh(α) ⊙ ttt(x)            (Video-DiT's residual gate, α per channel)

W_base (W1, b1, W2, b2 parameters, trained by the outer loop) is where every stream starts; the
streaming state holds each row's W_state, reset to W_base at document boundaries. The update math
runs in fp32. One function (:func:`mini_batch_segment`) serves every mode: the parallel form calls
it on whole mini-batches, streaming on whatever part of the current mini-batch arrived.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from moshi.modules.streaming import State, StreamingModule
from moshi.modules.transformer import StreamingTransformerLayer
from moshi.utils.compile import in_cuda_graph

from ttt.base.config import TTTConfig

FAST = ("W1", "b1", "W2", "b2")
LN_EPS = 1e-6


def layer_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Per-head LayerNorm over the last dim (biased variance, ε inside the root), γ/β [H, hd]."""
    mu = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=False)
    return gamma[:, None] * (x - mu) / torch.sqrt(var + LN_EPS) + beta[:, None]


def ln_l2_grad(z: torch.Tensor, target: torch.Tensor, gamma: torch.Tensor,
               beta: torch.Tensor) -> torch.Tensor:
    """∂/∂z of ½‖LN(z) − target‖² in closed form (the inner loop needs it on every token)."""
    D = z.shape[-1]
    mu = z.mean(-1, keepdim=True)
    std = torch.sqrt(z.var(-1, keepdim=True, unbiased=False) + LN_EPS)
    x_hat = (z - mu) / std
    g = (gamma[:, None] * x_hat + beta[:, None] - target) * gamma[:, None]
    return (D * g - g.sum(-1, keepdim=True) - x_hat * (g * x_hat).sum(-1, keepdim=True)) / (D * std)


def gelu_tanh_grad(z: torch.Tensor) -> torch.Tensor:
    """d/dz gelu_tanh(z)."""
    c = math.sqrt(2.0 / math.pi)
    inner = c * (z + 0.044715 * z ** 3)
    t = torch.tanh(inner)
    return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * c * (1 + 3 * 0.044715 * z * z)


def mini_batch_segment(xq, xk, target, eta, base: dict, cur: dict, gamma, beta):
    """Tokens of one mini-batch (all rows at the same offset in it), heads first:
    xq/xk/target [B, H, S, hd], eta [B, H, S]; ``base`` = W_b and ``cur`` = W_b minus the updates
    of the mini-batch's earlier tokens, each {W1 [B,H,hd,m], b1 [B,H,1,m], W2 [B,H,m,hd],
    b2 [B,H,1,hd]}. Returns (XQ + LN(f(XQ; W_i)) [B, H, S, hd], W_cur after the segment).

    Gradients are taken at W_b (the mini-batch's start), so token i's weights are
    W_cur − Σ_{j ≤ i in the segment} η_j ∇ℓ_j: a causal (lower-triangular) dual form.
    """
    z1 = xk @ base["W1"] + base["b1"]
    x2 = F.gelu(z1, approximate="tanh")
    z2 = x2 @ base["W2"] + base["b2"]
    g2 = ln_l2_grad(z2, target, gamma, beta)
    g1 = (g2 @ base["W2"].transpose(-1, -2)) * gelu_tanh_grad(z1)
    S = xq.shape[-2]
    causal = torch.ones(S, S, dtype=torch.bool, device=xq.device).tril()
    e = eta[..., None, :]  # η_j along the source axis
    a1 = torch.where(causal, (xq @ xk.transpose(-1, -2) + 1) * e, 0)
    z1q = xq @ cur["W1"] + cur["b1"] - a1 @ g1
    x2q = F.gelu(z1q, approximate="tanh")
    a2 = torch.where(causal, (x2q @ x2.transpose(-1, -2) + 1) * e, 0)
    z2q = x2q @ cur["W2"] + cur["b2"] - a2 @ g2
    out = xq + layer_norm(z2q, gamma, beta)
    eg1, eg2 = eta[..., None] * g1, eta[..., None] * g2
    new = {"W1": cur["W1"] - xk.transpose(-1, -2) @ eg1, "b1": cur["b1"] - eg1.sum(-2, keepdim=True),
           "W2": cur["W2"] - x2.transpose(-1, -2) @ eg2, "b2": cur["b2"] - eg2.sum(-2, keepdim=True)}
    return out, new


def inner_loss(xk, target, weights: dict, gamma, beta) -> torch.Tensor:
    """Mean over tokens and heads of ℓ(W) = ½‖LN(f(XK; W)) − target‖², per row [B] (Figure 5)."""
    z = F.gelu(xk @ weights["W1"] + weights["b1"], approximate="tanh") @ weights["W2"] + weights["b2"]
    return 0.5 * (layer_norm(z, gamma, beta) - target).pow(2).sum(-1).mean((1, 2))


@dataclass
class MLPState(State):
    """Per batch row: W_b (start of the current mini-batch) and W_cur (after the tokens so far)."""

    base_params: dict          # the module's W_base parameters (references, never snapshotted)
    start: SimpleNamespace     # W_b: W1, b1, W2, b2 [B, ...] fp32
    cur: SimpleNamespace       # W_cur, same layout
    xk_buf: torch.Tensor       # [B, H, M, hd] XK of the current mini-batch (Figure-5 losses)
    target_buf: torch.Tensor   # [B, H, M, hd]
    pos: torch.Tensor          # [B] long, tokens in the current mini-batch (device truth)
    updates: torch.Tensor      # [B] long, completed mini-batches
    last_delta_norm: torch.Tensor  # [B] fp32, ‖W_{b+1} − W_b‖ of the last mini-batch
    inner_loss: torch.Tensor   # [B, 3] fp32, ℓ(W_base), ℓ(W_b), ℓ(W_{b+1}) on the last mini-batch
    fill: list[int] = field(default_factory=list)  # host mirror of ``pos`` (eager mode only)

    def reset(self, reset_mask: torch.Tensor) -> None:
        """Masked rows go back to W_base with an empty mini-batch."""
        super().reset(reset_mask)
        mask = reset_mask.to(self.device)
        for name in FAST:
            start, cur = getattr(self.start, name), getattr(self.cur, name)
            w0 = self.base_params[name].detach().to(start.dtype)[None]
            m = mask.view(-1, *[1] * (w0.dim() - 1))
            start.copy_(torch.where(m, w0, start))
            cur.copy_(torch.where(m, w0, cur))
        self.pos.masked_fill_(mask, 0)
        self.fill = [0 if hit else f for f, hit in zip(self.fill, mask.tolist())]


class TTTMLPBranch(StreamingModule[MLPState]):
    """The TTT-MLP branch and its gate: ``forward(x) = x + tanh(α) ⊙ ttt(x)``.

    Parameter names follow the seeds' TTT-MLP (``wq``, ``W1``, ``ttt_norm_weight``,
    ``learnable_ttt_lr_weight``, ``post_norm``, ``gating_alpha``, …).
    """

    def __init__(self, d: int, num_heads: int, cfg: TTTConfig, device=None) -> None:
        super().__init__()
        if d % num_heads:
            raise ValueError(f"ttt.mlp_heads: {num_heads} does not divide the model dim {d}")
        self.cfg = cfg
        self.num_heads, self.head_dim = num_heads, d // num_heads
        H, hd, m = num_heads, self.head_dim, 4 * (d // num_heads)
        f = dict(device=device, dtype=torch.float32)
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(d, d, **f) for _ in range(4))
        self.post_norm = nn.LayerNorm(d, eps=LN_EPS, **f)
        self.ttt_norm_weight = nn.Parameter(torch.ones(H, hd, **f))
        self.ttt_norm_bias = nn.Parameter(torch.zeros(H, hd, **f))
        self.learnable_ttt_lr_weight = nn.Parameter(torch.empty(H, 1, d, **f))
        self.learnable_ttt_lr_bias = nn.Parameter(torch.zeros(H, 1, **f))
        self.W1 = nn.Parameter(torch.empty(H, hd, m, **f))
        self.b1 = nn.Parameter(torch.zeros(H, 1, m, **f))
        self.W2 = nn.Parameter(torch.empty(H, m, hd, **f))
        self.b2 = nn.Parameter(torch.zeros(H, 1, hd, **f))
        self.gating_alpha = nn.Parameter(torch.full((d,), cfg.gate_alpha_init, **f))
        with torch.no_grad():
            for p in (self.wq.weight, self.wk.weight, self.wv.weight, self.wo.weight,
                      self.learnable_ttt_lr_weight, self.W1, self.W2):
                p.normal_(0.0, cfg.init_std)
            for lin in (self.wq, self.wk, self.wv, self.wo):
                lin.bias.zero_()
        self.last: dict | None = None  # last call's attn/ttt/combined (diagnostics), detached

    # ---- pieces ----------------------------------------------------------------------------
    def gate(self) -> torch.Tensor:
        """tanh(α) per channel; ``cfg.gate_override`` forces α (seed 002's experiment)."""
        if self.cfg.gate_override is not None:
            return torch.full_like(self.gating_alpha, math.tanh(self.cfg.gate_override))
        return torch.tanh(self.gating_alpha)

    def inputs(self, x: torch.Tensor):
        """XQ, XK, target [B, H, T, hd] and η [B, H, T] from x [B, T, d] (fp32)."""
        B, T, d = x.shape
        H, hd = self.num_heads, self.head_dim
        heads = lambda y: y.view(B, T, H, hd).transpose(1, 2)  # noqa: E731
        xq = F.normalize(heads(self.wq(x)), dim=-1)
        xk = F.normalize(heads(self.wk(x)), dim=-1)
        xv = heads(self.wv(x))
        diff = xv - xk  # the seeds' fix #2: normalise the difference (unbiased std, ε outside)
        target = (self.ttt_norm_weight[:, None] * (diff - diff.mean(-1, keepdim=True))
                  / (diff.std(-1, keepdim=True) + 1e-5) + self.ttt_norm_bias[:, None])
        logits = torch.einsum("btd,hd->bht", x, self.learnable_ttt_lr_weight[:, 0])
        eta = torch.sigmoid(logits + self.learnable_ttt_lr_bias) * (
            self.cfg.lr / (self.cfg.chunk_size * hd))
        return xq, xk, target, eta

    def base(self, batch: int) -> dict:
        return {n: getattr(self, n).expand(batch, *getattr(self, n).shape) for n in FAST}

    def finish(self, x: torch.Tensor, heads_out: torch.Tensor) -> torch.Tensor:
        B, H, T, hd = heads_out.shape
        ttt = self.wo(self.post_norm(heads_out.transpose(1, 2).reshape(B, T, H * hd)))
        combined = x + self.gate() * ttt
        self.last = {"attn": x.detach(), "ttt": ttt.detach(), "combined": combined.detach()}
        return combined

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(self.W1.dtype)  # fp32 (or fp64 in gradient checks), whatever the model dtype
        xq, xk, target, eta = self.inputs(x)
        state = self._streaming_state
        if state is None:
            out = self._parallel(xq, xk, target, eta)
        elif in_cuda_graph():
            out = self._stream_graphed(state, xq, xk, target, eta)
        else:
            out = self._stream_eager(state, xq, xk, target, eta)
        return self.finish(x, out).to(dtype)

    def _parallel(self, xq, xk, target, eta) -> torch.Tensor:
        """Mini-batches in sequence from W_base (differentiable: the outer loop trains W_base)."""
        M, T = self.cfg.chunk_size, xq.shape[2]
        start = self.base(xq.shape[0])
        outs = []
        for lo in range(0, T, M):
            s = slice(lo, lo + M)
            out, start = mini_batch_segment(xq[:, :, s], xk[:, :, s], target[:, :, s],
                                            eta[:, :, s], start, start,
                                            self.ttt_norm_weight, self.ttt_norm_bias)
            outs.append(out)
        return torch.cat(outs, dim=2)

    def _stream_eager(self, state: MLPState, xq, xk, target, eta) -> torch.Tensor:
        """Cut the block where any row's mini-batch ends; commit full mini-batches right away."""
        M, T = self.cfg.chunk_size, xq.shape[2]
        outs, t = [], 0
        while t < T:
            seg = min(T - t, min(M - f for f in state.fill))
            s = slice(t, t + seg)
            out, cur = mini_batch_segment(xq[:, :, s], xk[:, :, s], target[:, :, s], eta[:, :, s],
                                          vars(state.start), vars(state.cur), self.ttt_norm_weight,
                                          self.ttt_norm_bias)
            self._write(state, xk[:, :, s], target[:, :, s], cur)
            state.fill = [f + seg for f in state.fill]
            outs.append(out)
            t += seg
            if any(f >= M for f in state.fill):
                self._commit(state, losses=True)
                state.fill = [0 if f >= M else f for f in state.fill]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)

    def _stream_graphed(self, state: MLPState, xq, xk, target, eta) -> torch.Tensor:
        """One token per replay, no host decisions: the commit is a device-side select.
        Figure-5 losses are not recorded under CUDA graphs (they would cost 3 MLP passes over the
        mini-batch on every token)."""
        if xq.shape[2] != 1:
            raise RuntimeError("TTT-MLP under CUDA graphs expects one token per step")
        out, cur = mini_batch_segment(xq, xk, target, eta, vars(state.start), vars(state.cur),
                                      self.ttt_norm_weight, self.ttt_norm_bias)
        self._write(state, xk, target, cur)
        self._commit(state, losses=False)
        return out

    def _write(self, state: MLPState, xk, target, cur: dict) -> None:
        S = xk.shape[2]
        index = (state.pos[:, None] + torch.arange(S, device=xk.device)[None])
        index = index[:, None, :, None].expand(-1, xk.shape[1], S, xk.shape[3])
        state.xk_buf.scatter_(2, index, xk)
        state.target_buf.scatter_(2, index, target)
        for n in FAST:
            getattr(state.cur, n).copy_(cur[n])
        state.pos.add_(S)

    def _commit(self, state: MLPState, losses: bool) -> None:
        """Rows whose mini-batch is full: W_b ← W_cur (device-side select, graph safe)."""
        full = state.pos >= self.cfg.chunk_size
        start, cur = vars(state.start), vars(state.cur)
        if losses:
            g, b = self.ttt_norm_weight, self.ttt_norm_bias
            w0 = self.base(state.pos.shape[0])
            stats = torch.stack([inner_loss(state.xk_buf, state.target_buf, w, g, b)
                                 for w in (w0, start, cur)], dim=1)
            state.inner_loss.copy_(torch.where(full[:, None], stats, state.inner_loss))
        sq = sum((cur[n] - start[n]).pow(2).flatten(1).sum(1) for n in FAST)
        state.last_delta_norm.copy_(torch.where(full, sq.sqrt(), state.last_delta_norm))
        for n in FAST:
            m = full.view(-1, *[1] * (cur[n].dim() - 1))
            start[n].copy_(torch.where(m, cur[n], start[n]))
        state.updates.add_(full.long())
        state.pos.masked_fill_(full, 0)

    def _init_streaming_state(self, batch_size: int) -> MLPState:
        device, dtype = self.W1.device, self.W1.dtype
        H, hd, M = self.num_heads, self.head_dim, self.cfg.chunk_size
        fresh = lambda: SimpleNamespace(**{n: getattr(self, n).detach()[None].repeat(  # noqa: E731
            batch_size, *[1] * getattr(self, n).dim()) for n in FAST})
        zeros = lambda *s, dt=torch.long: torch.zeros(*s, device=device, dtype=dt)  # noqa: E731
        return MLPState(batch_size, device, base_params={n: getattr(self, n) for n in FAST},
                        start=fresh(), cur=fresh(),
                        xk_buf=zeros(batch_size, H, M, hd, dt=dtype),
                        target_buf=zeros(batch_size, H, M, hd, dt=dtype),
                        pos=zeros(batch_size), updates=zeros(batch_size),
                        last_delta_norm=zeros(batch_size, dt=torch.float32),
                        inner_loss=zeros(batch_size, 3, dt=torch.float32), fill=[0] * batch_size)

    # ---- telemetry -------------------------------------------------------------------------
    def telemetry(self) -> dict[str, torch.Tensor]:
        """Same keys as the In-Place layers: ‖W_state‖ over (W1, b1, W2, b2), drift from W_base,
        completed mini-batches as ``updates``; no clipping (``clip_events`` 0)."""
        s = self._streaming_state
        if s is None:
            return {}
        with torch.no_grad():
            cur = vars(s.cur)
            norm = sum(cur[n].pow(2).flatten(1).sum(1) for n in FAST).sqrt()
            drift = sum((cur[n] - getattr(self, n)[None]).pow(2).flatten(1).sum(1)
                        for n in FAST).sqrt()
            return {"w_norm": norm, "w_drift": drift, "clip_events": torch.zeros_like(s.updates),
                    "updates": s.updates.clone(), "last_delta_norm": s.last_delta_norm.clone(),
                    "chunk_fill": s.pos.clone(), "inner_loss_initial": s.inner_loss[:, 0].clone(),
                    "inner_loss_before": s.inner_loss[:, 1].clone(),
                    "inner_loss_after": s.inner_loss[:, 2].clone(),
                    "gate_mean": self.gate().mean().expand_as(norm).clone()}


def seeds_hybrid_key(name: str) -> str | None:
    """Our key, relative to a transformer layer, for a key of the seeds' hybrid layer (which
    wrapped moshi's layer as ``original_layer`` and held the branch as
    ``seq_modeling_block.ttt_layer.ttt`` + ``forward_ssm_gating``); None = not loaded (the same
    wrapped layer seen again through the block, and bidirectional Video-DiT's reverse gate)."""
    if name.startswith(("seq_modeling_block.original_layer.",
                        "seq_modeling_block.backward_ssm_gating.")):
        return None
    for old, new in (("original_layer.", ""), ("seq_modeling_block.ttt_layer.ttt.", "ttt_mlp."),
                     ("seq_modeling_block.forward_ssm_gating.", "ttt_mlp.")):
        if name.startswith(old):
            return new + name[len(old):]
    return name


class HybridTransformerLayer(StreamingTransformerLayer):
    """moshi's layer with the TTT-MLP branch right after self-attention (where the seeds put it);
    installed by class swap, so every upstream parameter keeps its name and value. Loads the
    seeds' hybrid checkpoints too (:func:`seeds_hybrid_key`)."""

    ttt_mlp: TTTMLPBranch

    def _sa_block(self, x: torch.Tensor):
        return self.ttt_mlp(super()._sa_block(x))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Runs before the children look for their keys: rename the seeds' keys in place.
        for key in [k for k in state_dict if k.startswith(prefix + "seq_modeling_block.")
                    or k.startswith(prefix + "original_layer.")]:
            value = state_dict.pop(key)
            new = seeds_hybrid_key(key[len(prefix):])
            if new is not None:
                state_dict[prefix + new] = value
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
