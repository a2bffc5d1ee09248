"""YaRN settings of a cell (the rope surgery itself: ttt/moshi/yarn.py)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from ttt.base.validate import check as _check
from ttt.base.validate import is_int as _is_int
from ttt.base.validate import is_number as _is_number
from ttt.base.validate import strict_kwargs

YARN_RAMPS = ("standard", "seeds")


@dataclass(frozen=True)
class YarnConfig:
    """YaRN context extension of the main transformer's RoPE (Peng et al. 2023; docs/config-reference.md).

    ``ramp='standard'`` is HF transformers' ``rope_type: "yarn"``; ``ramp='seeds'`` reproduces the
    seeds' non-standard ramp (bounds β·L instead of L/β, no attention temperature) so checkpoints
    trained with it are evaluated with the rope they were trained with.
    """

    scale: float = 1.0
    original_context: int = 3000
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    context: int | None = None
    ramp: str = "standard"

    def __post_init__(self) -> None:
        _check(_is_number(self.scale) and math.isfinite(self.scale) and self.scale >= 1, "scale",
               f"must be a number >= 1, got {self.scale!r}")
        _check(_is_int(self.original_context) and self.original_context >= 1, "original_context",
               f"must be an integer >= 1, got {self.original_context!r}")
        _check(_is_number(self.beta_fast) and _is_number(self.beta_slow) and self.beta_slow > 0
               and math.isfinite(self.beta_fast) and math.isfinite(self.beta_slow),
               "beta_slow", f"must be a number > 0, got {self.beta_slow!r}")
        _check(self.beta_fast > self.beta_slow, "beta_fast",
               f"must be greater than beta_slow ({self.beta_slow}), got {self.beta_fast!r}")
        if self.context is not None:
            _check(_is_int(self.context) and self.context >= self.original_context, "context",
                   f"must be an integer >= original_context ({self.original_context}), got {self.context!r}")
        _check(self.ramp in YARN_RAMPS, "ramp", f"must be one of {YARN_RAMPS}, got {self.ramp!r}")

    @property
    def resolved_context(self) -> int:
        """Ring KV-cache capacity: ``context`` or ``scale × original_context``."""
        if self.context is not None:
            return self.context
        return int(math.ceil(round(self.scale * self.original_context, 6)))  # 2.7·3000 → 8100

    @property
    def attention_factor(self) -> float:
        """Multiplier of q and k (so attention logits scale by its square); 1 for the seeds' ramp."""
        if self.ramp == "seeds" or self.scale <= 1:
            return 1.0
        return 0.1 * math.log(self.scale) + 1.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "YarnConfig":
        return cls(**strict_kwargs(cls, data, "yarn"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_seeds(cls, yarn_config: Mapping[str, Any], **overrides: Any) -> "YarnConfig":
        """Read the seeds' ``config.json['yarn_config']``.

        Their keys: scale, original_max_seq_len, beta_fast, beta_slow, mscale, mscale_all_dim. The
        seeds applied no attention temperature; ``mscale``/``mscale_all_dim`` other than the
        no-op values (1 / 0) are rejected rather than silently reinterpreted. The ramp defaults to
        'seeds' because that is what their checkpoints were trained with.
        """
        known = {"scale", "original_max_seq_len", "beta_fast", "beta_slow", "mscale",
                 "mscale_all_dim", "enabled"}
        unknown = sorted(set(yarn_config) - known)
        if unknown:
            raise ValueError(f"yarn_config: unknown key(s) {unknown}; known keys are {sorted(known)}")
        for key, neutral in (("mscale", (1, 1.0, None)), ("mscale_all_dim", (0, 0.0, 1, 1.0, None))):
            if key in yarn_config and yarn_config[key] not in neutral:
                raise ValueError(f"yarn_config.{key}: value {yarn_config[key]!r} is not supported "
                                 "(the seeds' rope applied no attention temperature)")
        kwargs: dict[str, Any] = {"ramp": "seeds"}
        for src, dst in (("scale", "scale"), ("original_max_seq_len", "original_context"),
                         ("beta_fast", "beta_fast"), ("beta_slow", "beta_slow")):
            if src in yarn_config:
                kwargs[dst] = yarn_config[src]
        kwargs.update(overrides)
        return cls.from_dict(kwargs)
