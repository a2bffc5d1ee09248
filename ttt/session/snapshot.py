"""Snapshot and restore the complete streaming state, for replay and preemption.

moshi keeps each streaming module's state in a small dataclass (KV ring caches and offsets,
LMGen's delay cache, our fast weights and partial-chunk buffers, Mimi's conv buffers, ...).
A snapshot walks those states generically: tensors are copied to CPU, host values (ints, lists,
flags) are kept, and what only makes sense in the running process (CUDA graphs, callbacks,
exit stacks, references to parameters) is skipped. Restore writes tensors back *in place*, so
buffers captured by CUDA graphs stay valid, into a session started with the same batch size.
The RNG states travel too, so sampled tokens continue identically.

On disk a snapshot is one safetensors file: the tensors, and everything else as JSON in its
metadata. Nothing in it is executable, so a file planted in a shared results tree cannot run
code when a run resumes (a pickle, which ``torch.save`` writes, could).
"""
from __future__ import annotations

import json
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from moshi.modules.streaming import StreamingModule
from moshi.utils.compile import CUDAGraphed
from safetensors import safe_open
from safetensors.torch import save_file

from ttt.base.files import atomic_write

FORMAT = "ttt-streaming-snapshot/1"
# Process-local or derived from parameters: never saved, never overwritten.
_SKIP = {"device", "w0", "base_params", "graphed_main", "graphed_depth", "exit_stack", "reset_callback",
         "set_exec_mask_callback", "_set_exec_mask_graphed"}
_PLAIN = (int, float, bool, str, type(None))


def _encode(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, _PLAIN) for v in value):
        return list(value)
    if isinstance(value, (CUDAGraphed, ExitStack)) or callable(value):
        return _Skipped
    if hasattr(value, "__dict__"):  # e.g. moshi's RingKVCache
        return {"__object__": type(value).__name__, **_encode_fields(vars(value))}
    raise TypeError(f"snapshot: cannot save a {type(value).__name__}")


class _Skipped:
    pass


def _encode_fields(fields: Mapping[str, Any]) -> dict:
    out = {}
    for key, value in fields.items():
        if key in _SKIP:
            continue
        encoded = _encode(value)
        if encoded is not _Skipped:
            out[key] = encoded
    return out


def _decode_into(obj: Any, saved: Mapping[str, Any], where: str) -> None:
    for key, value in saved.items():
        if key == "__object__":
            continue
        current = getattr(obj, key, None)
        if isinstance(value, torch.Tensor):
            if not isinstance(current, torch.Tensor) or current.shape != value.shape:
                got = None if current is None else tuple(getattr(current, "shape", ()))
                raise ValueError(f"snapshot: {where}.{key} has shape {tuple(value.shape)}, the "
                                 f"running session has {got} (same model and batch size?)")
            current.copy_(value.to(current.device))
        elif isinstance(value, dict) and "__object__" in value:
            _decode_into(current, value, f"{where}.{key}")
        else:
            setattr(obj, key, list(value) if isinstance(value, list) else value)


def snapshot(modules: Mapping[str, StreamingModule], extra: Any = None,
             identity: Mapping[str, Any] | None = None) -> dict:
    """The streaming state of each named module (e.g. ``{"gen": lm_gen, "mimi": mimi}``), the RNG
    states, ``extra`` (the caller's position in its input, outputs so far, ...) and ``identity``
    (what the run continues: config, model, code and input digests; see
    :func:`identity_mismatch`)."""
    states = {}
    for name, module in modules.items():
        if not module.is_streaming:
            raise RuntimeError(f"snapshot: {name} is not streaming")
        states[name] = {sub: _encode_fields(vars(state))
                        for sub, state in module.get_streaming_state().items()}
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"format": FORMAT, "identity": dict(identity or {}), "states": states, "rng": rng,
            "extra": extra}


