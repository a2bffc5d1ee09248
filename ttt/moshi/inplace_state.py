"""The streaming state of an In-Place TTT layer (:class:`ttt.moshi.gating.TTTGating`): moshi's
``State`` holding the fast weights, the partial chunk and the counters telemetry reads."""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from moshi.modules.streaming import State

from ttt.core.fused_w import apply_copy_and_norms


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
    # The version counters of ``w`` and of ``w0`` (the parameter itself) when ``w`` was created
    # as a copy of W^(0) (empty: unknown). Every in-place write moves a counter on (an update, a
    # reset, a snapshot restored into ``w``, a change of the parameter), so :meth:`w_is_initial`
    # is True only while neither was written: no host sync needed.
    w_version: tuple = ()
    blocks: int = 0  # whole-chunk blocks streamed so far (host count: the ℓ(W^(0)) cadence)

    def versions(self) -> tuple:
        return (self.w._version, self.w0._version)

    def w_is_initial(self) -> bool:
        """Whether ``w`` is still exactly W^(0) as created (conservative: False after any write)."""
        try:
            return self.versions() == self.w_version
        except RuntimeError:  # an inference-mode tensor keeps no version counter
            return False

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

    def after_update(self) -> None:
        """After W changed: the model-dtype copy and ``w_norm``, ``w_drift`` read off W (one fused
        pass over W and W^(0) on CUDA; never a d×hid temporary, see :mod:`ttt.core.fused_w`)."""
        apply_copy_and_norms(self.w, self.w0, self.w_apply, self.w_norm, self.w_drift)


def session_state(w0: torch.Tensor, batch_size: int, chunk: int, hid: int, dtype: torch.dtype,
                  spare: tuple | None) -> tuple[TTTState, tuple]:
    """A new session's state at W^(0) = ``w0`` [d, hid] (fp32), and the spare to pass next time.

    The state takes over the tensors of the last session (``spare``), reset in place, once that
    session's state is gone: the block update's CUDA graphs key on the addresses of the state's
    tensors, and a session at fresh addresses (every input of a cell is one) captured every graph
    anew (H200, 2k teacher-forced cell: 54 captures for 53 replays, ≈ 8 ms per TTT layer and
    input). A state still referenced keeps its own tensors; a snapshot holds CPU copies."""
    d, device = w0.shape[0], w0.device
    layout = (batch_size, dtype, device, chunk, d, hid)
    if spare is not None and spare[1] == layout and spare[0]() is None:
        fields = spare[2]
    else:
        empty = lambda *s, dt: torch.empty(*s, device=device, dtype=dt)  # noqa: E731
        w = empty(batch_size, d, hid, dt=torch.float32)
        fields = dict(
            w=w, w_apply=w if dtype == torch.float32 else empty(batch_size, d, hid, dt=dtype),
            z_buf=empty(batch_size, chunk, hid, dt=dtype), x0_buf=empty(batch_size, chunk, d, dt=dtype),
            pos=empty(batch_size, dt=torch.long), updates=empty(batch_size, dt=torch.long),
            clip_events=empty(batch_size, dt=torch.long),
            last_delta_norm=empty(batch_size, dt=torch.float32),
            inner_loss=empty(batch_size, 3, dt=torch.float32),
            gain_stats=empty(batch_size, 4, dt=torch.float32), w_norm=empty(batch_size, dt=torch.float32),
            w_drift=empty(batch_size, dt=torch.float32), w0_norm=empty((), dt=torch.float32))
    # the initial values, written in place (new tensors or the last session's alike)
    fields["w"].copy_(w0.expand_as(fields["w"]))
    if fields["w_apply"] is not fields["w"]:
        fields["w_apply"].copy_(fields["w"])
    torch.linalg.vector_norm(w0, out=fields["w0_norm"])
    fields["w_norm"].copy_(fields["w0_norm"].expand(batch_size))
    for name in ("z_buf", "x0_buf", "pos", "updates", "clip_events", "last_delta_norm",
                 "inner_loss", "gain_stats", "w_drift"):
        fields[name].zero_()
    state = TTTState(batch_size, device, w0=w0, fill=[0] * batch_size, **fields)
    state.w_version = state.versions()
    return state, (weakref.ref(state), layout, fields)
