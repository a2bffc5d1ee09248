"""Checkpoints as users have them (issue 15): each layout written as its project writes it, at
tiny size, loads with no file copied by hand and gives the logits of the model it came from.

Where each layout's names and keys come from (read 2026-11-25):
- moshi 0.2.13 ``moshi/models/loaders.py``: ``CheckpointInfo.from_hf_repo`` (``MOSHI_NAME``,
  ``MIMI_NAME``, ``TEXT_TOKENIZER_NAME``; config.json keys ``moshi_name``, ``mimi_name``,
  ``tokenizer_name``, ``lm_gen_config``, ``model_id``... popped, the rest LM kwargs; no
  config.json → ``_lm_kwargs``), ``get_moshi_lm`` (``lora``, ``lora_rank``, ``lora_scaling``,
  ``lora_weights``); ``moshi/modules/lora.py`` (``LoRALinear``: ``frozen_W``, ``lora_A``,
  ``lora_B``, output ``W x + scaling · B A x``).
- kyutai-labs/moshi-finetune ``finetune/checkpointing.py`` (``Checkpointer``:
  ``run_dir/checkpoints/checkpoint_{step:06d}/consolidated/{consolidated,lora}.safetensors`` +
  ``config.json``, written as ``tmp.consolidated`` then renamed; ``retrieve_save_states``:
  adapters = the state of every module whose parameters all train, merged = ``merge_weight``
  state-dict hook and no key with "lora"/"frozen"), ``train.py`` (config.json = the base's config
  + ``lora``, ``lora_rank``, ``lora_scaling``; ``args.yaml`` in the run dir),
  ``finetune/args.py`` (``moshi_paths``: ``hf_repo_id``, ``moshi_path``, ``mimi_path``,
  ``tokenizer_path``, ``config_path``), ``finetune/wrapped_model.py`` (trainable: "lora" in name).
- huggingface_hub 0.36 ``file_download.py`` / ``_snapshot_download.py``: the cache layout
  ``models--{org}--{name}/{blobs, snapshots/<commit>/<file> → blob, refs/main}``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import yaml
from moshi.models import loaders
from moshi.modules.lora import LoRALinear, replace_all_linear_with_lora
from safetensors.torch import load_file, save_file

from ttt.moshi.layouts import CheckpointError
from ttt.moshi.checkpoints import resolve_checkpoint
from ttt.moshi.model import inspect_checkpoint, load_checkpoint, resolve_model
from ttt.moshi.tiny import DEFAULT_LM_KWARGS

KW = DEFAULT_LM_KWARGS
REPO = "kyutai/moshiko-pytorch-bf16"


@pytest.fixture(scope="module")
def tiny(cache) -> Path:
    """The project's tiny checkpoint (LM, Mimi, tokenizer): the source of every stand-in."""
    return resolve_model("tiny-random", cache / "models")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty local Hugging Face cache, offline, as huggingface_hub reads it."""
    root = tmp_path / "hf"
    root.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return root


def put_in_hub(root: Path, repo_id: str, files: dict[str, Path | bytes]) -> Path:
    """A snapshot as huggingface_hub writes it: blobs, snapshot links to them, refs/main."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = f"{abs(hash(repo_id)):040x}"[:40]
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for n, (name, content) in enumerate(files.items()):
        blob = repo / "blobs" / f"{n:064x}"
        if isinstance(content, Path):
            blob.symlink_to(content.resolve())
        else:
            blob.write_bytes(content)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def hf_moshiko(root: Path, tiny: Path) -> Path:
    """kyutai/moshiko-pytorch-bf16 as published: no config.json."""
    return put_in_hub(root, REPO, {loaders.MOSHI_NAME: tiny / "model.safetensors",
                                   loaders.MIMI_NAME: tiny / "mimi.safetensors",
                                   loaders.TEXT_TOKENIZER_NAME: tiny / "tokenizer.model"})


def codes(seed: int = 0, steps: int = 10) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = torch.randint(0, KW["card"], (1, 17, steps), generator=g)
    out[:, 0] = torch.randint(0, KW["text_card"], (1, steps), generator=g)
    return out


