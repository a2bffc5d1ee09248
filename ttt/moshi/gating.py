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

The layer's parts live beside it: its streaming state in :mod:`ttt.moshi.inplace_state`, the
target's input tap and weights in :mod:`ttt.moshi.inplace_target`, the update math in
:mod:`ttt.core.inplace_math` and the per-chunk norms, gain statistics and telemetry records in
:mod:`ttt.core.chunk_stats`.
"""
from __future__ import annotations

import torch
from torch import nn
from moshi.modules.streaming import StreamingModule
from moshi.utils.compile import in_cuda_graph, no_compile, torch_compile_lazy

from ttt.base.config import TTTConfig
from ttt.core.block_graphs import BlockGraphs
from ttt.core.chunk_stats import CHUNK_FIELDS, add_gain_stats, chunk_record, squared_norms_after_chunks
from ttt.core.inplace_math import (_add_chunk_causal, _fold, apply_fast_weight, chunk_delta, chunk_target,
                                   clip_factor, clip_scale, conv_as_matrix, dual_form_output)
from ttt.core.stabiliser import keep_factor, stabilise_, stabilised_dual_form_output
from ttt.moshi.inplace_state import TTTState, session_state
from ttt.moshi.inplace_target import EmbeddingTap, TargetGenerator


@torch_compile_lazy
def gated_hidden(weight_in: torch.Tensor, activation, x: torch.Tensor) -> torch.Tensor:
    """Z = act(x W_gateᵀ) ⊙ (x W_upᵀ), compiled like moshi's own gating kernel (one fused
    epilogue instead of separate activation and product kernels on the per-token path)."""
    h = torch.nn.functional.linear(x, weight_in)
    B, T, _ = h.shape
    h = h.view(B, T, 2, -1)
    return activation(h[..., 0, :]) * h[..., 1, :]


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
        cfg = self.cfg
        if cfg.stabilised:
            return stabilised_dual_form_output(z, x0, self.w_down, conv, projection, cfg.conv_padding,
                                               cfg.chunk_size, cfg.lr, cfg.clip, self.parallel_block,
                                               cfg.decay, cfg.reset_every)
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
        self.chunk_log = []  # per-chunk telemetry records of this session (CHUNK_FIELDS)
        state, self.__dict__["_spare_state"] = session_state(
            self.w_down.detach().float(), batch_size, self.cfg.chunk_size, self.dims[1],
            self.linear_in.weight.dtype, self.__dict__.get("_spare_state"))
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
            # (with the stabiliser, chunk by chunk: the block form's statistics assume no decay)
            if (T - t >= C and not any(state.fill) and not torch.is_grad_enabled()
                    and not self.cfg.stabilised):
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
        partial tail in the chunk buffers.

        The host decides here what the device work depends on (which chunks are recorded, see
        :meth:`_block_update`) and keeps the host bookkeeping; the device work itself runs as a
        CUDA graph on CUDA (:mod:`ttt.core.block_graphs`), eagerly elsewhere."""
        C = self.cfg.chunk_size
        B, T, _ = z.shape
        n = T // C
        # ℓ(W^(0)) is free while W is still W^(0) untouched (a stream's first block, one row, no
        # tail). Every chunk is recorded on every ``initial_loss_every``-th block (and where it is
        # free); other blocks record their last chunk alone.
        free = B == 1 and n * C == T and state.w_is_initial()
        every = self.cfg.initial_loss_every
        first = 0 if free or (every and state.blocks % every == 0) else n - 1
        state.blocks += 1
        conv, projection = self._target_weights(z.dtype)
        w0 = None if free else self._derived("w0", (self.w_down,), z.dtype)

        def update(z_in: torch.Tensor, x0_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self._block_update(state, z_in, x0_in, first, free, conv, projection, w0)

        bound = (state.w, state.w_apply, state.w0, state.w_norm, state.w_drift, state.w0_norm,
                 state.gain_stats, state.updates, state.clip_events, state.last_delta_norm,
                 state.inner_loss, state.z_buf, state.x0_buf, state.pos, conv, projection, w0)
        cfg = self.cfg
        shape_key = (first, free, cfg.chunk_size, cfg.lr, cfg.clip, cfg.conv_padding)
        record_shape = ((B, n - first, len(CHUNK_FIELDS)), torch.float64)
        graphs = self.__dict__.setdefault("_block_graphs", BlockGraphs())
        replays = graphs.replays
        out, record = graphs.run(update, shape_key, (z, x0), bound,
                                 ((z.shape[:2] + x0.shape[-1:], z.dtype), record_shape))
        if graphs.replays != replays:  # a replay ran no Python: W's version counter stood still
            state.w_version = ()
        self._append_record(record)
        state.fill = [T - n * C] * B
        return out

    def _block_update(self, state: TTTState, z: torch.Tensor, x0: torch.Tensor, first: int,
                      free: bool, conv, projection, w0) -> tuple[torch.Tensor, torch.Tensor]:
        """The device work of :meth:`_stream_chunks`: the block's output and its chunks' records
        from ``first`` on; updates the state's tensors in place. No host sync, no host state: its
        control flow is fixed by the shapes, ``first`` and ``free`` (ℓ(W^(0)) read off the
        output), so a CUDA graph captured once replays it."""
        C, tau = self.cfg.chunk_size, self.cfg.clip
        B, T, hid = z.shape
        d = x0.shape[-1]
        n = T // C
        U = n * C
        v_hat = chunk_target(x0[:, :U].reshape(B * n, C, d), conv, projection,
                             self.cfg.conv_padding, dtype=z.dtype)
        zc = z[:, :U].reshape(B * n, C, hid)
        # ‖ΔW_j‖² from the C×C Grams in fp32 (the model-dtype Gram promoted inside the multiply)
        sq = (v_hat @ v_hat.transpose(1, 2)).float().mul_(zc @ zc.transpose(1, 2)).sum((1, 2))
        norm = sq.clamp_min(0).sqrt().view(B, n)
        c = self.cfg.lr * clip_factor(norm, tau)  # [B, n]: lr · min(1, τ/‖ΔW_j‖)
        v_hat = v_hat.view(B, n, C, d)
        v_scaled = (v_hat * c.to(z.dtype)[..., None, None]).reshape(B, U, d)
        out = apply_fast_weight(z, state.w_apply)
        # Figure-5 inner losses ℓ(W) = −⟨W, ΔW_j⟩ = −Σ_s v̂_s·(z_s Wᵀ) of the whole chunks from
        # ``first`` on, under W^(0) (``initial``) and under W^(j) (``before``: the block's output
        # over chunk j is exactly z_s W^(j)ᵀ); both feed the next-chunk gain statistics, the last
        # chunk's three losses are kept as such. The products run in fp32 (the model-dtype operand
        # is promoted inside the multiply, no fp32 copy of it). ℓ(W^(0)) costs a z W^(0)ᵀ product
        # over those chunks, except while W is still W^(0) untouched (``free``): then that product
        # is ``out`` before the chunks' own updates are added, the same GEMM on the same operands,
        # so it is reused. The per-chunk norms inside a block need ℓ(W^(0)); a block recording its
        # last chunk alone reads that chunk's norms off W.
        k = n - first
        v_all = v_hat[:, first:].float()
        if free:
            initial = -(out.view(B, n, C, d) * v_all).sum((2, 3))
        else:
            initial = -(apply_fast_weight(z[:, first * C:U], w0).view(B, k, C, d) * v_all).sum((2, 3))
        _add_chunk_causal(out, z, v_scaled, C)
        before = -(out[:, first * C:U].view(B, k, C, d) * v_all).sum((2, 3))
        # Per-chunk statistics and records, vectorised over the recorded chunks: [B, k] columns
        # grouped into a few [B, k, m] tensors (one kernel per group, not per column and chunk).
        updates = state.updates[:, None] + torch.arange(first + 1, n + 1, device=z.device)[None]
        gains = add_gain_stats(state.gain_stats, initial, before, updates >= 2)
        norm_k, c_k = norm[:, first:], c[:, first:]
        losses = torch.stack([norm_k, initial, before, before - c_k * norm_k ** 2], dim=2)
        # Per-chunk ‖W‖² and ‖W − W^(0)‖² without forming W^(j) (from the block's start); the
        # block's last chunk is then read off W itself.
        if k > 1:
            l64 = losses.double()
            norms_sq = squared_norms_after_chunks(state.w_norm, state.w_drift, c_k, *l64[..., :3].unbind(2))
        else:
            norms_sq = torch.empty(B, 1, 2, device=z.device, dtype=torch.float64)
        _fold(state.w, v_scaled, z[:, :U], fresh=False)  # W += Σ_j c_j ΔW_j, fp32, in place
        state.after_update()
        norms_sq[:, -1] = torch.stack([state.w_norm, state.w_drift], dim=1).double() ** 2
        state.updates.add_(n)
        clips = (norm > tau).cumsum(1) if tau is not None else torch.zeros_like(norm, dtype=torch.long)
        counts = torch.stack([updates, state.clip_events[:, None] + clips[:, first:]], dim=2)
        if tau is not None:
            state.clip_events.add_(clips[:, -1])
        state.last_delta_norm.copy_(norm[:, -1])
        state.inner_loss.copy_(losses[:, -1, 1:])
        record = chunk_record(counts, norms_sq.clamp_min(0).sqrt(), losses, gains,
                              torch.ones_like(norm_k, dtype=torch.bool), state.w0_norm)
        tail = T - U
        if tail:
            state.z_buf[:, :tail] = z[:, U:]
            state.x0_buf[:, :tail] = x0[:, U:].to(state.x0_buf.dtype)
        state.pos.fill_(tail)
        return out, record

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
        gains = add_gain_stats(state.gain_stats, losses[:, :1], losses[:, 1:2],
                                (full & (state.updates >= 1))[:, None])
        state.w.copy_(torch.where(full[:, None, None], state.w + step, state.w))
        if self.cfg.stabilised:  # W ← W^(0) + k·(W − W^(0)); ℓ is linear in W, so ℓ(after) too
            keep = keep_factor(state.updates + 1, self.cfg.decay, self.cfg.reset_every)
            stabilise_(state.w, state.w0, keep, full)
            losses[:, 2] = torch.where(full, losses[:, 0] + keep * (losses[:, 2] - losses[:, 0]),
                                       losses[:, 2])
            state.inner_loss.copy_(torch.where(full[:, None], losses, state.inner_loss))
        state.after_update()
        state.updates.add_(full.long())
        state.clip_events.add_((full & clipped).long())
        state.last_delta_norm.copy_(torch.where(full, norm, state.last_delta_norm))
        self._log_chunks(torch.stack([state.updates, state.clip_events], dim=1)[:, None],
                         torch.stack([state.w_norm, state.w_drift], dim=1)[:, None],
                         torch.cat([norm[:, None], losses], dim=1)[:, None], gains, full[:, None])
        state.pos.masked_fill_(full, 0)
        state.fill = [0 if f >= self.cfg.chunk_size else f for f in state.fill]
        return True

    def _log_chunks(self, *groups: torch.Tensor) -> None:
        """Append one record per chunk to :attr:`chunk_log`, on the device (column groups as
        :func:`ttt.core.chunk_stats.chunk_record` takes them). An undrained log (a generate cell
        reads the state instead) is merged now and then: it stays one small tensor holding
        14 numbers per chunk."""
        self._append_record(chunk_record(*groups, self._streaming_state.w0_norm))

    def _append_record(self, record: torch.Tensor) -> None:
        self.chunk_log.append(record)
        if len(self.chunk_log) >= 64:
            self.chunk_log[:] = [torch.cat(self.chunk_log, dim=1)]

    def advance(self, tokens: int) -> None:
        """Host bookkeeping after ``tokens`` graph-replayed tokens (the graph ran no Python)."""
        state = self._streaming_state
        assert state is not None
        state.fill = [f + tokens for f in state.fill]


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
