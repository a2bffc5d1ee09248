"""Validated configuration objects.

One object per concern flows unchanged from YAML/dict to the module that uses it. Every field is
checked at construction; a bad value raises ``ValueError`` naming the field, and unknown keys in
``from_dict`` are errors (the seeds' system silently dropped ``delta_clip_fro_norm`` on the way).
``YarnConfig`` (ttt/base/yarn_config.py) and the shared checks (ttt/base/validate.py) are
re-exported here, where every caller imports them from.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ttt.base.validate import check as _check
from ttt.base.validate import is_int as _is_int
from ttt.base.validate import is_number as _is_number
from ttt.base.validate import strict_kwargs
from ttt.base.yarn_config import YARN_RAMPS, YarnConfig  # noqa: F401  (this module's API)

VARIANTS = ("inplace", "ttt_mlp")
CONV_PADDINGS = ("right", "center")
TARGET_SOURCES = ("embeddings", "hidden_states")
CONV_INITS = ("identity", "zero")


@dataclass(frozen=True)
class TTTConfig:
    """In-Place TTT settings (paper Eq. 1 / Alg. 1; docs/architecture.md).

    Layer selection: ``layers`` (explicit indices of the main transformer) wins; otherwise layer i
    is a TTT layer iff ``i >= start_layer`` and ``(i - start_layer) % layer_frequency == 0``.
    The depformer is never touched.

    ``variant='ttt_mlp'`` is the older TTT-MLP hybrid (``ttt.moshi.ttt_mlp``): there ``chunk_size`` is
    the inner-loop mini-batch M, ``lr`` the base learning rate η_base (Sun et al. use 0.1),
    ``init_std`` the std of its fresh projections and fast weights, and the In-Place keys (conv,
    clip, target) are unused.
    """

    enabled: bool = True
    variant: str = "inplace"
    layers: tuple[int, ...] | None = None
    start_layer: int = 0
    layer_frequency: int = 6
    chunk_size: int = 256
    lr: float = 1e-3
    conv_kernel_size: int = 2
    conv_padding: str = "right"
    delta_clip_fro_norm: float | None = 1e-5
    # Where the target V̂ reads from: 'embeddings' = X₀, the summed token embeddings (ours);
    # 'hidden_states' = the MLP's own normed input (the official code's default ``ttt_target``).
    target_source: str = "embeddings"
    # Conv start: 'identity' passes the current token through (TTT acts from the first update);
    # 'zero' is the official init (V̂ = 0, so a fresh layer does nothing until trained).
    conv_init: str = "identity"
    init_std: float = 0.02
    # Paper Fig. 3c ablations of the target V̂ = Conv1D(X₀) W_targetᵀ. With ``target_conv`` off
    # the target of token t is X₀ of token t alone; with ``target_projection`` off W_target is
    # the identity (it maps d → d). A switched-off part has no parameters (a checkpoint's weights
    # for it are ignored on load).
    target_conv: bool = True
    target_projection: bool = True
    # TTT-MLP hybrid only: heads of the fast-weight MLP (None = the attention's head count), the
    # initial gate α (out = attn + tanh(α)·ttt per channel) and an optional α forced at run time
    # (seed 002's gate experiment; None = the learned α).
    mlp_heads: int | None = None
    gate_alpha_init: float = 0.1
    gate_override: float | None = None
    # Stabiliser, beyond the official method (off by default; In-Place only: unused by the hybrid,
    # like the conv and clip keys, so a top-level ``ttt`` block still feeds it; docs/config-reference.md,
    # docs/config.md): after each chunk's update W ← W^(0) + decay·(W − W^(0)), and
    # W ← W^(0) after every ``reset_every`` chunk updates of a stream. null = off.
    decay: float | None = None
    reset_every: int | None = None
    # ℓ(W^(0)) of every chunk (and with it the per-chunk telemetry rows and next-chunk gain
    # statistics inside a block) on every N-th teacher-forced block of whole chunks; the other
    # blocks compute it for their last chunk only and log that chunk alone (docs/config.md).
    # 1 = every block; 0 = only where it costs nothing (a stream's first block). Default 4: only
    # diagnostics read ℓ(W^(0)), and a block's z·W^(0)ᵀ product is a quarter of its update's work.
    initial_loss_every: int = 4

    def __post_init__(self) -> None:
        _check(isinstance(self.enabled, bool), "enabled", f"must be a bool, got {self.enabled!r}")
        _check(self.variant in VARIANTS, "variant", f"must be one of {VARIANTS}, got {self.variant!r}")
        if self.layers is not None:
            layers = tuple(self.layers)
            _check(all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers),
                   "layers", f"must be non-negative integers, got {self.layers!r}")
            _check(len(set(layers)) == len(layers), "layers", f"has duplicates: {self.layers!r}")
            object.__setattr__(self, "layers", tuple(sorted(layers)))
        _check(_is_int(self.start_layer) and self.start_layer >= 0, "start_layer",
               f"must be an integer >= 0, got {self.start_layer!r}")
        _check(_is_int(self.layer_frequency) and self.layer_frequency >= 1, "layer_frequency",
               f"must be an integer >= 1, got {self.layer_frequency!r}")
        _check(_is_int(self.chunk_size) and self.chunk_size >= 1, "chunk_size",
               f"must be an integer >= 1, got {self.chunk_size!r}")
        _check(_is_number(self.lr) and math.isfinite(self.lr) and self.lr >= 0, "lr",
               f"must be a finite number >= 0, got {self.lr!r}")
        _check(_is_int(self.conv_kernel_size) and self.conv_kernel_size >= 1, "conv_kernel_size",
               f"must be an integer >= 1, got {self.conv_kernel_size!r}")
        _check(self.conv_padding in CONV_PADDINGS, "conv_padding",
               f"must be one of {CONV_PADDINGS}, got {self.conv_padding!r}")
        if self.conv_padding == "center":
            _check(self.conv_kernel_size % 2 == 1, "conv_kernel_size",
                   f"must be odd with conv_padding='center', got {self.conv_kernel_size}")
        tau = self.delta_clip_fro_norm
        _check(tau is None or (_is_number(tau) and math.isfinite(tau)), "delta_clip_fro_norm",
               f"must be a finite number or null (null or <= 0 = no clipping), got {tau!r}")
        _check(self.target_source in TARGET_SOURCES, "target_source",
               f"must be one of {TARGET_SOURCES}, got {self.target_source!r}")
        _check(self.conv_init in CONV_INITS, "conv_init",
               f"must be one of {CONV_INITS}, got {self.conv_init!r}")
        _check(_is_number(self.init_std) and math.isfinite(self.init_std) and self.init_std >= 0,
               "init_std", f"must be a finite number >= 0, got {self.init_std!r}")
        _check(self.mlp_heads is None or (_is_int(self.mlp_heads) and self.mlp_heads >= 1),
               "mlp_heads", f"must be null or an integer >= 1, got {self.mlp_heads!r}")
        for name in ("gate_alpha_init", "gate_override"):
            value = getattr(self, name)
            _check((value is None and name == "gate_override")
                   or (_is_number(value) and math.isfinite(value)), name,
                   f"must be a finite number{' or null' if name == 'gate_override' else ''}, "
                   f"got {value!r}")
        for name in ("target_conv", "target_projection"):
            _check(isinstance(getattr(self, name), bool), name,
                   f"must be a bool, got {getattr(self, name)!r}")
        _check(self.decay is None or (_is_number(self.decay) and 0 < self.decay <= 1), "decay",
               f"must be null (off) or a number in (0, 1], got {self.decay!r}")
        _check(self.reset_every is None or (_is_int(self.reset_every) and self.reset_every >= 1),
               "reset_every", f"must be null (off) or an integer >= 1 (chunks), got {self.reset_every!r}")
        _check(_is_int(self.initial_loss_every) and self.initial_loss_every >= 0,
               "initial_loss_every", f"must be an integer >= 0 (blocks; 0 = only where free), "
               f"got {self.initial_loss_every!r}")

    @property
    def clip(self) -> float | None:
        """Clip threshold τ, or None when clipping is off (None or <= 0 in the config)."""
        tau = self.delta_clip_fro_norm
        return None if tau is None or tau <= 0 else float(tau)

    @property
    def stabilised(self) -> bool:
        """Whether a stabiliser changes the fast weights (decay < 1 or a reset period); with
        neither, every path runs exactly the official update."""
        return (self.decay is not None and self.decay < 1) or self.reset_every is not None

    def layer_indices(self, num_layers: int) -> list[int]:
        """Indices of the TTT layers in a transformer of ``num_layers`` layers."""
        if not self.enabled:
            return []
        if self.layers is not None:
            bad = [i for i in self.layers if i >= num_layers]
            _check(not bad, "layers", f"{bad} out of range for a model with {num_layers} layers")
            return list(self.layers)
        return [i for i in range(num_layers)
                if i >= self.start_layer and (i - self.start_layer) % self.layer_frequency == 0]

    def selected_layers(self, num_layers: int) -> list[int]:
        """:meth:`layer_indices`, refusing an enabled TTT that selects no layer: it would run as
        TTT off (a checkpoint's trained TTT weights ignored) and report ``ttt: false``."""
        indices = self.layer_indices(num_layers)
        if self.enabled and not indices:
            key, value = (("layers", list(self.layers)) if self.layers is not None
                          else ("start_layer", self.start_layer))
            raise ValueError(f"{key}: {value} selects no layer of a model with {num_layers} layers "
                             f"(0-{num_layers - 1}); `enabled: false` runs without TTT")
        return indices

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TTTConfig":
        data = dict(data)
        if "target" in data and "target_source" not in data:  # the key's name before round 3,
            legacy = data.pop("target")                       # in the official spelling
            data["target_source"] = {"input_embed": "embeddings"}.get(legacy, legacy)
        kwargs = strict_kwargs(cls, data, "ttt")
        if kwargs.get("layers") is not None:
            kwargs["layers"] = tuple(kwargs["layers"])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["layers"] = None if self.layers is None else list(self.layers)
        return out

    @classmethod
    def from_seeds(cls, ttt_config: Mapping[str, Any], **overrides: Any) -> "TTTConfig":
        """Read the seeds' ``config.json['ttt_config']`` (their names: ``learning_rate``, ...).

        Their conv was the full d×d×k right-padded one, so ``conv_padding`` defaults to 'right'.
        """
        renames = {"learning_rate": "lr"}
        known = {"enabled", "layer_frequency", "start_layer", "chunk_size", "learning_rate",
                 "conv_kernel_size", "delta_clip_fro_norm", "layers"}
        unknown = sorted(set(ttt_config) - known)
        if unknown:
            raise ValueError(f"ttt_config: unknown key(s) {unknown}; known keys are {sorted(known)}")
        kwargs = {renames.get(k, k): v for k, v in ttt_config.items()}
        kwargs.setdefault("conv_padding", "right")
        kwargs.update(overrides)
        return cls.from_dict(kwargs)


# ---- one cell (ttt/eval/cell.py runs it; the workflow checks every cell with it before any job) ---

MODES = ("teacher_forced", "generate", "transcribe", "playback")  # playback: ttt/eval/playback.py
PLAYBACK_TEXT, PLAYBACK_AUDIO = ("aligned", "empty"), ("recorded", "silence")
MAX_DEMO_S = 86400.0  # a demo conversation longer than a day is a typo (1e12 s: a 171 PiB buffer)
DEVICE = re.compile(r"cpu|cuda(:\d+)?")  # what a cell can run on (mps: never tested, not offered)
SEED_RANGE = 2 ** 63  # torch.manual_seed takes a signed 64-bit seed


@dataclass(frozen=True)
class CellConfig:
    """One cell. ``ttt``/``yarn`` are TTTConfig/YarnConfig dicts overriding the checkpoint's own
    settings (``ttt: {enabled: false}`` for a TTT-off cell); ``data`` is ``{manifest: PATH}`` or
    ``{demo: {durations: [s, ...], seed: N, recurrent: false}}`` (``recurrent``: the positive
    control's pattern, docs/controls.md)."""

    cell: str
    mode: str = "teacher_forced"
    family: str = "adhoc"
    model: str = "tiny"
    base: str | None = None  # base model of a moshi-finetune checkpoint (LoRA, Mimi, tokenizer)
    data: Mapping[str, Any] = field(default_factory=lambda: {"demo": {"durations": [20.0], "seed": 0}})
    ttt: Mapping[str, Any] | None = None
    yarn: Mapping[str, Any] | None = None
    window_s: float = 30.0
    block: int = 2048  # teacher-forced frames per streamed block (a multiple of the TTT chunk)
    ab: bool = False
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    clip_saturation: float | None = None
    temperature: float = 0.8
    temperature_text: float = 0.7
    snapshot_every: int = 0
    check_upstream: bool = False
    cache_dir: str = "results/cache"
    diagnostics_every: int = 100  # steps between attention-vs-TTT diagnostics (0 = off)
    # Content digest of the model's files (ttt/launch/preflight.py): the workflow writes it so a changed
    # checkpoint at the same path changes the cell config, and the tables show what ran.
    model_digest: str | None = None
    # Digest of the ttt source and moshi's version the workflow planned the cell with
    # (ttt/base/code_identity.py): a code edit changes the cell config, so the cell reruns.
    code_digest: str | None = None
    # mode playback only (ttt/eval/playback.py): Moshi's text stream is the alignment words or
    # empty; its audio the recorded Moshi channel or silence.
    playback_text: str = "aligned"
    playback_audio: str = "recorded"

    def __post_init__(self) -> None:
        check = _check

        def finite(x) -> bool:
            return _is_number(x) and math.isfinite(x)

        check(isinstance(self.cell, str) and self.cell, "cell", "must be a non-empty string")
        check(self.mode in MODES, "mode", f"must be one of {MODES}, got {self.mode!r}")
        check(isinstance(self.model, str) and self.model, "model",
              f"must be a checkpoint path or tiny[:SEED], got {self.model!r}")
        check(self.base is None or isinstance(self.base, str), "base",
              f"must be a path or null, got {self.base!r}")
        check(isinstance(self.data, Mapping) and len(self.data) == 1 and
              set(self.data) <= {"manifest", "demo"}, "data",
              "must be {manifest: PATH} or {demo: {durations: [...], seed: N}}")
        if "manifest" in self.data:
            check(isinstance(self.data["manifest"], str) and self.data["manifest"], "data.manifest",
                  f"must be a path, got {self.data['manifest']!r}")
        if "demo" in self.data:
            demo = self.data["demo"]
            check(isinstance(demo, Mapping), "data.demo",
                  f"must be a mapping {{durations: [s, ...], seed: N}}, got {demo!r}")
            unknown = sorted(map(str, set(demo) - {"durations", "seed", "recurrent"}))
            check(not unknown, "data.demo", f"unknown key(s) {unknown}; valid keys are "
                  "['durations', 'recurrent', 'seed']")
            check(isinstance(demo.get("recurrent", False), bool), "data.demo.recurrent",
                  f"must be true or false, got {demo.get('recurrent')!r}")
            durations = demo.get("durations", [20.0])
            check(isinstance(durations, list) and durations and all(
                finite(d) and 0 < d <= MAX_DEMO_S for d in durations), "data.demo.durations",
                f"must be a list of finite numbers of seconds in (0, {MAX_DEMO_S}], got {durations!r}")
            check(_is_int(demo.get("seed", 0)) and demo.get("seed", 0) >= 0, "data.demo.seed",
                  f"must be an integer >= 0, got {demo.get('seed')!r}")
        for name in ("ttt", "yarn"):
            value = getattr(self, name)
            check(value is None or isinstance(value, Mapping), name,
                  f"must be a mapping of settings or null, got {value!r}")
        check(finite(self.window_s) and self.window_s > 0, "window_s",
              f"must be a finite number > 0, got {self.window_s!r}")
        check(_is_int(self.block) and self.block >= 1, "block",
              f"must be an integer >= 1, got {self.block!r}")
        check(_is_int(self.seed) and -SEED_RANGE <= self.seed < SEED_RANGE, "seed",
              f"must be an integer in [-2**63, 2**63), got {self.seed!r}")
        for name in ("ab", "check_upstream"):
            check(isinstance(getattr(self, name), bool), name,
                  f"must be true or false, got {getattr(self, name)!r}")
        for name in ("model_digest", "code_digest"):
            check(getattr(self, name) is None or isinstance(getattr(self, name), str), name,
                  f"must be a string or null, got {getattr(self, name)!r}")
        check(isinstance(self.cache_dir, str) and self.cache_dir, "cache_dir",
              f"must be a path, got {self.cache_dir!r}")
        check(isinstance(self.device, str) and DEVICE.fullmatch(self.device), "device",
              f"must be cpu, cuda or cuda:N, got {self.device!r}")
        check(self.dtype in ("float32", "bfloat16", "float16"), "dtype",
              f"must be float32, bfloat16 or float16, got {self.dtype!r}")
        check(self.clip_saturation is None or (finite(self.clip_saturation)
                                                and 0 < self.clip_saturation <= 1),
              "clip_saturation", f"must be null (off) or in (0, 1], got {self.clip_saturation!r}")
        check(_is_int(self.snapshot_every) and self.snapshot_every >= 0, "snapshot_every",
              f"must be an integer >= 0 (0 = no snapshots), got {self.snapshot_every!r}")
        check(_is_int(self.diagnostics_every) and self.diagnostics_every >= 0,
              "diagnostics_every", f"must be an integer >= 0 (0 = off), got {self.diagnostics_every!r}")
        check(self.playback_text in PLAYBACK_TEXT, "playback_text",
              f"must be one of {PLAYBACK_TEXT}, got {self.playback_text!r}")
        check(self.playback_audio in PLAYBACK_AUDIO, "playback_audio",
              f"must be one of {PLAYBACK_AUDIO}, got {self.playback_audio!r}")
        for name in ("temperature", "temperature_text"):
            value = getattr(self, name)
            check(finite(value) and value > 0, name, f"must be a finite number > 0, got {value!r}")
        if self.ttt is not None:
            TTTConfig.from_dict(dict(self.ttt))  # validate early
        if self.yarn is not None:
            YarnConfig.from_dict(dict(self.yarn))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CellConfig":
        return cls(**strict_kwargs(cls, data, "cell"))

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def load_cell_config(path: str | os.PathLike) -> CellConfig:
    from ttt.base.files import read_yaml

    path = Path(path)
    raw = read_yaml(path, "cell config")
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of cell settings")
    try:
        return CellConfig.from_dict(raw)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
