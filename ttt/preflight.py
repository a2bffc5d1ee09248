"""Checks the workflow runs before any job is submitted, and the model identity cells carry.

Snakemake calls :func:`check_matrix` while it builds the DAG (``snakemake -n`` included): every
cell config goes through the same validators the cell itself uses (CellConfig, TTTConfig,
YarnConfig), manifests and the launcher file must exist, and the model must resolve with a
parseable config and intact safetensors headers (read from the file's first bytes, no tensor is
loaded). A problem is one :class:`PreflightError` line naming the config key.

:func:`model_identity` is what makes a changed model rerun its cells: the model spec, its resolved
path and a digest of its files' contents, remembered per (path, size, mtime) so a 15 GB checkpoint
is hashed once, not at every DAG build.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from pathlib import Path
from typing import Any, Mapping


class PreflightError(ValueError):
    """A configuration that would make jobs fail; the message names the key."""


def nonfinite_keys(value: Any, prefix: str = "") -> list[str]:
    """Dotted keys of every NaN or infinite number in a nested config."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [prefix]
    if isinstance(value, Mapping):
        return [k for key, v in value.items() for k in nonfinite_keys(v, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(value, (list, tuple)):
        return [k for i, v in enumerate(value) for k in nonfinite_keys(v, f"{prefix}[{i}]")]
    return []


def check_config(config: Mapping[str, Any]) -> None:
    """Checks of the raw config that its JSON schema cannot make (NaN passes ``minimum``)."""
    bad = nonfinite_keys(dict(config))
    if bad:
        raise PreflightError(f"config {bad[0]}: must be a finite number, got {_get(config, bad[0])!r}")
    yarn = config.get("yarn") or {}
    if "yarn" in config.get("families", []):
        short = [t for t in yarn.get("tokens", []) if t < yarn.get("original_context", 0)]
        if short:
            raise PreflightError(f"config yarn.tokens: {short[0]} is shorter than yarn.original_context "
                                 f"({yarn['original_context']}); YaRN only extends the context")


def check_matrix(config: Mapping[str, Any], matrix: Mapping[str, Mapping[str, Any]],
                 checkpoint_ttt: Mapping[str, Any] | None = None) -> None:
    """Every cell as the cell will read it; the first problem names its config key."""
    from .config import CellConfig, TTTConfig, YarnConfig

    check_config(config)
    base_ttt = dict(checkpoint_ttt or {})
    for path, cell in matrix.items():
        family = cell["family"]
        manifest = (cell.get("data") or {}).get("manifest")
        if manifest is not None and not Path(manifest).exists():
            raise PreflightError(f"config {family}.manifest: {manifest}: not found")
        if cell.get("ttt") is not None:
            where = f"{family}.ttt" if "ttt" in (config.get(family) or {}) else "ttt"
            _as(where, lambda: TTTConfig.from_dict({**base_ttt, **cell["ttt"]}), path)
        if cell.get("yarn") is not None:
            _as("yarn", lambda: YarnConfig.from_dict(dict(cell["yarn"])), path)
    for path, cell in matrix.items():
        try:
            CellConfig.from_dict(dict(cell))
        except (ValueError, TypeError) as exc:
            head, _, rest = str(exc).partition(": ")
            where = f"{cell['family']}.{head}" if head in (config.get(cell["family"]) or {}) else head
            raise PreflightError(f"config {where}: {rest} (cell {path})") from None


def check_launcher(path: str | os.PathLike) -> None:
    from .launcher import read_launcher
    try:
        read_launcher(path)
    except ValueError as exc:
        raise PreflightError(f"config launcher: {exc}") from None


def _as(where: str, build, cell: str) -> None:
    try:
        build()
    except (ValueError, TypeError) as exc:
        head, _, rest = str(exc).partition(": ")
        key = where if head in ("ttt", "yarn") else f"{where}.{head}"  # unknown keys: whole section
        raise PreflightError(f"config {key}: {rest} (cell {cell})") from None


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.replace("[", ".").replace("]", "").split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


# ---- the model ---------------------------------------------------------------------------------

def is_embedded(spec: str) -> bool:
    return spec == "tiny" or spec.startswith("tiny:")


def model_files(spec: str, cache_root: str | os.PathLike) -> dict[str, Path]:
    """The files a cell will read for ``spec`` (a checkpoint directory), by role."""
    from .model import checkpoint_files
    return checkpoint_files(spec)


def check_model(spec: str, cache_root: str | os.PathLike) -> dict | None:
    """The checkpoint resolves, its config.json parses and its safetensors headers are intact
    (a truncated download fails here). Returns the checkpoint's own ``ttt_config`` as TTTConfig
    keys (what cells' ``ttt`` overrides), or None."""
    if is_embedded(spec):
        return None
    if not Path(spec).is_dir():
        raise PreflightError(f"config model: {spec}: not a checkpoint directory (set `model:` to "
                             "yours, or `tiny` for the embedded default)")
    try:
        files = model_files(spec, cache_root)
        from .model import read_config
        _, ttt_file, _, _ = read_config(files["config.json"])
        for name, path in files.items():
            if path.suffix == ".safetensors":
                safetensors_header(path)
    except ValueError as exc:
        raise PreflightError(f"config model: {exc}") from None
    if ttt_file:
        from .config import TTTConfig
        try:
            return TTTConfig.from_seeds(ttt_file).to_dict()
        except ValueError as exc:
            raise PreflightError(f"config model: {files['config.json']}: ttt_config.{exc}") from None
    return None


def safetensors_header(path: Path) -> dict[str, dict]:
    """The tensor table of a safetensors file (8-byte length, JSON header), checked against the
    file's size: every tensor's bytes must lie inside the file."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - 8:
                raise ValueError
            header = json.loads(f.read(length))
    except (ValueError, struct.error, UnicodeDecodeError):
        raise PreflightError(f"{path}: not a safetensors file (unreadable header)") from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = max((v["data_offsets"][1] for v in tensors.values()), default=0)
    if 8 + length + end > size:
        raise PreflightError(f"{path}: truncated ({size} bytes, its header needs {8 + length + end})")
    return tensors


def model_identity(spec: str, cache_root: str | os.PathLike) -> dict:
    """``{model, model_path, model_digest}``: what a cell's results were computed from. The
    embedded default is identified by its spec (it is rebuilt deterministically from it)."""
    if is_embedded(spec):
        seed = spec.split(":", 1)[1] if ":" in spec else "0"
        return {"model": spec, "model_path": f"tiny:{seed}",
                "model_digest": hashlib.sha256(f"tiny:{seed}".encode()).hexdigest()[:16]}
    files = model_files(spec, cache_root)
    memo = Path(cache_root) / "model-digests.json"
    digests = {role: cached_digest(path, memo) for role, path in sorted(files.items())}
    whole = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()
    return {"model": spec, "model_path": str(Path(spec).resolve()), "model_digest": whole[:16]}


def cached_digest(path: Path, memo: Path) -> str:
    """sha256 of a file, remembered in ``memo`` under (path, size, mtime_ns)."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    known = {k: v for k, v in known.items() if not k.startswith(f"{path}|")}
    known[key] = h.hexdigest()
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(f".{memo.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(known, indent=1) + "\n")
    os.replace(tmp, memo)
    return known[key]
