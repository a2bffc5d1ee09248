"""What a ``model:`` (or ``base:``) value names: a directory, and its files read by
:mod:`ttt.moshi.layouts`. A value may be:

- ``tiny``: the embedded default (the trained positive control), built on first use; its
  shipped folder ``ttt/assets/tiny-control`` (no Mimi in it) names it too;
  ``tiny-random`` / ``tiny-random:SEED``: an untrained random tiny model (fast tests);
- a checkpoint directory in one of the layouts :mod:`ttt.moshi.layouts` reads;
- a Hugging Face repo id (``kyutai/moshiko-pytorch-bf16``), resolved offline from the local
  Hugging Face cache (``HF_HUB_CACHE`` / ``HF_HOME``); never downloaded at run time.

Why apart from the layouts: building a tiny model writes a directory in the project's layout and
reads it back, so the builders (:mod:`ttt.moshi.tiny`) sit between the two modules, and the
imports run one way: layouts <- tiny <- checkpoints.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ttt.moshi.layouts import CheckpointError, Sources, hf_cached_snapshot, read_directory
from ttt.moshi.tiny import TINY_TRAINED, build_tiny_checkpoint, materialize_trained

_REPO_ID = re.compile(r"^(hf://)?[A-Za-z0-9][\w.-]*/[\w.-]+$")


def locate(spec: str | os.PathLike, cache_root: str | os.PathLike = "results/models") -> Path:
    """The directory a ``model:`` value names: built (tiny), looked up (HF cache) or as given."""
    if spec == "tiny":  # the trained default (positive control), shipped in the package
        return materialize_trained(cache_root)
    if isinstance(spec, str) and spec.startswith("tiny:"):
        raise CheckpointError(f"model: {spec!r}: the trained default has no seeds; an untrained "
                              f"random model is 'tiny-random:{spec.split(':', 1)[1]}'")
    if isinstance(spec, str) and (spec == "tiny-random" or spec.startswith("tiny-random:")):
        try:
            seed = int(spec.split(":", 1)[1]) if ":" in spec else 0
        except ValueError:
            raise CheckpointError(f"model: {spec!r}: the tiny-random seed must be an integer") from None
        return build_tiny_checkpoint(Path(cache_root) / f"tiny-seed{seed}", seed)
    path = Path(spec)
    if path.is_dir() and path.resolve() == TINY_TRAINED.resolve():  # Mimi is not shipped: built
        return materialize_trained(cache_root)
    if path.exists() or not _REPO_ID.match(str(spec)):
        if not path.is_dir():
            raise CheckpointError(f"{spec}: no such checkpoint directory")
        return path
    return hf_cached_snapshot(str(spec).removeprefix("hf://"))


def resolve_checkpoint(spec: str | os.PathLike, base: str | os.PathLike | None = None,
                       cache_root: str | os.PathLike = "results/models") -> Sources:
    """Every file of the model ``spec`` names (see the module doc), checked to exist; no weights
    are read."""
    base_sources = resolve_checkpoint(base, None, cache_root) if base else None
    return read_directory(locate(spec, cache_root), base_sources)