def identity_mismatch(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """What differs between a snapshot's identity and the run about to continue it, as one
    short phrase (``"config.seed 0 → 1, model content"``), or None when they agree."""
    def flat(d, prefix=""):
        out = {}
        for key, value in (d or {}).items():
            if isinstance(value, Mapping):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    a, b = flat(saved), flat(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            old, new = a.get(key, "<absent>"), b.get(key, "<absent>")
            long = any(isinstance(v, str) and len(v) == 64 for v in (old, new))
            diffs.append(f"{key} differs" if long else f"{key} {old!r} → {new!r}")
    return ", ".join(diffs) if diffs else None


def restore(modules: Mapping[str, StreamingModule], snap: Mapping[str, Any]) -> Any:
    """Write a snapshot into running sessions of the same modules; returns its ``extra``."""
    if snap.get("format") != FORMAT:
        raise ValueError(f"snapshot: unknown format {snap.get('format')!r}, expected {FORMAT!r}")
    missing = sorted(set(snap["states"]) - set(modules))
    if missing:
        raise ValueError(f"snapshot: no running module for {missing}")
    for name, saved in snap["states"].items():
        live = modules[name].get_streaming_state()
        if set(live) != set(saved):
            raise ValueError(f"snapshot: {name} has streaming modules {sorted(set(live) ^ set(saved))} "
                             "on one side only (TTT layers or model config differ?)")
        for sub, fields in saved.items():
            state = live[sub]
            if state.batch_size != fields.get("batch_size", state.batch_size):
                raise ValueError(f"snapshot: {name}.{sub} was saved with batch size "
                                 f"{fields['batch_size']}, the session has {state.batch_size}")
            _decode_into(state, fields, f"{name}.{sub or '<root>'}")
    torch.set_rng_state(snap["rng"]["cpu"])
    if "cuda" in snap["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(snap["rng"]["cuda"])
    return snap["extra"]


class SnapshotError(ValueError):
    """A snapshot file that cannot be read (truncated, garbage, unknown format)."""


class SnapshotMismatch(ValueError):
    """A snapshot taken by a run with other settings, model or input: resuming would mix runs."""


def refuse_mismatch(path, saved: Mapping[str, Any] | None, current: Mapping[str, Any]) -> None:
    """Raise :class:`SnapshotMismatch` (one line saying what differs) unless they agree."""
    if saved is not None and not isinstance(saved, Mapping):
        raise SnapshotMismatch(f"{path}: snapshot with a malformed identity (a "
                               f"{type(saved).__name__}, not a mapping); refusing to resume from "
                               "it: rerun with --fresh (or delete it) to start afresh")
    differs = identity_mismatch(saved, current)
    if differs:
        raise SnapshotMismatch(f"{path}: snapshot of another run ({differs}); refusing to mix "
                               "runs: rerun with --fresh (or delete it) to start afresh")


def read_identity(path: str | os.PathLike) -> dict | None:
    """A snapshot's identity from its header alone (no tensors read); None when unreadable."""
    try:
        with safe_open(str(path), "pt") as f:
            identity = json.loads((f.metadata() or {})["ttt"]).get("identity")
        return identity if isinstance(identity, dict) else None
    except Exception:  # noqa: BLE001 - unreadable: discarded when its input is reached
        return None


def save_snapshot(path: str | os.PathLike, snap: Mapping[str, Any]) -> None:
    """Atomic (temporary name in the same directory, then rename). The file is safetensors: the
    tensors, plus the rest of the snapshot as JSON in its metadata, so loading it never runs
    code (a pickle would)."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    structure = json.dumps(_pack(dict(snap), tensors))
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"ttt": structure}))


def load_snapshot(path: str | os.PathLike) -> dict:
    """The snapshot saved at ``path``; a :class:`SnapshotError` naming it when unreadable."""
    try:
        with safe_open(str(path), "pt") as f:
            structure = (f.metadata() or {}).get("ttt")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if structure is None:
            raise ValueError("no snapshot structure in its metadata")
        snap = _unpack(json.loads(structure), tensors)
        if not isinstance(snap, dict) or snap.get("format") != FORMAT:
            raise ValueError(f"unknown format, expected {FORMAT!r}")
        return snap
    except FileNotFoundError:
        raise FileNotFoundError(f"snapshot: {path}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - safetensors, JSON and structure errors alike
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SnapshotError(f"{path}: unreadable snapshot ({detail})") from None


def _pack(value: Any, tensors: dict) -> Any:
    """JSON-able structure with every tensor / array replaced by a reference into ``tensors``."""
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().to("cpu").contiguous().clone()
        return {"$tensor": key}
    if isinstance(value, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value).copy())
        return {"$ndarray": key}
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, tuple):
        return {"$tuple": [_pack(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_pack(v, tensors) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _pack(v, tensors) for k, v in value.items()}
        return {"$items": [[_pack(k, tensors), _pack(v, tensors)] for k, v in value.items()]}
    raise TypeError(f"snapshot: cannot save a {type(value).__name__}")


def _unpack(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_unpack(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "$tensor" in value:
        return tensors[value["$tensor"]]
    if "$ndarray" in value:
        return tensors[value["$ndarray"]].numpy()
    if "$tuple" in value:
        return tuple(_unpack(v, tensors) for v in value["$tuple"])
    if "$items" in value:
        return {_freeze(_unpack(k, tensors)): _unpack(v, tensors) for k, v in value["$items"]}
    return {k: _unpack(v, tensors) for k, v in value.items()}


def _freeze(key: Any) -> Any:
    if not isinstance(key, (int, float, bool, str, tuple, type(None))):
        raise ValueError(f"unusable mapping key {key!r}")
    return key
