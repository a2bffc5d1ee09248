"""Content identities: what a cache entry or a snapshot was computed from, by content, not name.

A file's digest is the sha256 of its bytes. Hashing a 15 GB checkpoint takes a minute, so each
digest is remembered in a small JSON sidecar beside the file (``.<name>.sha256.json``), valid
while the file's (size, mtime_ns, ctime_ns, inode, device) are unchanged; where the directory is
not writable the digest is remembered for this process only. A sidecar that does not parse, or
one written before ctime was part of the stamp, is ignored.

Why ctime: size, mtime and inode can all survive an overwrite in place. A second tarball
extracted over the first keeps the sizes, tar restores the archived mtimes, and the file is
truncated and rewritten (same inode; or ext4 reuses the freed one): a cell then scored the old
audio's cached codes. ctime cannot be set from user space; any write or metadata change moves it.
Where hashing is cheap next to the work a digest guards (audio ahead of Mimi encoding), callers
hash the content every time instead (``remember=False``).
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


STAMP = ("size", "mtime_ns", "ctime_ns", "inode", "device")


def _stamp(path: Path) -> tuple[int, ...]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


def sidecar(path: str | os.PathLike) -> Path:
    """Where the digest of ``path`` is remembered."""
    path = Path(path)
    return path.with_name(f".{path.name}.sha256.json")


def file_digest(path: str | os.PathLike, remember: bool = True) -> str:
    """sha256 (hex) of the file's bytes, computed once per (path, size, mtime_ns, ctime_ns,
    inode, device); with ``remember=False`` hashed now, whatever was remembered."""
    path = Path(path).resolve()
    if not remember:
        return _hash(path)
    stamp = _stamp(path)
    key = (str(path), *stamp)
    if key in _MEMO:
        return _MEMO[key]
    remembered = _read_sidecar(path, stamp)
    if remembered is None:
        remembered = _hash(path)
        if _stamp(path) == stamp:  # not rewritten while we read it
            _write_sidecar(path, stamp, remembered)
    _MEMO[key] = remembered
    return remembered


def _hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def _read_sidecar(path: Path, stamp: tuple) -> str | None:
    try:
        data = json.loads(sidecar(path).read_text())
        if [data[k] for k in STAMP] == list(stamp):
            digest = data["sha256"]
            if isinstance(digest, str) and len(digest) == 64 and int(digest, 16) >= 0:
                return digest
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _write_sidecar(path: Path, stamp: tuple, digest: str) -> None:
    target = sidecar(path)
    try:
        write_text(target, json.dumps({**dict(zip(STAMP, stamp)), "sha256": digest}) + "\n")
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
