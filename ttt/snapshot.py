"""Snapshot and restore the complete streaming state, for replay and preemption.

moshi keeps each streaming module's state in a small dataclass (KV ring caches and offsets,
LMGen's delay cache, our fast weights and partial-chunk buffers, Mimi's conv buffers, ...).
A snapshot walks those states generically: tensors are copied to CPU, host values (ints, lists,
flags) are kept, and what only makes sense in the running process (CUDA graphs, callbacks,
exit stacks, references to parameters) is skipped. Restore writes tensors back *in place*, so
buffers captured by CUDA graphs stay valid, into a session started with the same batch size.
The RNG states travel too, so sampled tokens continue identically.
"""
from __future__ import annotations

import io
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Mapping

import torch
from moshi.modules.streaming import StreamingModule
from moshi.utils.compile import CUDAGraphed

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


def snapshot(modules: Mapping[str, StreamingModule], extra: Any = None) -> dict:
    """The streaming state of each named module (e.g. ``{"gen": lm_gen, "mimi": mimi}``), the RNG
    states and ``extra`` (the caller's position in its input, outputs so far, ...)."""
    states = {}
    for name, module in modules.items():
        if not module.is_streaming:
            raise RuntimeError(f"snapshot: {name} is not streaming")
        states[name] = {sub: _encode_fields(vars(state))
                        for sub, state in module.get_streaming_state().items()}
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"format": FORMAT, "states": states, "rng": rng, "extra": extra}


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


def save_snapshot(path: str | os.PathLike, snap: Mapping[str, Any]) -> None:
    """Atomic: written to a temporary name in the same directory, then renamed."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(dict(snap), buffer)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(buffer.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_snapshot(path: str | os.PathLike) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"snapshot: {path}: no such file") from None
