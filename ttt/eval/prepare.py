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


def prepare(cfg, log=print) -> dict:
    """Tokenise every input of ``cfg`` (a CellConfig) into the codes cache; returns the marker's
    content (inputs and their frame counts)."""
    from ttt.eval.cell import cell_items
    from ttt.data.codes import conversation_codes
    from ttt.base.identity import file_digest
    from ttt.moshi.model import load_codec

    cache = Path(cfg.cache_dir)
    items = cell_items(cfg, cache)
    device = preparation_device(cfg.device)
    if device != cfg.device:
        log(f"{cfg.device} is not available here: preparing on the CPU")
    mimi, tokenizer, sources = load_codec(cfg.model, device, cfg.base, cache / "models")
    frames = [conversation_codes(mimi, tokenizer, item, cache / "codes",
                                 file_digest(sources.mimi)).shape[-1]
              for item in items]
    return {"items": [str(i.path) for i in items], "frames": frames, "device": device}
