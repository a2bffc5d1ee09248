"""Load a Moshi checkpoint directory (no hub access), or build the embedded tiny default as one.

Directory layout (ours; the seeds' ``consolidated/`` sub-folder is looked into when present):
  config.json        LM kwargs (top level or under "lm_kwargs"), optional "ttt_config",
                     "yarn_config" (seeds' keys) and "context"
  model.safetensors  LM weights (TTT layers' extra keys when TTT was trained)
  tokenizer.model    sentencepiece text tokenizer
  mimi.safetensors   Mimi weights
Every problem is a one-line ``CheckpointError`` naming the file, raised before heavy work.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sentencepiece
import torch
from moshi.models import loaders
from safetensors import safe_open
from safetensors.torch import save_file

from .config import TTTConfig, YarnConfig
from .files import read_json
from .identity import file_digest, files_digest
from .surgery import apply_ttt
from .tiny import TINY_LM_KWARGS
from .ttt_mlp import seeds_hybrid_key
from .yarn import apply_yarn

FILES = ("config.json", "model.safetensors", "tokenizer.model", "mimi.safetensors")
_NOT_LM_KWARGS = {"ttt_config", "yarn_config", "context", "lm_kwargs", "model_type", "codec"}


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be used, with the file at fault in the message."""


@dataclass
class Bundle:
    lm: Any
    mimi: Any
    tokenizer: sentencepiece.SentencePieceProcessor
    directory: Path
    ttt: TTTConfig | None
    yarn: YarnConfig | None

    @property
    def mimi_id(self) -> str:
        """Content digest of the Mimi weights: keys the cache of Mimi codes."""
        return mimi_id(self.directory)

    @property
    def content_id(self) -> str:
        """Content digest of every file of the checkpoint: what a snapshot continues."""
        return files_digest(checkpoint_files(self.directory))


def checkpoint_files(directory: str | os.PathLike) -> dict[str, Path]:
    root = Path(directory)
    if (root / "consolidated").is_dir():
        root = root / "consolidated"
    if not root.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    files = {name: root / name for name in FILES}
    if not files["model.safetensors"].is_file() and (root / "consolidated.safetensors").is_file():
        files["model.safetensors"] = root / "consolidated.safetensors"  # seeds' name
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise CheckpointError(f"{missing[0]}: missing from the checkpoint directory")
    return files


def mimi_id(directory: str | os.PathLike) -> str:
    """Content digest of a checkpoint's Mimi weights (sha256, remembered beside the file)."""
    return file_digest(checkpoint_files(directory)["mimi.safetensors"])


def read_config(path: Path) -> tuple[dict, dict | None, dict | None, int | None]:
    cfg = read_json(path, "config.json", CheckpointError)
    lm_kwargs = cfg.get("lm_kwargs") or {k: v for k, v in cfg.items() if k not in _NOT_LM_KWARGS}
    return lm_kwargs, cfg.get("ttt_config"), cfg.get("yarn_config"), cfg.get("context")


def resolve_configs(config_path: Path, ttt_file: dict | None, yarn_file: dict | None,
                    ttt_override: dict | None, yarn_override: dict | None):
    """The checkpoint's own TTT/YaRN settings (seeds' keys), overridden key by key by the cell."""
    try:
        ttt = TTTConfig.from_seeds(ttt_file) if ttt_file else None
        if ttt_override is not None:
            base = ttt.to_dict() if ttt else {}
            ttt = TTTConfig.from_dict({**base, **ttt_override})
        yarn = YarnConfig.from_seeds(yarn_file) if yarn_file else None
        if yarn_override is not None:
            base = yarn.to_dict() if yarn else {}
            yarn = YarnConfig.from_dict({**base, **yarn_override})
    except ValueError as exc:
        raise CheckpointError(f"{config_path}: {exc}") from None
    return ttt, yarn