def logits(lm, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = lm(codes(seed))
    return out.text_logits.nan_to_num(), out.logits.nan_to_num()


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(logits(a), logits(b)))


def close(a, b, tol: float = 1e-5) -> float:
    err = max(((x - y).abs().max() / y.abs().max()).item() for x, y in zip(logits(a), logits(b)))
    assert err < tol, err
    return err


# ---- Hugging Face / moshi CheckpointInfo ----------------------------------------------------

def test_hf_snapshot_without_config_uses_moshi_defaults(tiny, hub, monkeypatch):
    hf_moshiko(hub, tiny)
    assert resolve_checkpoint(REPO).lm_kwargs == loaders._lm_kwargs  # the real 7B defaults
    # A tiny stand-in for the 7B defaults: moshi and we must both take them from loaders.
    monkeypatch.setattr(loaders, "_lm_kwargs", dict(KW))
    ours = load_checkpoint(REPO)
    assert ours.sources.layout == "huggingface" and ours.sources.config is None
    assert ours.files["mimi"].name == loaders.MIMI_NAME
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "contains no config.json. Assuming this is a Moshi 7B"
        info = loaders.CheckpointInfo.from_hf_repo(REPO)
    assert same(ours.lm, info.get_moshi(device="cpu", dtype=torch.float32))
    assert ours.mimi.num_codebooks == info.get_mimi().num_codebooks == 8


def test_hf_snapshot_with_moshi_config(tiny, hub):
    config = {**KW, "moshi_name": "lm.safetensors", "mimi_name": "codec.safetensors",
              "tokenizer_name": "spm.model", "model_type": "moshi",
              "lm_gen_config": {"temp": 0.6, "temp_text": 0.5, "top_k": 250},
              "model_id": {"sig": "0123abcd", "epoch": 3}}
    snapshot = put_in_hub(hub, "someone/moshi-variant", {
        "config.json": json.dumps(config).encode(), "lm.safetensors": tiny / "model.safetensors",
        "codec.safetensors": tiny / "mimi.safetensors", "spm.model": tiny / "tokenizer.model"})
    info = loaders.CheckpointInfo.from_hf_repo("someone/moshi-variant")
    theirs = info.get_moshi(device="cpu", dtype=torch.float32)
    for spec in ("someone/moshi-variant", snapshot):
        ours = load_checkpoint(spec)
        assert ours.files["lm_weights"].name == "lm.safetensors"
        assert ours.sources.lm_gen_config == config["lm_gen_config"]
        assert same(ours.lm, theirs)


def test_project_layout_is_read_by_moshi_checkpoint_info(tiny, hub, tmp_path):
    """Our checkpoints carry moshi's own config.json (flat LM kwargs + file names)."""
    put_in_hub(hub, "ttt/tiny", {p.name: p for p in tiny.iterdir() if not p.name.startswith(".")})
    info = loaders.CheckpointInfo.from_hf_repo("ttt/tiny")
    ours = load_checkpoint(tiny)
    assert ours.sources.layout == "project" and info.lm_config == KW
    assert same(ours.lm, info.get_moshi(device="cpu", dtype=torch.float32))
    # The older project layout (nested lm_kwargs, context on top) still loads.
    old = tmp_path / "old"
    old.mkdir()
    for name in ("model.safetensors", "mimi.safetensors", "tokenizer.model"):
        (old / name).symlink_to(tiny / name)
    (old / "config.json").write_text(json.dumps({"lm_kwargs": KW, "context": 100}))
    assert resolve_checkpoint(old).lm_kwargs == {**KW, "context": 100}
    assert same(load_checkpoint(old).lm, ours.lm)


def test_missing_hf_cache_is_one_line_naming_the_download(hub, tmp_path, capsys):
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint(REPO)
    message = str(err.value)
    assert "\n" not in message and f"huggingface-cli download {REPO}" in message
    assert message.startswith(REPO)
    # Through the CLI: exit 2, one line on stderr.
    from ttt.cli.main import main
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"cell": "c", "model": REPO, "cache_dir": str(tmp_path / "cache"),
                                   "data": {"demo": {"durations": [1.0], "seed": 0}}}))
    assert main(["run-cell", "--config", str(cfg), "--out", str(tmp_path / "out")]) == 2
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error")]
    assert len(lines) == 1 and "huggingface-cli download" in lines[0]


