"""The files of a checkpoint directory as users have them, found without loading any weights.

A directory may be in one of these layouts (the file and key names are the upstream projects'):

* Hugging Face / moshi ``loaders.CheckpointInfo``: ``model.safetensors``,
  ``tokenizer-e351c8d8-checkpoint125.safetensors`` (Mimi), ``tokenizer_spm_32k_3.model``, and
  optionally ``config.json`` = flat LM kwargs + ``moshi_name``, ``mimi_name``,
  ``tokenizer_name``, ``mimi_config_name``, ``lora_name``, ``lm_gen_config``, ... (no
  ``config.json`` = moshi's 7B defaults, ``loaders._lm_kwargs``);
* moshi-finetune (``finetune/checkpointing.py``): a run directory (the latest
  ``checkpoints/checkpoint_NNNNNN/consolidated/`` is taken), a ``checkpoint_NNNNNN`` folder or
  its ``consolidated/`` folder, holding ``consolidated.safetensors`` (full fine-tune or LoRA
  merged) or ``lora.safetensors`` (adapters only) and ``config.json`` (the base's LM kwargs +
  ``lora``, ``lora_rank``, ``lora_scaling``). The base model (LM weights under adapters, Mimi,
  tokenizer) is the one named by the user (``base:``) or by the run's ``args.yaml``
  (``moshi_paths``: ``hf_repo_id``, ``moshi_path``, ``mimi_path``, ``tokenizer_path``);
* the seeds' (``consolidated/consolidated.safetensors`` + ``ttt_config`` / ``yarn_config`` in
  ``config.json``);
* the project's: the Hugging Face layout with our own file names, named in ``config.json``
  (``moshi_name: model.safetensors``, ``mimi_name: mimi.safetensors``,
  ``tokenizer_name: tokenizer.model``), so moshi's ``CheckpointInfo`` reads it too; older
  project checkpoints with nested ``lm_kwargs`` still load.

(:mod:`ttt.moshi.checkpoints` turns a ``model:`` value into such a directory.) Every problem is a
one-line ``CheckpointError`` naming the file or key.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from moshi.models import loaders

from ttt.base.files import read_json, read_yaml

# Keys of a moshi config.json that are not LM kwargs (popped by CheckpointInfo.from_hf_repo), the
# LoRA keys popped by get_moshi_lm, and the seeds'/ours.
MOSHI_FILE_KEYS = ("moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name", "lora_name",
                   "model_type", "lm_gen_config", "tts_config", "stt_config", "model_id")
LORA_KEYS = ("lora", "lora_rank", "lora_scaling")
OUR_KEYS = ("ttt_config", "yarn_config", "lm_kwargs", "codec")
# Our own file names (the project's layout); moshi's are loaders.MOSHI_NAME / MIMI_NAME /
# TEXT_TOKENIZER_NAME.
OUR_NAMES = {"moshi_name": "model.safetensors", "mimi_name": "mimi.safetensors",
             "tokenizer_name": "tokenizer.model"}
UNTRAINED = "untrained"  # model_id.codec of a checkpoint whose Mimi is random (its audio is noise)


class CheckpointError(ValueError):
    """A model that cannot be used, with the file or key at fault in the message."""


@dataclass(frozen=True)
class Sources:
    """Where every part of a model comes from. ``files`` lists them (model identity hashes these)."""

    layout: str
    directory: Path                 # the folder the checkpoint's own files were found in
    lm_weights: Path                # full LM weights (the base's when ``lora`` holds adapters)
    mimi: Path
    tokenizer: Path
    lm_kwargs: dict
    config: Path | None = None      # the checkpoint's config.json (None: moshi's 7B defaults)
    lora: Path | None = None        # moshi-finetune / moshi LoRA adapters, merged at load
    lora_scaling: float = 2.0
    mimi_config: Path | None = None
    ttt: dict | None = None         # the checkpoint's own TTT / YaRN settings (seeds' keys)
    yarn: dict | None = None
    base: "Sources | None" = None   # the base model the missing parts came from
    lm_gen_config: dict = field(default_factory=dict)

    @property
    def files(self) -> dict[str, Path]:
        """Every file the model is built from, by role (absent roles left out)."""
        roles = {"config": self.config, "lm_weights": self.lm_weights, "lora": self.lora,
                 "mimi": self.mimi, "mimi_config": self.mimi_config, "tokenizer": self.tokenizer,
                 "base_config": self.base.config if self.base else None}
        return {role: path for role, path in roles.items() if path is not None}

    @property
    def num_codebooks(self) -> int:
        """Mimi codebooks the LM reads (moshi's ``CheckpointInfo.get_mimi`` rule)."""
        kw = self.lm_kwargs
        return max(kw.get("dep_q", 8), kw.get("n_q", 16) - kw.get("dep_q", 8))


def hf_cached_snapshot(repo_id: str) -> Path:
    """The local snapshot of a Hugging Face repo (refs/main), never a download."""
    from huggingface_hub import constants, snapshot_download
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError, HFValidationError, OSError
        raise CheckpointError(
            f"{repo_id}: no such directory, and not in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}; {type(exc).__name__}); download it first with "
            f"`huggingface-cli download {repo_id}` (or set HF_HUB_CACHE / HF_HOME)") from None


def checkpoint_root(directory: Path) -> Path:
    """The folder holding the weights: a moshi-finetune run dir's latest complete checkpoint
    (``checkpoint_NNNNNN/consolidated``; a checkpoint still being written is ``tmp.consolidated``
    and is skipped), or a ``consolidated/`` sub-folder (moshi-finetune, seeds)."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    if (directory / "checkpoints").is_dir():
        steps = sorted((int(p.name.split("_")[1]), p) for p in (directory / "checkpoints").iterdir()
                       if re.fullmatch(r"checkpoint_\d+", p.name) and (p / "consolidated").is_dir())
        if not steps:
            raise CheckpointError(f"{directory / 'checkpoints'}: no checkpoint_NNNNNN/consolidated "
                                  "folder (moshi-finetune run without a finished checkpoint?)")
        directory = steps[-1][1]
    if (directory / "consolidated").is_dir():
        directory = directory / "consolidated"
    return directory


def split_config(raw: dict | None, path: Path) -> tuple[dict, dict | None, dict | None]:
    """LM kwargs, TTT and YaRN settings of a config.json (None: moshi's 7B defaults)."""
    if raw is None:
        return dict(loaders._lm_kwargs), None, None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    if isinstance(raw.get("lm_kwargs"), dict):  # older project layout: nested, context on top
        lm_kwargs = dict(raw["lm_kwargs"])
        if raw.get("context") is not None:
            lm_kwargs["context"] = raw["context"]
    else:
        skip = set(MOSHI_FILE_KEYS) | set(LORA_KEYS) | set(OUR_KEYS)
        lm_kwargs = {k: v for k, v in raw.items() if k not in skip}
    return lm_kwargs, raw.get("ttt_config"), raw.get("yarn_config")


def project_config(lm_kwargs: dict, codec: str | None = None) -> dict:
    """The project's config.json: moshi's own flat layout (LM kwargs + the file names), so
    ``loaders.CheckpointInfo`` reads our checkpoints as they are; our own marks go under
    ``model_id``, the one free-form key moshi sets aside (any other key would reach LMModel)."""
    return {**lm_kwargs, **OUR_NAMES, **({"model_id": {"codec": codec}} if codec else {})}


def codec_untrained(spec: str, directory: str | os.PathLike) -> bool:
    """Whether the checkpoint's Mimi is the random one the embedded default builds: its audio is
    noise, so nothing heard in it can be judged (the ASR verdict says n/a). ``tiny`` specs are
    always random (also checkpoints cached before the marker existed)."""
    if spec in ("tiny", "tiny-random") or spec.startswith(("tiny:", "tiny-random:")):
        return True
    try:
        cfg = read_json(Path(directory) / "config.json", "config.json")
    except ValueError:
        return False
    marks = cfg.get("model_id") if isinstance(cfg.get("model_id"), dict) else {}
    return UNTRAINED in (cfg.get("codec"), marks.get("codec"))  # top level: older checkpoints


def read_directory(directory: str | os.PathLike, base: Sources | None = None) -> Sources:
    """Every file of the checkpoint in ``directory`` (one of the layouts above), checked to exist,
    its missing parts taken from ``base``; no weights are read."""
    return _resolve_directory(Path(directory), base)


def _resolve_directory(directory: Path, base: Sources | None) -> Sources:
    root = checkpoint_root(directory)
    config = root / "config.json"
    raw = read_json(config, "config.json", CheckpointError) if config.is_file() else None
    lm_kwargs, ttt, yarn = split_config(raw, config)
    raw = raw or {}
    finetune = _finetune_base(root) if base is None else None
    base = base or finetune

    def named(key: str, *defaults: str) -> Path | None:
        names = [raw[key]] if isinstance(raw.get(key), str) else []
        return next((root / n for n in [*names, *defaults] if (root / n).is_file()), None)

    lora = named("lora_name", "lora.safetensors")
    if isinstance(raw.get("lora_name"), str) and lora is None:
        raise CheckpointError(f"{root / raw['lora_name']}: missing (named by {config} lora_name)")
    weights = named("moshi_name", "consolidated.safetensors", OUR_NAMES["moshi_name"])
    if (root / "consolidated.safetensors").is_file():  # moshi-finetune's name wins over the base's
        weights = root / "consolidated.safetensors"
    mimi = named("mimi_name", OUR_NAMES["mimi_name"], loaders.MIMI_NAME)
    tokenizer = named("tokenizer_name", OUR_NAMES["tokenizer_name"], loaders.TEXT_TOKENIZER_NAME)
    needs = [what for what, have in (("LM weights", weights), ("Mimi weights", mimi),
                                     ("text tokenizer", tokenizer)) if have is None]
    if needs and base is None:
        if lora is not None:
            why = "LoRA adapters need the base model's weights"
        else:
            why = f"no {needs[0]} ({_expected(needs[0], raw)})"
        raise CheckpointError(f"{root}: {why}" + ("; name the base model with `base:` (a directory "
                              "or a Hugging Face repo id)" if weights or lora else ""))
    mimi_config = named("mimi_config_name")
    if isinstance(raw.get("mimi_config_name"), str) and mimi_config is None:
        raise CheckpointError(f"{root / raw['mimi_config_name']}: missing (named by {config})")
    layout = ("moshi-finetune LoRA adapters" if lora is not None and weights is None else
              "moshi-finetune" if "lora" in raw or finetune is not None else
              "seeds" if ttt is not None or yarn is not None else
              "project" if raw.get("moshi_name") == OUR_NAMES["moshi_name"] or "lm_kwargs" in raw
              else "huggingface")
    # A merged moshi-finetune checkpoint keeps lora: true in its config; its weights are complete.
    scaling = raw.get("lora_scaling", 2.0)
    if lora is not None and not (isinstance(scaling, (int, float)) and scaling > 0):
        raise CheckpointError(f"{config}: lora_scaling must be a number > 0, got {scaling!r}")
    return Sources(
        layout=layout, directory=root,
        lm_weights=weights or base.lm_weights, mimi=mimi or base.mimi,
        tokenizer=tokenizer or base.tokenizer, lm_kwargs=lm_kwargs,
        config=config if config.is_file() else None, lora=lora, lora_scaling=float(scaling),
        mimi_config=mimi_config or (base.mimi_config if base and mimi is None else None),
        ttt=ttt, yarn=yarn, base=base if needs else None,
        lm_gen_config=raw.get("lm_gen_config") or {})


def _expected(what: str, raw: dict) -> str:
    names = {"LM weights": ("moshi_name", "consolidated.safetensors", "model.safetensors"),
             "Mimi weights": ("mimi_name", OUR_NAMES["mimi_name"], loaders.MIMI_NAME),
             "text tokenizer": ("tokenizer_name", OUR_NAMES["tokenizer_name"],
                                loaders.TEXT_TOKENIZER_NAME)}[what]
    key, *defaults = names
    return " or ".join(([raw[key]] if isinstance(raw.get(key), str) else []) + defaults)


def _finetune_base(root: Path) -> Sources | None:
    """The base model a moshi-finetune run trained from: its ``args.yaml`` (TrainArgs, beside
    ``checkpoints/``) names it in ``moshi_paths`` (``hf_repo_id`` plus optional file paths)."""
    if root.name != "consolidated" or root.parent.parent.name != "checkpoints":
        return None
    args_path = root.parent.parent.parent / "args.yaml"
    if not args_path.is_file():
        return None
    args = read_yaml(args_path, "moshi-finetune args.yaml", CheckpointError)
    paths = (args or {}).get("moshi_paths") if isinstance(args, dict) else None
    if not isinstance(paths, dict):
        return None
    files = {key: Path(paths[key]) for key in ("moshi_path", "mimi_path", "tokenizer_path")
             if isinstance(paths.get(key), str)}
    for key, path in files.items():
        if not path.is_file():
            raise CheckpointError(f"{args_path}: moshi_paths.{key} {path}: no such file")
    repo = paths.get("hf_repo_id")
    if isinstance(repo, str) and len(files) < 3:
        try:
            hub = _resolve_directory(hf_cached_snapshot(repo), None)
        except CheckpointError as exc:
            raise CheckpointError(f"{args_path}: moshi_paths.hf_repo_id: {exc}") from None
    elif len(files) == 3:
        hub = None
    else:
        return None
    pick = lambda key, attr: files.get(key) or getattr(hub, attr)  # noqa: E731
    return Sources(layout="moshi-finetune base", directory=args_path.parent,
                   lm_weights=pick("moshi_path", "lm_weights"), mimi=pick("mimi_path", "mimi"),
                   tokenizer=pick("tokenizer_path", "tokenizer"),
                   lm_kwargs=hub.lm_kwargs if hub else dict(loaders._lm_kwargs),
                   config=hub.config if hub else None,
                   mimi_config=hub.mimi_config if hub else None)


__all__ = ["CheckpointError", "Sources", "checkpoint_root", "hf_cached_snapshot", "read_directory",
           "split_config"]