def load_checkpoint(directory: str | os.PathLike, ttt: dict | None = None, yarn: dict | None = None,
                    device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> Bundle:
    """Model, Mimi and tokenizer of a checkpoint directory, with TTT/YaRN applied. TTT parameters
    absent from the checkpoint are initialised from ``seed`` (deterministic)."""
    files = checkpoint_files(directory)
    lm_kwargs, ttt_file, yarn_file, context = read_config(files["config.json"])
    ttt_cfg, yarn_cfg = resolve_configs(files["config.json"], ttt_file, yarn_file, ttt, yarn)
    if context is not None:
        lm_kwargs = {**lm_kwargs, "context": context}
    num_layers = lm_kwargs.get("num_layers")
    if ttt_cfg is not None and ttt_cfg.layers and num_layers is not None:
        bad = [i for i in ttt_cfg.layers if i >= num_layers]
        if bad:
            raise CheckpointError(f"{files['config.json']}: TTT layers {bad} but the model has "
                                  f"{num_layers} layers")
    with safe_open(str(files["model.safetensors"]), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    if any(".seq_modeling_block." in k for k in shapes):  # the seeds' TTT-MLP hybrid layout
        shapes = {new: v for k, v in shapes.items() if (new := _seeds_hybrid_name(k)) is not None}
    try:
        lm = loaders.get_moshi_lm(None, lm_kwargs=lm_kwargs, device=device, dtype=dtype)
    except TypeError as exc:
        raise CheckpointError(f"{files['config.json']}: bad LM kwargs ({exc})") from None
    if ttt_cfg is not None:
        torch.manual_seed(seed)
        apply_ttt(lm, ttt_cfg)
    if yarn_cfg is not None:
        apply_yarn(lm, yarn_cfg)
    _check_keys(files["model.safetensors"], lm, shapes)
    from safetensors.torch import load_file
    state = load_file(str(files["model.safetensors"]), device=str(device))
    lm.load_state_dict(state, strict=False)  # keys and shapes were checked above
    lm.eval()
    try:
        tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(files["tokenizer.model"]))
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(f"{files['tokenizer.model']}: not a sentencepiece model ({exc})") from None
    try:
        mimi = loaders.get_mimi(str(files["mimi.safetensors"]), device=device,
                                num_codebooks=lm.dep_q)
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(f"{files['mimi.safetensors']}: {str(exc).splitlines()[0]}") from None
    return Bundle(lm, mimi, tokenizer, Path(directory), ttt_cfg, yarn_cfg)


def _seeds_hybrid_name(key: str) -> str | None:
    """A full key of a seeds' hybrid checkpoint in our names (the layer does the same on load)."""
    match = re.match(r"(transformer\.layers\.\d+\.)(.*)", key)
    if not match:
        return key
    name = seeds_hybrid_key(match.group(2))
    return None if name is None else match.group(1) + name


def _check_keys(path: Path, lm, shapes: dict[str, tuple]) -> None:
    want = {k: tuple(v.shape) for k, v in lm.state_dict().items()}
    ttt_extra = {k for k in want if ".gating.w_down" in k or ".gating.target_generator." in k
                 or ".ttt_mlp." in k}
    # A checkpoint without any TTT weights (upstream, or trained with TTT off) gets fresh TTT
    # parameters: W^(0) from linear_out, the target generator (or the TTT-MLP branch) from its
    # initialisation.
    has_ttt_weights = any(".gating.target_generator." in k or ".ttt_mlp." in k for k in shapes)
    optional = {k for k in ttt_extra if k.endswith(".gating.w_down") or not has_ttt_weights}
    missing = sorted(set(want) - set(shapes) - optional)
    ignored = {k for k in shapes if k.endswith(".gating.w_down_pretrained")}
    # Target weights of a TTT layer whose config ablates that part (target_conv /
    # target_projection off) are dropped on load (gating._seeds_load_hook).
    ignored |= {k for k in shapes if k.endswith((".gating.target_generator.conv1d.conv.weight",
                                                 ".gating.target_generator.W_target.weight"))
                and k.split(".target_generator.")[0] + ".w_down" in want}
    unexpected = sorted(set(shapes) - set(want) - ignored)
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} missing key(s), e.g. {missing[0]} "
                              "(TTT layers or model config differ from the checkpoint?)")
    if unexpected:
        raise CheckpointError(f"{path}: {len(unexpected)} unexpected key(s), e.g. {unexpected[0]} "
                              "(TTT layers or model config differ from the checkpoint?)")
    for key, shape in shapes.items():
        if key in want and want[key] != shape:
            raise CheckpointError(f"{path}: {key} has shape {list(shape)}, the model expects "
                                  f"{list(want[key])}")