# ---- moshi-finetune ----------------------------------------------------------------------------

def write_run(run: Path, step: int, files: dict[str, dict], config: dict, hf_repo_id=REPO) -> Path:
    """A moshi-finetune run dir: args.yaml (TrainArgs.save) + one finished checkpoint."""
    run.mkdir(parents=True, exist_ok=True)
    if hf_repo_id is not None:
        (run / "args.yaml").write_text(yaml.safe_dump({
            "run_dir": str(run), "full_finetuning": not config["lora"], "param_dtype": "float32",
            "lora": {"enable": config["lora"], "rank": config["lora_rank"],
                     "scaling": config["lora_scaling"], "ft_embed": False},
            "moshi_paths": {"hf_repo_id": hf_repo_id, "mimi_path": None, "moshi_path": None,
                            "tokenizer_path": None, "config_path": None}}))
    dst = run / "checkpoints" / f"checkpoint_{step:06d}" / "consolidated"
    dst.mkdir(parents=True)
    for name, state in files.items():
        save_file(state, str(dst / name))
    (dst / "config.json").write_text(json.dumps(config, indent=4))
    return dst


def test_moshi_finetune_full_run_dir_takes_latest_checkpoint_and_base_codec(tiny, hub, tmp_path,
                                                                            monkeypatch):
    hf_moshiko(hub, tiny)
    monkeypatch.setattr(loaders, "_lm_kwargs", dict(KW))  # the base has no config.json
    base = load_file(tiny / "model.safetensors")
    g = torch.Generator().manual_seed(5)
    tuned = {k: (v + 0.01 * torch.randn(v.shape, generator=g)).to(torch.bfloat16)  # param_dtype
             for k, v in base.items()}
    config = {**loaders._lm_kwargs, "lora": False, "lora_rank": 64, "lora_scaling": 2.0}
    run = tmp_path / "run"
    write_run(run, 100, {"consolidated.safetensors": base}, config)
    latest = write_run(run, 200, {"consolidated.safetensors": tuned}, config)
    (run / "checkpoints" / "checkpoint_000300" / "tmp.consolidated").mkdir(parents=True)  # writing
    ours = load_checkpoint(run)
    assert ours.sources.directory == latest and ours.sources.layout == "moshi-finetune"
    assert ours.files["mimi"].name == loaders.MIMI_NAME  # from the base, in the HF cache
    theirs = loaders.get_moshi_lm(str(latest / "consolidated.safetensors"), lm_kwargs=config,
                                  device="cpu", dtype=torch.float32)
    assert same(ours.lm, theirs)
    assert not same(ours.lm, load_checkpoint(tiny).lm)


def lora_model(tiny: Path, rank: int, scaling: float):
    """A LoRA fine-tune the moshi-finetune way: moshi's LoRALinear on every Linear, only "lora"
    parameters train (here: given random values, as training would)."""
    lm = loaders.get_moshi_lm(str(tiny / "model.safetensors"), lm_kwargs=KW, device="cpu",
                              dtype=torch.float32)
    replace_all_linear_with_lora(lm, rank, scaling, device="cpu")
    g = torch.Generator().manual_seed(7)
    for name, p in lm.named_parameters():
        p.requires_grad = "lora" in name
        if "lora" in name:
            with torch.no_grad():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return lm.eval()


def adapters_state(lm) -> dict:
    """Checkpointer.retrieve_save_states(save_only_lora=True), one process."""
    states = {}
    for key, module in lm.named_modules():
        if all(p.requires_grad for p in module.parameters()):
            states.update({f"{key}.{k}": v.clone() for k, v in module.state_dict().items()})
    return dict(sorted(states.items()))


