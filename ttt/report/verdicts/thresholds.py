"""The gates' thresholds and families (docs/verdicts.md): the built-in defaults,
documented in ``workflow/schemas/config.schema.yaml``, and the config's ``verdicts:`` section
merged over them. A section may serve several gates (``responsiveness`` serves three signals)."""
from __future__ import annotations

import os
from typing import Any

# ``families: None`` = every family. lr_grid searches the divergence boundary and telemetry
# forces every chunk to clip: both are left out of the gates that their purpose makes fail.
DEFAULTS: dict[str, dict[str, Any]] = {
    "finite": {"families": ["short_form", "long_form", "yarn", "regression", "telemetry", "ablation"]},
    "w_norm_plateau": {"families": ["long_form", "calibration"], "tail": 0.5, "max_rel_change": 0.05},
    "clip_saturation": {"families": ["short_form", "long_form", "yarn", "ablation", "calibration"],
                        "max_fraction": 0.9},
    "pre_update_logits": {"families": ["yarn"], "max_rel_err": 1.0e-4},
    "ttt_off_bitwise": {"families": ["regression"]},
    "embedding_plumbing": {"families": None, "max_abs_diff": 0.0},
    "responsiveness": {"families": ["short_form", "long_form", "yarn", "calibration"],
                       "confidence": 0.95, "resamples": 2000, "min_conversations": 3},
    "usefulness": {"families": ["long_form", "yarn", "calibration"], "late_fraction": 0.5,
                   "confidence": 0.95, "resamples": 2000, "min_conversations": 3},
    "observability": {"families": None},
    "cost": {"families": ["short_form", "long_form", "yarn"], "max_regression": 0.03},
    # max_worse: recogniser noise on identical speech windows (docs/verdicts.md, measured);
    # min_words / min_speech_s: what "speaks" means for the gibberish checks.
    "consistency": {"families": None, "max_wer": 0.3, "max_worse": 0.07, "confidence": 0.95,
                    "resamples": 2000, "min_words": 3, "min_speech_s": 1.0},
    "effect": {"families": ["short_form", "long_form", "yarn", "ablation", "calibration"],
               "min_output_change": 1e-6},
    "next_chunk_gain": {"families": ["long_form", "yarn"]},
    "stress": {"families": ["telemetry"], "min_fraction": 1.0},
    "lr_grid": {"families": ["lr_grid"]},
}


def thresholds(overrides: dict | None = None) -> dict[str, dict[str, Any]]:
    """DEFAULTS with ``overrides`` (the config's ``verdicts:``) merged per gate; unknown gates or
    keys are errors naming them."""
    out = {gate: dict(values) for gate, values in DEFAULTS.items()}
    for gate, values in (overrides or {}).items():
        if gate not in out:
            raise ValueError(f"verdicts: unknown gate {gate!r}; gates are {sorted(out)}")
        unknown = sorted(set(values or {}) - set(out[gate]))
        if unknown:
            raise ValueError(f"verdicts.{gate}: unknown key(s) {unknown}; valid keys are "
                             f"{sorted(out[gate])}")
        out[gate].update(values or {})
    return out


def load_thresholds(path: str | os.PathLike | None) -> dict[str, dict[str, Any]]:
    """The thresholds file (the workflow writes the config's ``verdicts:`` to it); built-in
    defaults when None. ValueError naming the file when it is not a mapping of known gates."""
    if path is None:
        return thresholds()
    from ttt.base.files import read_yaml
    raw = read_yaml(path, "thresholds file")
    if raw is not None and not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of gates")
    try:
        return thresholds(raw)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
