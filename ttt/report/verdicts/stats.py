"""Window-level statistics for the paired gates (TTT on against its TTT-off twin)."""
from __future__ import annotations

import numpy as np


def bootstrap_ci(d: np.ndarray, confidence: float, resamples: int, seed: int = 0):
    """Percentile bootstrap CI of the mean of ``d`` (resampling windows); seeded, so a rerun
    over the same results gives the same verdict."""
    if len(d) == 1:
        return float(d[0]), float(d[0])
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))
