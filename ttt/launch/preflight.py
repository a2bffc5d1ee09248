"""Checks the workflow runs before any job is submitted, and the model identity cells carry.

Snakemake calls :func:`check_matrix` while it builds the DAG (``snakemake -n`` included): every
cell config goes through the same validators the cell itself uses (CellConfig, TTTConfig,
YarnConfig), manifests (other than speech sets the workflow builds) and the launcher file must
exist, and the model must resolve with a parseable config and tensor headers that fit it (no
tensor is loaded). A problem is one :class:`PreflightError` line naming the config key.

:func:`model_identity` is what makes a changed model rerun its cells: the model spec, its resolved
path and a digest of its files' contents.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple


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


SPEECH_SETS_DIR = "results/data/speech"  # where the workflow's `speech` rule writes each set


def speech_set_of(manifest: str) -> str | None:
    """The speech set a manifest path names, when it is one the workflow builds
    (``results/data/speech/NAME/manifest.jsonl``), else None."""
    parts = Path(manifest).parts
    if len(parts) == 5 and "/".join(parts[:3]) == SPEECH_SETS_DIR and parts[4] == "manifest.jsonl":
        return parts[3]
    return None


def check_matrix(config: Mapping[str, Any], matrix: Mapping[str, Mapping[str, Any]],
                 checkpoint_ttt: Mapping[str, Any] | None = None,
                 num_layers: int | None = None) -> None:
    """Every cell as the cell will read it; the first problem names its config key. With the
    model's ``num_layers``, an enabled TTT must select layers of it (none would run as TTT off)."""
    from ttt.base.config import CellConfig, TTTConfig, YarnConfig

    check_config(config)
    base_ttt = dict(checkpoint_ttt or {})
    for path, cell in matrix.items():
        family = cell["family"]
        manifest = (cell.get("data") or {}).get("manifest")
        speech_set = speech_set_of(manifest) if manifest is not None else None
        if speech_set is not None:  # built by the workflow before the cells that read it
            if speech_set not in (config.get("speech") or {}):
                raise PreflightError(f"config {family}.manifest: {manifest}: no speech set "
                                     f"{speech_set!r} under speech:")
        elif manifest is not None and not Path(manifest).exists():
            raise PreflightError(f"config {family}.manifest: {manifest}: not found")
        if cell.get("ttt") is not None:
            own = (config.get(family) or {}).get("ttt")  # a family's own ttt, over the top level's
            where = f"{family}.ttt" if own is not None else "ttt"
            ttt = _as(where, lambda: TTTConfig.from_dict({**base_ttt, **cell["ttt"]}), path, own=own)
            if num_layers is not None:
                _as(where, lambda: ttt.selected_layers(num_layers), path,
                    _unused_training(base_ttt, num_layers, cell["model"]), own=own)
            _check_variant(base_ttt, cell, where)
        if cell.get("yarn") is not None:
            _as("yarn", lambda: YarnConfig.from_dict(dict(cell["yarn"])), path)
    for path, cell in matrix.items():
        try:
            CellConfig.from_dict(dict(cell))
        except (ValueError, TypeError) as exc:
            head, _, rest = str(exc).partition(": ")
            where = f"{cell['family']}.{head}" if head in (config.get(cell["family"]) or {}) else head
            raise PreflightError(f"config {where}: {rest} (cell {path})") from None


def check_workflow(config: Mapping[str, Any], matrix: Mapping[str, Mapping[str, Any]]) -> dict:
    """Everything the workflow checks before any job, and each model's identity once all check
    out: ``{(model, base): model_identity}``. A model is checked with the cells that read it (a
    family may name its own ``model``)."""
    check_config(config)
    check_launcher(config["launcher"], config["device"])
    models = f"{config['cache_dir']}/models"
    identities = {}
    for model, base in dict.fromkeys((c["model"], c["base"]) for c in matrix.values()):
        info = check_model(model, base, models, _model_key(config, matrix, model, base))
        cells = {p: c for p, c in matrix.items() if (c["model"], c["base"]) == (model, base)}
        check_matrix(config, cells, info.ttt, info.num_layers)
        identities[model, base] = model_identity(model, base, models)
    return identities


def _model_key(config: Mapping[str, Any], matrix: Mapping[str, Mapping[str, Any]], model: str,
               base: str | None) -> str:
    """The config key a model comes from: ``model``, or the first family naming it as its own."""
    if (config.get("model"), config.get("base")) == (model, base):
        return "model"
    for cell in matrix.values():
        own = config.get(cell["family"]) or {}
        if own.get("model") and (own["model"], own.get("base")) == (model, base):
            return f"{cell['family']}.model"
    return "model"


def _check_variant(checkpoint_ttt: Mapping[str, Any], cell: Mapping[str, Any], where: str) -> None:
    """A checkpoint's trained TTT layers load only into the same variant: the hybrid's tensors are
    not the In-Place layer's (the load would fail on missing keys inside the job)."""
    if not checkpoint_ttt or cell["ttt"].get("enabled") is False:
        return
    trained = checkpoint_ttt.get("variant", "inplace")
    wanted = cell["ttt"].get("variant", trained)
    if wanted != trained:
        raise PreflightError(
            f"config {where}.variant: {wanted} cannot load model {cell['model']}: its trained TTT "
            f"layers are {trained} (give {cell['family']} a model without TTT tensors, e.g. "
            f"{cell['family']}.model: tiny-random) (cell {cell['cell']})")


