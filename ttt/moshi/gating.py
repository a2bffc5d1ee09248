"""TTT gating: a drop-in replacement for moshi's ``ActivationGating`` whose down projection is a
fast weight updated every ``chunk_size`` tokens (In-Place TTT).

Execution modes, one semantics:
- parallel (no streaming state): the dual form (``inplace_math.dual_form_output``), no per-chunk
  fast weights, memory constant in the number of chunks;
- eager streaming (any block size): the block is cut at every row's chunk boundary, a full chunk
  is applied to the fast weights as soon as its last token has been processed;
- CUDA-graphed streaming (moshi's ``in_cuda_graph()``): the per-token graph only writes Z and X₀
  into fixed-size chunk buffers and applies the current fast weight; the chunk update runs
  between graph replays, driven on the host by :class:`ttt.session.streaming.TTTLMGen`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from moshi.modules.streaming import State, StreamingModule
from moshi.utils.compile import in_cuda_graph, no_compile, torch_compile_lazy

from ttt.config import TTTConfig
from ttt.core.inplace_math import (_add_chunk_causal, _fold, apply_fast_weight, chunk_delta, chunk_target,
                           clip_factor, clip_scale, conv_as_matrix, dual_form_output)


@torch_compile_lazy
def gated_hidden(weight_in: torch.Tensor, activation, x: torch.Tensor) -> torch.Tensor:
    """Z = act(x W_gateᵀ) ⊙ (x W_upᵀ), compiled like moshi's own gating kernel (one fused
    epilogue instead of separate activation and product kernels on the per-token path)."""
    h = torch.nn.functional.linear(x, weight_in)
    B, T, _ = h.shape
    h = h.view(B, T, 2, -1)
    return activation(h[..., 0, :]) * h[..., 1, :]


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


@dataclass
class TTTState(State):
    """Everything a TTT layer changes while streaming (and nothing else), per batch row."""

    w0: torch.Tensor          # [d, hid] fp32 W^(0) (the layer's ``w_down``, not a copy)
    w: torch.Tensor           # [B, d, hid] fp32 fast weights W^(i)
    w_apply: torch.Tensor     # [B, d, hid] model-dtype copy used by the per-token matmul
    z_buf: torch.Tensor       # [B, C, hid] Z of the current partial chunk
    x0_buf: torch.Tensor      # [B, C, d] X₀ of the current partial chunk
    pos: torch.Tensor         # [B] long, tokens in the current chunk (device truth)
    updates: torch.Tensor     # [B] long, applied chunk updates (cumulative, survives reset)
    clip_events: torch.Tensor  # [B] long, updates whose ‖ΔW‖_F exceeded τ
    last_delta_norm: torch.Tensor  # [B] fp32, ‖ΔW‖_F of the last update (before clipping)
    inner_loss: torch.Tensor  # [B, 3] fp32, ℓ(W^(0)), ℓ(W^(i)), ℓ(W^(i+1)) on the last chunk
    # [B, 4] fp32 over every chunk i ≥ 1 so far (whatever the telemetry cadence): Σ next-chunk gain
    # ℓ(W^(0)) − ℓ(W^(i)), Σ |ℓ(W^(0))|, chunks with a positive gain, chunks (cumulative)
    gain_stats: torch.Tensor
    # [B] fp32 ‖W^(i)‖_F and ‖W^(i) − W^(0)‖_F after the last update, read off W when it changes
    # (telemetry reads these: no d×hid temporary per read); w0_norm ‖W^(0)‖_F
    w_norm: torch.Tensor
    w_drift: torch.Tensor
    w0_norm: torch.Tensor
    fill: list[int] = field(default_factory=list)  # host mirror of ``pos`` for scheduling
    driven: bool = False      # set by TTTLMGen: the host drives updates between graph replays

    def reset(self, reset_mask: torch.Tensor) -> None:
        """Masked rows go back to W^(0) with an empty chunk; the others are untouched."""
        super().reset(reset_mask)
        mask = reset_mask.to(self.device)
        self.w.copy_(torch.where(mask[:, None, None], self.w0[None], self.w))
        self.sync_apply_copy()
        self.w_norm.copy_(torch.where(mask, self.w0_norm, self.w_norm))
        self.w_drift.masked_fill_(mask, 0.0)
        self.pos.masked_fill_(mask, 0)
        # Host mirror: a reset is a document boundary, not a per-token event; one sync is fine.
        self.fill = [0 if hit else f for f, hit in zip(self.fill, mask.tolist())]

    def sync_apply_copy(self) -> None:
        if self.w_apply is not self.w:
            self.w_apply.copy_(self.w)

    def refresh_norms(self) -> None:
        """``w_norm`` and ``w_drift`` from W as it is now (after an update): one read of W and of
        W^(0), the difference formed in slabs of rows (never a d×hid temporary)."""
        self.w_norm.copy_(torch.linalg.vector_norm(self.w, dim=(-2, -1)))
        self.w_drift.copy_(weight_distance(self.w, self.w0))


def weight_distance(w: torch.Tensor, w0: torch.Tensor, max_elements: int = 1 << 22) -> torch.Tensor:
    """‖w[b] − w0‖_F per row b, w [B, d, hid], w0 [d, hid]: the difference formed ``max_elements``
    at a time (a few MB), not as a B×d×hid temporary (46 M elements per layer at 7B)."""
    d, hid = w0.shape
    rows = max(1, max_elements // max(1, w.shape[0] * hid))
    sq = torch.zeros(w.shape[0], device=w.device, dtype=torch.float32)
    for lo in range(0, d, rows):
        part = torch.linalg.vector_norm(w[:, lo:lo + rows] - w0[lo:lo + rows], dim=(-2, -1))
        sq.add_(part.float().square())
    return sq.sqrt_()


# Per-chunk telemetry (TTTGating.chunk_log): one record per chunk update, these columns, the state
# as it is right after that chunk's update. ``valid`` marks the rows that updated.
CHUNK_FIELDS = ("updates", "clip_events", "w_norm", "w_drift", "w_rel_change", "last_delta_norm",
                "inner_loss_initial", "inner_loss_before", "inner_loss_after",
                "gain_sum", "gain_initial_abs_sum", "gain_positive", "gain_chunks", "valid")


class TTTGating(StreamingModule[TTTState]):
    """Gated MLP with In-Place TTT on its down projection.

    State-dict keys match the seeds' checkpoints: ``linear_in.weight``, ``linear_out.weight``,
    ``w_down`` (fp32 W^(0)), ``target_generator.conv1d.conv.weight``,
    ``target_generator.W_target.weight``.
    """

    # Tokens per block of the parallel dual form: an execution detail, not part of the math
    # (quadratic work inside a block, one d×hid state pass per block).
    parallel_block: int = 4096

    def __init__(self, linear_in: nn.Linear, linear_out: nn.Linear, activation, cfg: TTTConfig,
                 tap: EmbeddingTap) -> None:
        super().__init__()
        self.cfg = cfg
        self.linear_in = linear_in
        self.linear_out = linear_out
        self.activation = activation
        self._tap = tap
        d, hid = linear_out.weight.shape
        device = linear_out.weight.device
        factory = dict(device=device, dtype=linear_out.weight.dtype)
        self.w_down = nn.Parameter(linear_out.weight.detach().float().clone())
        self.target_generator = TargetGenerator(d, cfg, **factory)
        self.register_load_state_dict_pre_hook(_seeds_load_hook)
        # Per-chunk telemetry of the streaming session: [B, n, len(CHUNK_FIELDS)] float64 device
        # tensors appended as updates happen (no host sync); ``telemetry.chunk_telemetry`` drains it.
        self.chunk_log: list[torch.Tensor] = []

    @property
    def dims(self) -> tuple[int, int]:
        return tuple(self.w_down.shape)  # type: ignore[return-value]

    # ---- per-token pieces -------------------------------------------------------------------
    def _z(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with no_compile():
                return gated_hidden(self.linear_in.weight, self.activation, x)
        return gated_hidden(self.linear_in.weight, self.activation, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self._target_input(x)
        z = self._z(x)
        state = self._streaming_state
        if state is None:
            return self._parallel(z, x0)
        if in_cuda_graph():
            if not state.driven:
                raise RuntimeError("TTT layer run under moshi CUDA graphs without a host driver: the "
                                   "fast weights would never update. Use ttt.TTTLMGen instead of LMGen.")
            return self._write_and_apply(state, z, x0)
        return self._stream_eager(state, z, x0)

    def _target_input(self, x: torch.Tensor) -> torch.Tensor:
        """What V̂ is computed from: the MLP's own normed input x ('hidden_states'), or X₀ from the
        embedding tap ('embeddings'). Every execution mode reads it here."""
        if self.cfg.target_source == "hidden_states":
            return x
        x0 = self._tap.x0
        if x0 is None or x0.shape[:2] != x.shape[:2]:
            raise RuntimeError("TTT layer: token embeddings X0 missing or misaligned with the layer "
                               "input; was the model prepared with ttt.apply_ttt and called through "
                               "forward_text / forward?")
        return x0

    # ---- parallel form ----------------------------------------------------------------------
    def _parallel(self, z: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """All chunks at once in the dual form; chunk i never sees its own ΔW."""
        conv, projection = self._target_weights(z.dtype)
        return dual_form_output(z, x0, self._derived("w0", (self.w_down,), z.dtype), conv,
                                projection, self.cfg.conv_padding, self.cfg.chunk_size,
                                self.cfg.lr, self.cfg.clip, self.parallel_block)

    def _target_weights(self, dtype: torch.dtype):
        """(conv, projection) for :func:`chunk_target` in ``dtype``, cached."""
        tg = self.target_generator
        conv, projection = tg.conv_weight, tg.projection
        if conv is not None and self.cfg.conv_padding == "right":
            if projection is not None:
                # W_target · [conv taps] as one [d, k·d] matrix (product in fp32): the target
                # then costs k·d² per token instead of (k + 1)·d².
                conv = self._derived("target", (conv, projection), dtype,
                                     lambda c, p: p.float() @ conv_as_matrix(c.float()))
                projection = None
            else:
                conv = self._derived("conv", (conv,), dtype, conv_as_matrix)
        return conv, projection

    def _derived(self, name: str, params: tuple[torch.Tensor, ...], dtype: torch.dtype,
                 transform=lambda w: w) -> torch.Tensor:
        """``transform(*params)`` in ``dtype``. Without autograd it is cached and refreshed
        whenever a parameter changes (its version counter moves on every in-place write,
        load_state_dict included): a 7B forward need not re-cast 46 M fp32 weights or re-layout
        the d×d×k conv in every TTT layer."""
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return transform(*params).to(dtype)
        key = (tuple((p._version, p.data_ptr()) for p in params), dtype)
        cache = self.__dict__.setdefault("_derived_cache", {})
        if name not in cache or cache[name][0] != key:
            cache[name] = (key, transform(*(p.detach() for p in params)).to(dtype).contiguous())
        return cache[name][1]

    # ---- streaming ----------------------------------------------------------------------------
    def _init_streaming_state(self, batch_size: int) -> TTTState:
        d, hid = self.dims
        C = self.cfg.chunk_size
        device = self.w_down.device
        dtype = self.linear_in.weight.dtype
        self.chunk_log = []  # per-chunk telemetry records of this session (CHUNK_FIELDS)
        w = self.w_down.detach().float()[None].repeat(batch_size, 1, 1)
        w0_norm = torch.linalg.vector_norm(self.w_down.detach().float())
        w_apply = w if dtype == torch.float32 else w.to(dtype)
        zeros = lambda *s, dt=torch.long: torch.zeros(*s, device=device, dtype=dt)  # noqa: E731
        state = TTTState(
            batch_size, device, w0=self.w_down.detach().float(), w=w, w_apply=w_apply,
            z_buf=zeros(batch_size, C, hid, dt=dtype), x0_buf=zeros(batch_size, C, d, dt=dtype),
            pos=zeros(batch_size), updates=zeros(batch_size), clip_events=zeros(batch_size),
            last_delta_norm=zeros(batch_size, dt=torch.float32),
            inner_loss=zeros(batch_size, 3, dt=torch.float32),
            gain_stats=zeros(batch_size, 4, dt=torch.float32),
            w_norm=w0_norm.expand(batch_size).clone(), w_drift=zeros(batch_size, dt=torch.float32),
            w0_norm=w0_norm, fill=[0] * batch_size)
        return state

    def _write_and_apply(self, state: TTTState, z: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Append a segment (no row crosses its chunk end) to the buffers; O = Z W^(i)ᵀ.

        Pure device ops on fixed-size buffers indexed by the device counter: CUDA-graph safe.
        """
        B, T, _ = z.shape
        index = (state.pos[:, None] + torch.arange(T, device=z.device)[None])[..., None]
        state.z_buf.scatter_(1, index.expand(B, T, z.shape[-1]), z)
        state.x0_buf.scatter_(1, index.expand(B, T, x0.shape[-1]), x0.to(state.x0_buf.dtype))
        state.pos.add_(T)
        return apply_fast_weight(z, state.w_apply)

    def _stream_eager(self, state: TTTState, z: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        C = self.cfg.chunk_size
        T = z.shape[1]
        outs, t = [], 0
        while t < T:
            if T - t >= C and not any(state.fill) and not torch.is_grad_enabled():
                outs.append(self._stream_chunks(state, z[:, t:], x0[:, t:]))
                break
            seg = min(T - t, min(C - f for f in state.fill))
            outs.append(self._write_and_apply(state, z[:, t:t + seg], x0[:, t:t + seg]))
            state.fill = [f + seg for f in state.fill]
            t += seg
            self.update_full_chunks()
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def _stream_chunks(self, state: TTTState, z: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """A streamed segment that starts at a chunk boundary in every row and holds at least one
        whole chunk, in the dual form from the state's fast weights (what the chunk-by-chunk scan
        computes, up to rounding, without one d×hid update pass per chunk: a teacher-forced block
        of many chunks costs what the parallel form costs). Leaves the state as the scan would:
        W after every whole chunk, the counters, the last chunk's norm and inner losses, and the
        partial tail in the chunk buffers."""
        C, tau = self.cfg.chunk_size, self.cfg.clip
        B, T, hid = z.shape
        d = x0.shape[-1]
        n = T // C
        U = n * C
        conv, projection = self._target_weights(z.dtype)
        v_hat = chunk_target(x0[:, :U].reshape(B * n, C, d), conv, projection,
                             self.cfg.conv_padding, dtype=z.dtype)
        zc = z[:, :U].reshape(B * n, C, hid)
        sq = ((v_hat @ v_hat.transpose(1, 2)).float() * (zc @ zc.transpose(1, 2)).float()).sum((1, 2))
        norm = sq.clamp_min(0).sqrt().view(B, n)
        c = self.cfg.lr * clip_factor(norm, tau)  # [B, n]: lr · min(1, τ/‖ΔW_j‖)
        v_hat = v_hat.view(B, n, C, d)
        v_scaled = (v_hat * c.to(z.dtype)[..., None, None]).reshape(B, U, d)
        out = apply_fast_weight(z, state.w_apply)
        _add_chunk_causal(out, z, v_scaled, C)
        # Figure-5 inner losses of the last whole chunk: −⟨W, ΔW⟩ = −Σ_s v̂_s·(z_s Wᵀ), where the
        # block's output over that chunk is exactly z_s W_lastᵀ.
        # Every whole chunk's ℓ(W^(0)) and ℓ(W^(j)) feed the next-chunk gain statistics (one extra
        # z W^(0)ᵀ product over the segment); the last chunk's three losses are kept as such.
        w0 = self._derived("w0", (self.w_down,), z.dtype)
        v_all = v_hat.float()
        initial = -(apply_fast_weight(z[:, :U], w0).float().view(B, n, C, d) * v_all).sum((2, 3))
        before = -(out[:, :U].float().view(B, n, C, d) * v_all).sum((2, 3))
        index = state.updates[:, None] + torch.arange(n, device=z.device)[None]
        gains = _add_gain_stats(state, initial, before, index >= 1)
        after = before - c * norm ** 2
        # Per-chunk ‖W‖ and ‖W − W^(0)‖ without forming W^(j): ‖W + cΔ‖² = ‖W‖² + 2c⟨W, Δ⟩ + c²‖Δ‖²
        # with ⟨W^(j), ΔW_j⟩ = −ℓ(W^(j)) and ⟨W^(0), ΔW_j⟩ = −ℓ(W^(0)) (float64, from the block's
        # start); the block's last chunk is then read off W itself.
        c64, sq64 = c.double(), norm.double() ** 2
        w_sq = state.w_norm.double()[:, None] ** 2 + (c64 * (c64 * sq64 - 2 * before.double())).cumsum(1)
        drift_sq = state.w_drift.double()[:, None] ** 2 + (
            c64 * (c64 * sq64 + 2 * (initial.double() - before.double()))).cumsum(1)
        clip_before = state.clip_events.clone()
        _fold(state.w, v_scaled, z[:, :U], fresh=False)  # W += Σ_j c_j ΔW_j, fp32, in place
        state.sync_apply_copy()
        state.refresh_norms()
        w_sq[:, -1], drift_sq[:, -1] = state.w_norm.double() ** 2, state.w_drift.double() ** 2
        state.updates.add_(n)
        clipped = (norm > tau) if tau is not None else torch.zeros_like(norm, dtype=torch.bool)
        if tau is not None:
            state.clip_events.add_(clipped.sum(1))
        state.last_delta_norm.copy_(norm[:, -1])
        state.inner_loss.copy_(torch.stack([initial[:, -1], before[:, -1], after[:, -1]], dim=1))
        self._log_chunks(index + 1, clip_before[:, None] + clipped.cumsum(1), w_sq.clamp_min(0).sqrt(),
                         drift_sq.clamp_min(0).sqrt(), norm, initial, before, after, gains,
                         torch.ones_like(norm, dtype=torch.bool))
        tail = T - U
        if tail:
            state.z_buf[:, :tail] = z[:, U:]
            state.x0_buf[:, :tail] = x0[:, U:].to(state.x0_buf.dtype)
        state.pos.fill_(tail)
        state.fill = [tail] * B
        return out

    def update_full_chunks(self) -> bool:
        """Apply ΔW of every row whose chunk buffer is full; returns whether any row was full.

        Decided on the host from the mirror (no sync); which rows update is decided on device.
        """
        state = self._streaming_state
        assert state is not None
        if not any(f >= self.cfg.chunk_size for f in state.fill):
            return False
        full = state.pos >= self.cfg.chunk_size
        tg = self.target_generator
        delta = chunk_delta(state.z_buf, chunk_target(state.x0_buf, tg.conv_weight,
                                                      tg.projection, self.cfg.conv_padding))
        scale, norm, clipped = clip_scale(delta, self.cfg.clip)
        step = delta * (self.cfg.lr * scale)[:, None, None]
        # Figure-5 inner losses ℓ(W) = −⟨Z Wᵀ, V̂⟩_F = −⟨W, ΔW⟩_F: initial, before, after.
        before = -(state.w * delta).sum((1, 2))
        losses = torch.stack([-(state.w0[None] * delta).sum((1, 2)), before,
                              before - (step * delta).sum((1, 2))], dim=1)
        state.inner_loss.copy_(torch.where(full[:, None], losses, state.inner_loss))
        gains = _add_gain_stats(state, losses[:, :1], losses[:, 1:2],
                                (full & (state.updates >= 1))[:, None])
        state.w.copy_(torch.where(full[:, None, None], state.w + step, state.w))
        state.sync_apply_copy()
        state.refresh_norms()
        state.updates.add_(full.long())
        state.clip_events.add_((full & clipped).long())
        state.last_delta_norm.copy_(torch.where(full, norm, state.last_delta_norm))
        self._log_chunks(state.updates[:, None], state.clip_events[:, None], state.w_norm[:, None],
                         state.w_drift[:, None], norm[:, None], *losses[:, :, None].unbind(1),
                         gains, full[:, None])
        state.pos.masked_fill_(full, 0)
        state.fill = [0 if f >= self.cfg.chunk_size else f for f in state.fill]
        return True

    def _log_chunks(self, *columns: torch.Tensor) -> None:
        """Append one record per chunk to :attr:`chunk_log`, on the device: columns [B, n]
        (``gains`` [B, n, 4]) in CHUNK_FIELDS order but ``w_rel_change`` (added here). An
        undrained log (a generate cell reads the state instead) is merged now and then: it stays
        one small tensor holding 14 numbers per chunk."""
        drift = columns[3].double()
        columns = (*columns[:4], drift / self._streaming_state.w0_norm.double().clamp_min(1e-300),
                   *columns[4:])
        parts = [c.double()[..., None] if c.dim() == 2 else c.double() for c in columns]
        self.chunk_log.append(torch.cat(parts, dim=-1))
        if len(self.chunk_log) >= 64:
            self.chunk_log[:] = [torch.cat(self.chunk_log, dim=1)]

    def advance(self, tokens: int) -> None:
        """Host bookkeeping after ``tokens`` graph-replayed tokens (the graph ran no Python)."""
        state = self._streaming_state
        assert state is not None
        state.fill = [f + tokens for f in state.fill]


def _add_gain_stats(state: TTTState, initial: torch.Tensor, before: torch.Tensor,
                    counted: torch.Tensor) -> torch.Tensor:
    """Add chunks [B, n] (ℓ(W^(0)), ℓ(W^(j)), whether chunk j counts: j ≥ 1 and updated) to
    ``state.gain_stats`` on the device (no host sync); returns the statistics as they stand
    after each chunk [B, n, 4] (for the per-chunk telemetry)."""
    gain = (initial - before) * counted
    terms = torch.stack([gain, initial.abs() * counted, ((gain > 0) & counted).float(),
                         counted.float()], dim=2)
    running = state.gain_stats[:, None] + terms.cumsum(1)
    state.gain_stats.add_(torch.stack([gain.sum(1), (initial.abs() * counted).sum(1),
                                       ((gain > 0) & counted).sum(1).float(),
                                       counted.sum(1).float()], dim=1))
    return running


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
    center`` (see README "Official layout").

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


def _seeds_load_hook(module, state_dict, prefix, *_args) -> None:
    """Seeds' checkpoints also carry ``w_down_pretrained`` (a copy of the pretrained down
    projection, identical to ``linear_out.weight``); it has no role here and is dropped.
    Upstream checkpoints carry no ``w_down``: W^(0) then starts from ``linear_out.weight``.
    Weights of a target part switched off by an ablation (``target_conv`` / ``target_projection``)
    have nothing to load into and are dropped too."""
    state_dict.pop(prefix + "w_down_pretrained", None)
    tg = module.target_generator
    for key, present in (("conv1d.conv.weight", tg.conv_weight is not None),
                         ("W_target.weight", tg.projection is not None)):
        if not present:
            state_dict.pop(prefix + "target_generator." + key, None)
    if prefix + "w_down" not in state_dict and prefix + "linear_out.weight" in state_dict:
        state_dict[prefix + "w_down"] = state_dict[prefix + "linear_out.weight"].float()