def merged_state(lm) -> dict:
    """Checkpointer.retrieve_save_states(save_only_lora=False): merge_weight hooks, then the
    keys without "lora" / "frozen"."""
    def merge_lora(m, destination, prefix, *args):
        destination[prefix + "weight"] = m.merge_weight()
    handles = [m._register_state_dict_hook(merge_lora) for m in lm.modules()
               if isinstance(m, LoRALinear)]
    states = {k: v.clone() for k, v in lm.state_dict().items()
              if not any(x in k for x in ("lora", "frozen"))}
    for handle in handles:
        handle.remove()
    return dict(sorted(states.items()))


def test_moshi_finetune_lora_adapters_merged_and_base_plus_ba_agree(tiny, hub, tmp_path,
                                                                   monkeypatch):
    hf_moshiko(hub, tiny)
    monkeypatch.setattr(loaders, "_lm_kwargs", dict(KW))
    rank, scaling = 4, 2.0
    trained = lora_model(tiny, rank, scaling)
    config = {**KW, "lora": True, "lora_rank": rank, "lora_scaling": scaling}
    adapters = write_run(tmp_path / "lora_run", 10, {"lora.safetensors": adapters_state(trained)},
                         config)
    merged = write_run(tmp_path / "merged_run", 10,
                       {"consolidated.safetensors": merged_state(trained)}, config)
    assert any(k.endswith("lora_A.weight") for k in load_file(adapters / "lora.safetensors"))

    from_adapters = load_checkpoint(tmp_path / "lora_run")  # base from args.yaml
    from_merged = load_checkpoint(tmp_path / "merged_run")
    assert from_adapters.sources.layout == "moshi-finetune LoRA adapters"
    assert from_adapters.files["lora"] == adapters / "lora.safetensors"
    assert from_adapters.files["lm_weights"].name == loaders.MOSHI_NAME  # the base's
    # Adapters merged here = the merged checkpoint moshi-finetune writes, bitwise.
    a, m = from_adapters.lm.state_dict(), from_merged.lm.state_dict()
    assert a.keys() == m.keys() and all(torch.equal(a[k], m[k]) for k in a)
    # = base + scaling · B A, computed independently in float64.
    base = load_file(tiny / "model.safetensors")
    lora = load_file(adapters / "lora.safetensors")
    key = "transformer.layers.1.gating.linear_out"
    expect = (base[key + ".weight"].double()
              + scaling * lora[key + ".lora_B.weight"].double() @ lora[key + ".lora_A.weight"].double())
    assert (a[key + ".weight"].double() - expect).abs().max() < 1e-6
    assert (expect - base[key + ".weight"].double()).abs().max() > 1e-2  # the adapter matters
    # Logits: the trained LoRA model itself (unmerged) and moshi's own adapter loader.
    close(from_adapters.lm, trained)
    close(from_merged.lm, trained)
    theirs = loaders.get_moshi_lm(str(tiny / "model.safetensors"), lm_kwargs=config, device="cpu",
                                  dtype=torch.float32, lora_weights=adapters / "lora.safetensors")
    t, r = theirs.state_dict(), trained.state_dict()  # moshi reads the keys as we wrote them
    assert t.keys() == r.keys() and all(torch.equal(t[k], r[k]) for k in t)
    # The base named by the user instead of args.yaml; and no base at all: one line.
    (tmp_path / "lora_run" / "args.yaml").unlink()
    assert same(load_checkpoint(tmp_path / "lora_run", base=REPO).lm, from_adapters.lm)
    with pytest.raises(CheckpointError, match=r"consolidated: LoRA adapters need the base model's "
                                              r"weights; name the base model with `base:`"):
        resolve_checkpoint(tmp_path / "lora_run")


# ---- loading at the size of the weights -------------------------------------------------------

RANDOM_OPS = {"normal_", "uniform_", "randn", "rand", "randint", "random_", "bernoulli_",
              "exponential_", "normal", "randperm"}


