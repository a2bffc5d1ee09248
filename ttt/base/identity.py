"""Content identities: what a cache entry or a snapshot was computed from, by content, not name.

A file's digest is the sha256 of its bytes. Hashing a 15 GB checkpoint takes a minute, so each
digest is remembered in a small JSON sidecar beside the file (``.<name>.sha256.json``), valid
while the file's (size, mtime_ns, inode) are unchanged; where the directory is not writable the
digest is remembered for this process only. A sidecar that does not parse is ignored.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from ttt.base.files import write_text

_MEMO: dict[tuple, str] = {}
_BLOCK = 1 << 20


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def sidecar(path: str | os.PathLike) -> Path:
    """Where the digest of ``path`` is remembered."""
    path = Path(path)
    return path.with_name(f".{path.name}.sha256.json")


def file_digest(path: str | os.PathLike) -> str:
    """sha256 (hex) of the file's bytes, computed once per (path, size, mtime_ns, inode)."""
    path = Path(path).resolve()
    stamp = _stamp(path)
    key = (str(path), *stamp)
    if key in _MEMO:
        return _MEMO[key]
    remembered = _read_sidecar(path, stamp)
    if remembered is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(_BLOCK), b""):
                h.update(block)
        remembered = h.hexdigest()
        if _stamp(path) == stamp:  # not rewritten while we read it
            _write_sidecar(path, stamp, remembered)
    _MEMO[key] = remembered
    return remembered


def _read_sidecar(path: Path, stamp: tuple) -> str | None:
    try:
        data = json.loads(sidecar(path).read_text())
        if [data["size"], data["mtime_ns"], data["inode"]] == list(stamp):
            digest = data["sha256"]
            if isinstance(digest, str) and len(digest) == 64 and int(digest, 16) >= 0:
                return digest
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _write_sidecar(path: Path, stamp: tuple, digest: str) -> None:
    size, mtime_ns, inode = stamp
    target = sidecar(path)
    try:
        write_text(target, json.dumps({"size": size, "mtime_ns": mtime_ns, "inode": inode,
                                       "sha256": digest}) + "\n")
    except OSError:  # read-only checkpoint directory: remembered for this process only
        pass


def value_digest(value: Any) -> str:
    """sha256 of a JSON-able value in canonical form (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def files_digest(paths: Iterable[str | os.PathLike] | Mapping[str, str | os.PathLike]) -> str:
    """One digest over several files: by role name when given a mapping (so swapping two files'
    roles changes it), else by position."""
    items = paths.items() if isinstance(paths, Mapping) else enumerate(paths)
    return value_digest({str(k): file_digest(p) for k, p in items})


__all__ = ["file_digest", "files_digest", "value_digest", "sidecar"]
