"""Data preparation: Mimi codes of a cell's inputs, computed once and cached by content, with Mimi
and the tokenizer alone — never the LM, so it fits a login node (seconds and ~100 MB of Mimi
instead of a 7B model) and runs on CPU where the configured GPU is absent.
"""
from __future__ import annotations

from pathlib import Path


def preparation_device(device: str) -> str:
    """The configured device, or the CPU where it is a CUDA device this host lacks (a login node
    preparing for GPU jobs). Codes are cached per file content and Mimi, whichever computed them."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        return "cpu"
    return device


def load_codec(directory: Path, device: str):
    """(Mimi, tokenizer) of a checkpoint directory, the LM's weights untouched (its config gives
    how many codebooks Mimi emits)."""
    import sentencepiece
    from moshi.models import loaders

    from .model import CheckpointError, checkpoint_files, read_config

    files = checkpoint_files(directory)
    lm_kwargs = read_config(files["config.json"])[0]
    dep_q = int(lm_kwargs.get("dep_q", loaders._lm_kwargs["dep_q"]))
    try:
        tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(files["tokenizer.model"]))
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(f"{files['tokenizer.model']}: not a sentencepiece model ({exc})") from None
    try:
        mimi = loaders.get_mimi(str(files["mimi.safetensors"]), device=device, num_codebooks=dep_q)
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(f"{files['mimi.safetensors']}: {str(exc).splitlines()[0]}") from None
    return mimi, tokenizer


def prepare(cfg, log=print) -> dict:
    """Tokenise every input of ``cfg`` (a CellConfig) into the codes cache; returns the marker's
    content (inputs and their frame counts)."""
    from .cell import cell_items
    from .data import conversation_codes
    from .model import mimi_id, resolve_model

    cache = Path(cfg.cache_dir)
    items = cell_items(cfg, cache)
    directory = resolve_model(cfg.model, cache / "models")
    device = preparation_device(cfg.device)
    if device != cfg.device:
        log(f"{cfg.device} is not available here: preparing on the CPU")
    mimi, tokenizer = load_codec(directory, device)
    frames = [conversation_codes(mimi, tokenizer, item, cache / "codes", mimi_id(directory)).shape[-1]
              for item in items]
    return {"items": [str(i.path) for i in items], "frames": frames, "device": device}
