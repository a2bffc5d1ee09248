"""A training run's checkpoint (the project's layout, so ``run-cell`` loads it) and the state
saved inside it to resume: optimizer, step, every RNG, the log so far."""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ttt.base.config import TTTConfig
from ttt.data.codes import TrainBase
from ttt.moshi.gating import TTTGating
from ttt.moshi.layouts import UNTRAINED, codec_untrained, project_config
from ttt.moshi.surgery import ttt_layers

STATE_FILE = "train_state.pt"


def sync_twin(lm) -> None:
    """The TTT-off twin (``ttt_disabled``) runs ``linear_out``: keep it equal to the trained W^(0)
    so "off" means these weights without updates (before every checkpoint and twin evaluation)."""
    for layer in ttt_layers(lm).values():
        if isinstance(layer, TTTGating):
            with torch.no_grad():
                layer.linear_out.weight.copy_(layer.w_down.to(layer.linear_out.weight.dtype))


def write_checkpoint(out: Path, lm, base: TrainBase, lm_kwargs: dict, ttt: TTTConfig,
                     state: dict, name: str = "checkpoint") -> Path:
    """``out/<name>`` (config.json, model.safetensors, tokenizer.model, mimi.safetensors,
    train_state.pt), replaced as a whole: written beside, then swapped in by renames. ``name``
    is ``checkpoint`` (the last step, resumable) or ``best`` (the selected one)."""
    sync_twin(lm)
    final = out / name
    tmp = out / f".{name}.tmp{os.getpid()}"
    old = out / f".{name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in lm.state_dict().items()},
              str(tmp / "model.safetensors"))
    shutil.copyfile(base.sources.tokenizer, tmp / "tokenizer.model")
    try:  # 385 MB for the random Mimi: a hard link where the filesystem allows
        os.link(base.sources.mimi, tmp / "mimi.safetensors")
    except OSError:
        shutil.copyfile(base.sources.mimi, tmp / "mimi.safetensors")
    codec = UNTRAINED if codec_untrained(base.spec, base.sources.directory) else None
    config = {**project_config(lm_kwargs, codec), "ttt_config": _seeds_ttt(ttt)}
    (tmp / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    torch.save(state, tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _seeds_ttt(ttt: TTTConfig) -> dict:
    """The seeds' ``ttt_config`` keys, for readers that know only those."""
    out = {"enabled": ttt.enabled, "start_layer": ttt.start_layer,
           "layer_frequency": ttt.layer_frequency, "chunk_size": ttt.chunk_size,
           "learning_rate": ttt.lr, "conv_kernel_size": ttt.conv_kernel_size,
           "delta_clip_fro_norm": ttt.delta_clip_fro_norm}
    if ttt.layers is not None:
        out["layers"] = list(ttt.layers)
    return out


def rng_state(batch_state: torch.Tensor) -> dict:
    """Every RNG's state as tensors and plain values, so ``torch.load(weights_only=True)`` reads
    it back (numpy's key array travels as a tensor: nothing to unpickle). ``batch_state``: the
    batch generator's state after the last batch consumed (a worker may have drawn further)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"batch": batch_state, "torch": torch.get_rng_state(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict, g: torch.Generator) -> None:
    g.set_state(state["batch"])
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


STATE_KEYS = {"config": dict, "step": int, "optimizer": dict, "rng": dict, "log": list,
              "elapsed_s": (int, float)}


def check_state(saved, path: Path) -> dict:
    """``saved`` (a loaded ``train_state.pt``) if it has the shape :func:`write_checkpoint` gives
    it; else one line naming ``path`` and the key (a damaged or foreign file)."""
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: not a training state (a {type(saved).__name__}, expected a "
                         "mapping)")
    for key, kind in STATE_KEYS.items():
        value = saved.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{path}: training state key {key!r} missing or of the wrong type "
                             f"({type(value).__name__})")
    if saved["step"] < 0:
        raise ValueError(f"{path}: training state key 'step' is negative ({saved['step']})")
    return saved


def find_resume(out: Path) -> Path | None:
    """The checkpoint to resume from: ``checkpoint/``, or ``.checkpoint.old`` when a swap was
    interrupted between its two renames."""
    for name in ("checkpoint", ".checkpoint.old"):
        if (out / name / STATE_FILE).is_file():
            return out / name
    return None