def check_launcher(path: str | os.PathLike, device: str = "cpu") -> None:
    """A readable launcher file; cells on CUDA through local jobs need GPUs made visible to them
    (submitit's local jobs see none unless the file asks: they would fail one by one)."""
    from ttt.launch.launcher import read_launcher
    try:
        launcher = read_launcher(path)
    except ValueError as exc:
        raise PreflightError(f"config launcher: {exc}") from None
    if (str(device).startswith("cuda") and launcher["executor"] == "local"
            and launcher["gpus_per_node"] < 1):
        raise PreflightError(f"config launcher: {path}: device {device} with the local executor "
                             "needs gpus_per_node >= 1 (its jobs see no GPU otherwise)")


def _unused_training(checkpoint_ttt: Mapping[str, Any], num_layers: int, model: str) -> str:
    """What a TTT selecting no layer would throw away: the checkpoint's trained TTT layers."""
    from ttt.base.config import TTTConfig
    if not checkpoint_ttt:
        return ""
    trained = TTTConfig.from_dict(dict(checkpoint_ttt)).layer_indices(num_layers)
    return f"; model {model}'s trained TTT layers {trained} would go unused" if trained else ""


def _as(where: str, build, cell: str, note: str = "", own: Mapping | None = None):
    """``build()``, its ValueError as one line naming the key; with a family's ``own`` ttt, a key
    it does not set is named in the top-level ``ttt`` it came from."""
    try:
        return build()
    except (ValueError, TypeError) as exc:
        head, _, rest = str(exc).partition(": ")
        section = where if own is None or head in own else "ttt"
        key = where if head in ("ttt", "yarn") else f"{section}.{head}"  # unknown keys: whole section
        raise PreflightError(f"config {key}: {rest}{note} (cell {cell})") from None


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.replace("[", ".").replace("]", "").split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


# ---- the model ---------------------------------------------------------------------------------

def is_embedded(spec: str) -> bool:
    return spec in ("tiny", "tiny-random") or spec.startswith(("tiny:", "tiny-random:"))


class ModelInfo(NamedTuple):
    """What the cells' configs are checked against: the checkpoint's own ``ttt_config`` as
    TTTConfig keys (what cells' ``ttt`` overrides; None without one) and its layer count."""

    ttt: dict | None
    num_layers: int


def check_model(spec: str, base: str | None, cache_root: str | os.PathLike,
                key: str = "model") -> ModelInfo:
    """The model resolves (any layout ttt/moshi/checkpoints.py reads), its config parses and every
    tensor header (LM, LoRA, Mimi) and the tokenizer check out, no weights read
    (``model.inspect_checkpoint``). ``key`` is the config key naming the model (``model``, or a
    family's own ``FAMILY.model``); its base is the ``base`` beside it."""
    from ttt.base.config import TTTConfig
    if spec == "tiny":  # the shipped trained default: its TTT settings, nothing built yet
        import json
        from ttt.moshi.tiny import TINY_TRAINED
        raw = json.loads((TINY_TRAINED / "config.json").read_text())
        return ModelInfo(TTTConfig.from_seeds(raw["ttt_config"]).to_dict(), raw["num_layers"])
    if is_embedded(spec):
        from ttt.moshi.tiny import DEFAULT_LM_KWARGS
        return ModelInfo(None, DEFAULT_LM_KWARGS["num_layers"])
    from ttt.moshi.checkpoints import resolve_checkpoint
    from ttt.moshi.model import inspect_checkpoint
    base_key = key[:-len("model")] + "base"
    if base:
        try:
            resolve_checkpoint(base, None, cache_root)
        except ValueError as exc:
            raise PreflightError(f"config {base_key}: {exc}") from None
    try:
        sources = inspect_checkpoint(spec, base, cache_root=cache_root)
    except ValueError as exc:
        # a checkpoint that needs a base model and has none: the missing key is `base`
        missing_base = base is None and "`base:`" in str(exc)
        raise PreflightError(f"config {base_key if missing_base else key}: {exc}") from None
    num_layers = sources.lm_kwargs.get("num_layers")
    if not sources.ttt:
        return ModelInfo(None, num_layers)
    try:
        return ModelInfo(TTTConfig.from_seeds(sources.ttt).to_dict(), num_layers)
    except ValueError as exc:
        raise PreflightError(f"config {key}: {sources.config}: ttt_config.{exc}") from None


def model_identity(spec: str, base: str | None, cache_root: str | os.PathLike) -> dict:
    """``{model, model_path, model_digest}``: what a cell's results are computed from. The digest
    covers every file the model is built from (LoRA base included); each file's sha256 is
    remembered by (size, mtime, inode), so a 15 GB checkpoint is hashed once, not at every DAG
    build (ttt/base/identity.py). The embedded default is identified by its spec: it is rebuilt
    deterministically from it."""
    from ttt.base.identity import files_digest, value_digest

    if spec == "tiny":  # the shipped weights identify it (a retrained default is another model);
        # hashed here, not through identity's sidecars: the package folder may be read-only
        import hashlib
        from ttt.moshi.tiny import TINY_TRAINED
        digests = {n: hashlib.sha256((TINY_TRAINED / n).read_bytes()).hexdigest()
                   for n in ("config.json", "model.safetensors", "tokenizer.model")}
        return {"model": spec, "model_path": "tiny", "model_digest": value_digest(digests)[:16]}
    if is_embedded(spec):
        seed = spec.split(":", 1)[1] if ":" in spec else "0"
        return {"model": spec, "model_path": f"tiny-random:{seed}",
                "model_digest": value_digest(f"tiny-random:{seed}")[:16]}
    from ttt.moshi.checkpoints import resolve_checkpoint
    sources = resolve_checkpoint(spec, base, cache_root)
    return {"model": spec, "model_path": str(Path(sources.directory).resolve()),
            "model_digest": files_digest(sources.files)[:16]}
