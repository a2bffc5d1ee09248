"""Load a model at the size of its weights (the embedded tiny default is built by :mod:`ttt.moshi.tiny`).

Where the files come from (every layout users have) is :mod:`ttt.moshi.checkpoints`. Loading builds the
LM on the meta device (no random weights), checks every key and shape against the file headers
(:func:`inspect_checkpoint`, also usable on its own before any job starts), then assigns the
stored tensors (cast to the model's dtype, one at a time), merges LoRA adapters, and only then
applies TTT/YaRN surgery on the real device: TTT parameters absent from the checkpoint are
initialised there from ``seed``. Peak memory is the weights plus one tensor.
Every problem is a one-line ``CheckpointError`` naming the file or key, raised before heavy work.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sentencepiece
import torch
from moshi.models import loaders
from safetensors import safe_open

from ttt.moshi.architecture import check_architecture
from ttt.moshi.layouts import CheckpointError, Sources
from ttt.moshi.checkpoints import locate, resolve_checkpoint
from ttt.base.config import TTTConfig, YarnConfig
from ttt.base.files import read_json
from ttt.base.identity import file_digest, files_digest
from ttt.moshi.surgery import apply_ttt, remove_ttt
from ttt.moshi.ttt_mlp import seeds_hybrid_key
from ttt.moshi.yarn import apply_yarn


@dataclass
class Bundle:
    """The LM, its tokenizer and (on first use) its Mimi. Mimi is loaded when something encodes
    or decodes: a teacher-forced cell whose codes the prepare job cached never puts Mimi's
    weights (385 MB for the random one) on the device beside the LM."""

    lm: Any
    loaded_mimi: Any  # None until :attr:`mimi` is first read (its file's header checked at load)
    tokenizer: sentencepiece.SentencePieceProcessor
    directory: Path
    ttt: TTTConfig | None
    yarn: YarnConfig | None
    sources: Sources | None = None
    device: str = "cpu"

    @property
    def mimi(self):
        if self.loaded_mimi is None:
            self.loaded_mimi = load_mimi(self.sources, self.device)
        return self.loaded_mimi

    def release_mimi(self) -> None:
        """Drop a loaded Mimi (it is loaded again if anything reads :attr:`mimi` later)."""
        self.loaded_mimi = None

    @property
    def files(self) -> dict[str, Path]:
        """The files the model was built from, by role (LM weights, LoRA, Mimi, tokenizer, ...)."""
        return self.sources.files if self.sources else {}

    @property
    def mimi_id(self) -> str:
        """Content digest of the Mimi weights: keys the cache of Mimi codes."""
        return file_digest(self.sources.mimi)

    @property
    def content_id(self) -> str:
        """Content digest of every file the model is built from: what a snapshot continues."""
        return files_digest(self.sources.files)


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


def _sources(model, base, cache_root) -> Sources:
    return model if isinstance(model, Sources) else resolve_checkpoint(model, base, cache_root)


def _header(path: Path) -> dict[str, tuple]:
    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # SafetensorError, OSError
        raise CheckpointError(f"{path}: not a readable safetensors file "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def _meta_model(sources: Sources, ttt, yarn, dtype, with_yarn: bool = False):
    """The LM on the meta device (no memory), its TTT/YaRN settings, the checkpoint's key map;
    every key and shape of the weights (and LoRA adapters) checked against it."""
    where = sources.config or sources.directory
    ttt_cfg, yarn_cfg = resolve_configs(where, sources.ttt, sources.yarn, ttt, yarn)
    num_layers = sources.lm_kwargs.get("num_layers")
    if ttt_cfg is not None and isinstance(num_layers, int):
        try:  # layers out of range, or an enabled TTT on no layer (it would run as TTT off)
            ttt_cfg.selected_layers(num_layers)
        except ValueError as exc:
            raise CheckpointError(f"ttt.{exc} (model {where})") from None
    try:
        with torch.device("meta"):  # LMModel builds text_linear, depformer_in on the CPU first
            lm = loaders.get_moshi_lm(None, lm_kwargs=sources.lm_kwargs, device="meta", dtype=dtype)
    except (TypeError, ValueError, KeyError, AssertionError) as exc:
        raise CheckpointError(f"{where}: bad LM kwargs ({str(exc).splitlines()[0]})") from None
    shapes = _header(sources.lm_weights)
    names = {k: k for k in shapes}
    if any(".seq_modeling_block." in k for k in shapes):  # the seeds' TTT-MLP hybrid layout
        names = {k: _seeds_hybrid_name(k) for k in shapes}
        shapes = {names[k]: v for k, v in shapes.items() if names[k] is not None}
    plain = {k: tuple(v.shape) for k, v in lm.state_dict().items()}
    if sources.lora is not None:
        _check_lora(sources.lora, plain)
    try:
        if ttt_cfg is not None:
            apply_ttt(lm, ttt_cfg)
        if with_yarn and yarn_cfg is not None:
            apply_yarn(lm, yarn_cfg)
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    _check_keys(sources.lm_weights, lm, shapes)
    if ttt_cfg is not None:
        remove_ttt(lm)
    return lm, ttt_cfg, yarn_cfg, names


def _check_lora(path: Path, plain: dict[str, tuple]) -> None:
    """moshi's LoRALinear keys (``X.lora_A.weight`` [r, in], ``X.lora_B.weight`` [out, r]) for a
    plain ``X.weight``; any other key (moshi-finetune ``ft_embed``) replaces a plain weight."""
    for key, shape in _header(path).items():
        if key.endswith((".lora_A.weight", ".lora_B.weight")):
            prefix = key[:-len("lora_A.weight")]
            target = prefix + "weight"
            if target not in plain:
                raise CheckpointError(f"{path}: {key} adapts {target}, which the model does not have")
            out, inp = plain[target]
            a_or_b = key.endswith(".lora_A.weight")
            if len(shape) != 2 or (shape[1] if a_or_b else shape[0]) != (inp if a_or_b else out):
                raise CheckpointError(f"{path}: {key} has shape {list(shape)}, incompatible with "
                                      f"{target} {[out, inp]}")
        elif key not in plain or plain[key] != shape:
            raise CheckpointError(f"{path}: {key} is neither a LoRA adapter nor a weight of the "
                                  "model with that shape")


def inspect_checkpoint(model: str | os.PathLike | Sources, base: str | os.PathLike | None = None,
                       ttt: dict | None = None, yarn: dict | None = None,
                       cache_root: str | os.PathLike = "results/models") -> Sources:
    """Resolve ``model`` and check its config, every tensor header (LM, LoRA, Mimi) and the
    tokenizer, reading no weights: cheap enough to run for every model before jobs start."""
    sources = _sources(model, base, cache_root)
    _meta_model(sources, ttt, yarn, torch.float32, with_yarn=True)
    _check_mimi_header(sources)
    _check_fit(sources, _tokenizer(sources))
    return sources


def _check_mimi_header(sources: Sources) -> None:
    """Every tensor Mimi needs is in its file with its shape (headers only): a Mimi loaded on
    first use then cannot fail on its content."""
    stored = _header(sources.mimi)
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in
                loaders.get_mimi(None, _mimi_config(sources), device="meta").state_dict().items()}
    missing = sorted(set(want) - set(stored))
    if missing:
        raise CheckpointError(f"{sources.mimi}: not Mimi weights ({len(missing)} "
                              f"missing key(s), e.g. {missing[0]})")
    wrong = sorted(k for k in want if stored[k] != want[k])
    if wrong:
        raise CheckpointError(f"{sources.mimi}: {wrong[0]} has shape {list(stored[wrong[0]])}, "
                              f"Mimi's is {list(want[wrong[0]])}")


def _check_fit(sources: Sources, tokenizer: sentencepiece.SentencePieceProcessor) -> None:
    """LM, Mimi and tokenizer fit together (card, text_card, n_q/dep_q): headers only."""
    try:
        check_architecture(sources.lm_kwargs, sources.config or sources.directory,
                           _header(sources.mimi), sources.mimi, tokenizer.vocab_size(),
                           sources.tokenizer)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


def load_checkpoint(model: str | os.PathLike | Sources, ttt: dict | None = None,
                    yarn: dict | None = None, device: str = "cpu",
                    dtype: torch.dtype = torch.float32, seed: int = 0,
                    base: str | os.PathLike | None = None,
                    cache_root: str | os.PathLike = "results/models") -> Bundle:
    """Model, Mimi and tokenizer, with TTT/YaRN applied. TTT parameters absent from the
    checkpoint are initialised from ``seed`` (deterministic), on ``device``."""
    sources = _sources(model, base, cache_root)
    lm, ttt_cfg, yarn_cfg, names = _meta_model(sources, ttt, yarn, dtype)
    tokenizer = _tokenizer(sources)
    _check_fit(sources, tokenizer)
    extra = _assign_weights(lm, sources, names, device)
    if ttt_cfg is not None:
        torch.manual_seed(seed)
        apply_ttt(lm, ttt_cfg)
        lm.load_state_dict(extra, strict=False)  # TTT keys; checked in _meta_model
    if yarn_cfg is not None:
        apply_yarn(lm, yarn_cfg)
    left = [n for n, t in [*lm.named_parameters(), *lm.named_buffers()] if t.is_meta]
    if left:  # a parameter moshi creates but no checkpoint carries
        raise CheckpointError(f"{sources.lm_weights}: {len(left)} tensor(s) not in the checkpoint, "
                              f"e.g. {left[0]}")
    lm.eval()
    _check_mimi_header(sources)
    return Bundle(lm, None, tokenizer, sources.directory, ttt_cfg, yarn_cfg, sources, str(device))


def load_mimi(sources: Sources, device: str = "cpu"):
    """Mimi alone (its own config, the LM's codebook count from the LM kwargs): what data
    preparation needs, the LM untouched. Built on the meta device and assigned the stored
    tensors like the LM (upstream ``get_mimi`` initialises a random Mimi first)."""
    _header(sources.mimi)  # a garbage or truncated file: one line naming it
    try:
        with torch.device("meta"):  # get_mimi builds its SEANet convs without a device
            mimi = loaders.get_mimi(None, _mimi_config(sources), device="meta")
        cpu = torch.device(device).type == "cpu"  # CPU tensors view the mmapped file: copy them
        with safe_open(str(sources.mimi), "pt", device=str(device)) as f:
            state = {k: f.get_tensor(k).clone() if cpu else f.get_tensor(k) for k in f.keys()}
        mimi.load_state_dict(state, assign=True)
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(f"{sources.mimi}: {str(exc).splitlines()[0]}") from None
    left = [n for n, t in [*mimi.named_parameters(), *mimi.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{sources.mimi}: {len(left)} tensor(s) not in the file, e.g. {left[0]}")
    mimi.set_num_codebooks(sources.num_codebooks)
    return mimi.eval()


def load_codec(model: str | os.PathLike | Sources, device: str = "cpu",
               base: str | os.PathLike | None = None,
               cache_root: str | os.PathLike = "results/models"):
    """(Mimi, tokenizer, sources) of a model, its LM weights never read."""
    sources = _sources(model, base, cache_root)
    return load_mimi(sources, device), _tokenizer(sources), sources


def _assign_weights(lm, sources: Sources, names: dict, device) -> dict:
    """Put the stored tensors in place of the meta ones (``assign``: no second copy), each cast
    to the dtype the model declares, LoRA adapters merged; returns the keys the plain LM has no
    place for (TTT weights, loaded after surgery). On CPU safetensors hands out views of the
    memory-mapped file: they are copied, or rewriting the file would change the model."""
    want = {k: v.dtype for k, v in lm.state_dict().items()}
    copy = torch.device(device).type == "cpu"
    state, extra = {}, {}
    with safe_open(str(sources.lm_weights), "pt", device=str(device)) as f:
        for key in f.keys():
            name = names.get(key, key)
            if name is None:
                continue
            tensor = f.get_tensor(key)
            if name in want:
                state[name] = tensor.to(want[name], copy=copy)
            else:
                extra[name] = tensor
    if sources.lora is not None:
        _merge_lora(state, sources.lora, sources.lora_scaling, device)
    lm.load_state_dict(state, strict=False, assign=True)
    return extra


def _merge_lora(state: dict, path: Path, scaling: float, device) -> None:
    """W ← W + scaling · B A (moshi's ``replace_lora_with_linear`` and moshi-finetune's
    ``merge_weight``), computed in float32 and rounded once to W's dtype."""
    with safe_open(str(path), "pt", device=str(device)) as f:
        for key in f.keys():
            if key.endswith(".lora_B.weight"):
                continue
            if key.endswith(".lora_A.weight"):
                prefix = key[:-len("lora_A.weight")]
                a = f.get_tensor(key).float()
                b = f.get_tensor(prefix + "lora_B.weight").float()
                w = state[prefix + "weight"]
                state[prefix + "weight"] = (w.float() + scaling * (b @ a)).to(w.dtype)
            else:
                state[key] = f.get_tensor(key).to(state[key].dtype, copy=True)


def _mimi_config(sources: Sources) -> dict | None:
    return read_json(sources.mimi_config, "Mimi config", CheckpointError) if sources.mimi_config else None


def _tokenizer(sources: Sources) -> sentencepiece.SentencePieceProcessor:
    try:
        return sentencepiece.SentencePieceProcessor(model_file=str(sources.tokenizer))
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(f"{sources.tokenizer}: not a sentencepiece model "
                              f"({str(exc).splitlines()[0]})") from None


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
    if not ttt_extra:  # TTT off (the twin of a model trained with TTT): its TTT weights unused
        ignored |= {k for k in shapes if ".gating.w_down" in k or ".gating.target_generator." in k
                    or ".ttt_mlp." in k}
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


def mimi_id(model: str | os.PathLike | Sources, cache_root: str | os.PathLike = "results/models",
            base: str | os.PathLike | None = None) -> str:
    """Content digest of a model's Mimi weights (sha256, remembered beside the file)."""
    return file_digest(_sources(model, base, cache_root).mimi)


def resolve_model(spec: str, cache_root: str | os.PathLike = "results/models") -> Path:
    """'tiny' → the trained embedded default; 'tiny-random[:SEED]' → an untrained random tiny
    model (fast tests), both built in the cache on first use; a Hugging Face repo id → its local
    snapshot; else the directory as given."""
    return locate(spec, cache_root)