# ---- the embedded default ---------------------------------------------------------------------

DEFAULT_LM_KWARGS = {**TINY_LM_KWARGS, "card": 2048, "text_card": 64, "context": 3000}
DEMO_WORDS = ("hello world how are you today fine thanks good morning yes no maybe tell me about "
              "the weather it is sunny and warm what time we could go for a walk later sounds "
              "great see you soon").split()


def build_tiny_checkpoint(directory: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny random Moshi LM (Moshi's 17 streams and delays), a random Mimi with initialised
    codebooks and a sentencepiece tokenizer trained on the demo vocabulary, written atomically as
    a checkpoint directory. Deterministic from ``seed``; a few seconds on CPU."""
    target = Path(directory)
    if target.is_dir():
        checkpoint_files(target)  # complete, or an error naming what is missing
        return target
    torch.manual_seed(seed)
    lm = loaders.get_moshi_lm(None, lm_kwargs=DEFAULT_LM_KWARGS, device="cpu", dtype=torch.float32)
    mimi = loaders.get_mimi(None, device="cpu", num_codebooks=lm.dep_q)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # random Mimi's codebooks start at zero: every code would be 0
        for module in mimi.modules():
            if hasattr(module, "embedding_sum"):
                module.embedding_sum.copy_(0.01 * torch.randn(module.embedding_sum.shape, generator=g))
                module._embedding = None
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in lm.state_dict().items()}, str(tmp / "model.safetensors"))
    save_file({k: v.contiguous() for k, v in mimi.state_dict().items()}, str(tmp / "mimi.safetensors"))
    (tmp / "tokenizer.model").write_bytes(_train_tokenizer())
    (tmp / "config.json").write_text(json.dumps({"lm_kwargs": DEFAULT_LM_KWARGS, "codec": UNTRAINED},
                                                indent=1))
    try:
        tmp.rename(target)
    except OSError:  # another process built it first (cells starting together): use theirs
        shutil.rmtree(tmp, ignore_errors=True)
        checkpoint_files(target)
    return target


UNTRAINED = "untrained"  # config.json "codec" of a checkpoint whose Mimi is random (its audio is noise)


def codec_untrained(spec: str, directory: str | os.PathLike) -> bool:
    """Whether the checkpoint's Mimi is the random one the embedded default builds: its audio is
    noise, so nothing heard in it can be judged (the ASR verdict says n/a). ``tiny`` specs are
    always random (also checkpoints cached before the marker existed)."""
    if spec == "tiny" or spec.startswith("tiny:"):
        return True
    try:
        return read_json(checkpoint_files(directory)["config.json"], "config.json").get("codec") == UNTRAINED
    except (ValueError, AttributeError):
        return False


def _train_tokenizer() -> bytes:
    lines = [" ".join(DEMO_WORDS[i:] + DEMO_WORDS[:i]) for i in range(len(DEMO_WORDS))]
    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 4), model_writer=buffer, vocab_size=60,
        model_type="unigram", hard_vocab_limit=False, unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        seed_sentencepiece_size=1000, minloglevel=2, num_threads=1)  # single thread: deterministic
    return buffer.getvalue()


def resolve_model(spec: str, cache_root: str | os.PathLike = "results/models") -> Path:
    """'tiny' or 'tiny:SEED' → the cached embedded default (built on first use); else a path."""
    if spec == "tiny" or spec.startswith("tiny:"):
        seed = int(spec.split(":", 1)[1]) if ":" in spec else 0
        return build_tiny_checkpoint(Path(cache_root) / f"tiny-seed{seed}", seed)
    return Path(spec)