def count_random_init(fn):
    """(result, elements drawn at random on a real device) while ``fn`` runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    drawn = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.__name__.split(".")[0] in RANDOM_OPS and isinstance(out, torch.Tensor) \
                    and not out.is_meta:
                drawn.append(out.numel())
            return out

    with Count():
        result = fn()
    return result, sum(drawn)


def old_load(tiny: Path, ttt: dict, seed: int):
    """The loader this replaces: random LM on the device, TTT, then the state dict copied in."""
    from ttt.base.config import TTTConfig
    from ttt.moshi.surgery import apply_ttt
    lm = loaders.get_moshi_lm(None, lm_kwargs=KW, device="cpu", dtype=torch.float32)
    torch.manual_seed(seed)
    apply_ttt(lm, TTTConfig.from_dict(ttt))
    lm.load_state_dict(load_file(tiny / "model.safetensors"), strict=False)
    return lm.eval()


def test_meta_load_is_bitwise_the_old_load_without_random_weights(tiny):
    ttt = {"layers": [1, 3], "chunk_size": 4, "lr": 0.1, "delta_clip_fro_norm": None}
    old, drawn_old = count_random_init(lambda: old_load(tiny, ttt, seed=3))
    new, drawn = count_random_init(lambda: load_checkpoint(tiny, ttt=ttt, seed=3))
    a, b = old.state_dict(), new.lm.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert same(old, new.lm)
    # Only TTT's own fresh parameters are drawn (W_target: its nn.Linear init, then the diagonal).
    d = KW["dim"]
    assert drawn == 2 * (d * d + d) and drawn_old > 100 * drawn
    _, drawn_off = count_random_init(lambda: load_checkpoint(tiny))
    assert drawn_off == 0


def test_cpu_weights_are_not_views_of_the_file(tiny, tmp_path):
    """safetensors hands out views of the memory-mapped file on CPU: rewriting the checkpoint
    after loading must not change the loaded model."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny, ckpt)
    lm = load_checkpoint(ckpt).lm
    before = logits(lm)
    state = load_file(ckpt / "model.safetensors")
    save_file({k: torch.zeros_like(v) for k, v in state.items()}, str(ckpt / "model.safetensors"))
    assert all(torch.equal(x, y) for x, y in zip(before, logits(lm)))


def test_inspect_checks_headers_with_one_line_errors(tiny, tmp_path):
    sources = inspect_checkpoint(tiny)
    assert set(sources.files) == {"config", "lm_weights", "mimi", "tokenizer"}
    bad = tmp_path / "bad"
    shutil.copytree(tiny, bad)
    state = load_file(bad / "model.safetensors")
    state["text_emb.weight"] = state["text_emb.weight"][:-1].clone()
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model.safetensors: text_emb.weight has shape"):
        inspect_checkpoint(bad)
    save_file({"x": torch.zeros(1)}, str(bad / "lora.safetensors"))
    (bad / "model.safetensors").unlink()
    shutil.copy(tiny / "model.safetensors", bad / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"lora.safetensors: x is neither a LoRA adapter"):
        inspect_checkpoint(bad)
    (bad / "lora.safetensors").unlink()
    shutil.copy(tiny / "model.safetensors", bad / "mimi.safetensors")
    with pytest.raises(CheckpointError, match=r"mimi.safetensors: not Mimi weights"):
        inspect_checkpoint(bad)
    # Mimi is loaded on first use: a tensor of the wrong shape is refused at load, by its header
    mimi = load_file(tiny / "mimi.safetensors")
    key = next(k for k, v in mimi.items() if v.dim() == 2)
    mimi[key] = mimi[key][:-1].clone()
    save_file(mimi, str(bad / "mimi.safetensors"))
    for check in (inspect_checkpoint, load_checkpoint):
        with pytest.raises(CheckpointError, match=rf"mimi.safetensors: {re.escape(key)} has shape"):
            check(bad)


def test_tables_report_the_run_peak_not_the_load():
    """metrics.json keeps both peaks; the tables' peak_mem_bytes is the run's (older cells, with
    one ``peak_bytes``, still read)."""
    from ttt.base.result import Memory
    both = Memory(load_peak_bytes=15_780_514_304, run_peak_bytes=17_471_474_176)
    assert both.run_peak == 17_471_474_176  # tests/test_result.py: the same through cells.csv
    assert Memory(peak_bytes=7).run_peak == 7
