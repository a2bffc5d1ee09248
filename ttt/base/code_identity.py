"""What code a cell's results come from: a digest of the ``ttt`` source a cell runs, and moshi's
version.

The workflow writes it into every cell config (``code_digest``), so an edit of the code reruns the
cells (Snakemake's params trigger), and a cell's snapshot identity carries it, so a resume never
mixes two versions of the code (ttt/session/snapshot.py). ``ttt/report`` and ``ttt/panel`` are
left out (a cell never imports them: editing a table reruns the tables, not the matrix), and so
is the shipped trained default (``assets/tiny-control``: the model digest covers it).
Reading ~1 MB of source takes milliseconds: computed at every DAG build and cell start.
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import yaml

PACKAGE = Path(__file__).resolve().parent.parent  # the ttt package this module belongs to
SKIPPED = ("report", "panel", os.path.join("assets", "tiny-control"))
PIN = "pin"  # config `code_digest: pin`: keep each cell's recorded digest (its results stay)


def source_files(package: Path = PACKAGE) -> list[Path]:
    """Every file of the package a cell can run or read, in a stable order."""
    out = []
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(package)
        if (path.is_file() and "__pycache__" not in rel.parts and path.suffix != ".pyc"
                and not any(str(rel).startswith(skip + os.sep) for skip in SKIPPED)):
            out.append(path)
    return out


@lru_cache(maxsize=4)
def code_digest(package: Path = PACKAGE) -> str:
    """16 hex digits over the package's files (relative path and bytes) and moshi's version."""
    h = hashlib.sha256()
    for path in source_files(package):
        h.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(f"moshi=={moshi_version()}".encode())
    return h.hexdigest()[:16]


def moshi_version() -> str:
    """Installed moshi's version, read from its metadata (importing moshi would import torch)."""
    try:
        return metadata.version("moshi")
    except metadata.PackageNotFoundError:
        return "none"


def planned_digest(setting: str, cell_yaml: str | os.PathLike, current: str) -> str | None:
    """The ``code_digest`` a cell config carries. ``auto``: the current code's; ``pin``: what the
    cell's existing ``cell.yaml`` records, so its results are kept through code edits (None: a
    config written before digests existed carries none; a cell not written yet gets the current
    one); any other value (an earlier run's digest) is used as given."""
    if setting == "auto":
        return current
    if setting != PIN:
        return setting
    try:
        recorded = yaml.safe_load(Path(cell_yaml).read_text())
    except (OSError, yaml.YAMLError):
        return current
    return recorded.get("code_digest") if isinstance(recorded, dict) else current
