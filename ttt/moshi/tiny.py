"""The embedded default, built here with no downloads: a tiny moshi with moshi's stream layout
(:func:`tiny_lm`, in memory, for tests), the ``tiny-random`` checkpoint (random LM, random Mimi
drawn with numpy, a tokenizer trained on the demo vocabulary) and the shipped trained ``tiny``
materialised as a checkpoint directory. :mod:`ttt.moshi.checkpoints` resolves ``tiny`` /
``tiny-random`` to these; loading any checkpoint is :mod:`ttt.moshi.model`.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import sentencepiece
import torch
from moshi.models import loaders
from safetensors.torch import save_file

from ttt.base.outdir import build_lock, remove_dead_temporaries
from ttt.moshi.layouts import UNTRAINED, project_config, read_directory

# The 7B layout (text + 8 Moshi + 8 user codebooks, moshi's delays, silu gating, interleaved rope,
# rms_norm_f32, depformer with weights per step) at toy sizes.
TINY_LM_KWARGS = dict(loaders._lm_kwargs)
TINY_LM_KWARGS.update(dim=32, num_heads=4, num_layers=4, context=256, card=24, text_card=40,
                      depformer_dim=16, depformer_dim_feedforward=32, depformer_num_heads=2,
                      depformer_num_layers=2)


def tiny_lm(seed: int = 0, dtype=torch.float32, device="cpu", **overrides):
    """Deterministic from ``seed``; built in well under a second on CPU."""
    torch.manual_seed(seed)
    return loaders.get_moshi_lm(None, lm_kwargs={**TINY_LM_KWARGS, **overrides},
                                device=device, dtype=dtype).eval()


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
        read_directory(target)  # complete, or an error naming what is missing
        return target
    with _building(target) as tmp:  # None: another process built it while we waited
        if tmp is not None:
            torch.manual_seed(seed)
            lm = loaders.get_moshi_lm(None, lm_kwargs=DEFAULT_LM_KWARGS, device="cpu",
                                      dtype=torch.float32)
            mimi = loaders.get_mimi(None, device="cpu", num_codebooks=lm.dep_q)
            randomize_mimi(mimi, seed)
            save_file({k: v.contiguous() for k, v in lm.state_dict().items()},
                      str(tmp / "model.safetensors"))
            save_file({k: v.contiguous() for k, v in mimi.state_dict().items()},
                      str(tmp / "mimi.safetensors"))
            (tmp / "tokenizer.model").write_bytes(train_demo_tokenizer())
            (tmp / "config.json").write_text(
                json.dumps(project_config(DEFAULT_LM_KWARGS, UNTRAINED), indent=1))
    read_directory(target)
    return target


@contextmanager
def _building(target: Path):
    """A temporary folder to build ``target`` in, renamed into place when the block ends; None
    when ``target`` exists by the time the build lock is ours (cells starting together build
    once). The lock holder removes the temporaries of killed builds first (199 MB each for
    tiny-random), and its own on any failure."""
    with build_lock(target):
        if target.is_dir():
            yield None
            return
        remove_dead_temporaries(target)
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        tmp.mkdir()
        try:
            yield tmp
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def randomize_mimi(mimi, seed: int) -> None:
    """Random Mimi weights drawn with numpy, so every torch version and machine builds the same
    codec (torch's own init differs between versions, and the trained default's inputs are this
    codec's codes): conv/linear weights and their biases U(±1/√fan_in) as torch's default init,
    codebooks N(0, 0.01²) (a fresh Mimi's codebooks are zero: every code would be 0)."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        state = mimi.state_dict(keep_vars=True)
        for name, tensor in state.items():
            if name.endswith(".embedding_sum"):
                tensor.copy_(torch.from_numpy(0.01 * rng.standard_normal(tuple(tensor.shape))))
                continue
            weight = state.get(name[:-len("bias")] + "weight") if name.endswith(".bias") else tensor
            if not name.endswith((".weight", ".bias")) or weight is None or weight.dim() < 2:
                continue
            bound = 1.0 / math.sqrt(weight.shape[1] * math.prod(weight.shape[2:]))
            tensor.copy_(torch.from_numpy(rng.uniform(-bound, bound, tuple(tensor.shape))))
        for module in mimi.modules():
            if hasattr(module, "embedding_sum"):
                module._embedding = None


# The embedded default: the positive control trained by ``ttt train`` (docs/controls.md,
# the embedded default). The package ships its LM weights, config and tokenizer; its Mimi is tiny-random's
# (seed 0, regenerated deterministically by :func:`randomize_mimi`: 385 MB is too large to ship).
TINY_TRAINED = Path(__file__).parent.parent / "assets" / "tiny-control"


def materialize_trained(cache_root: str | os.PathLike) -> Path:
    """The shipped trained default as a complete checkpoint directory under ``cache_root`` (Mimi
    linked from the cached tiny-random seed-0 checkpoint, built on first use), written
    atomically; named by the shipped weights' digest, so a retrained default is rebuilt."""
    digest = hashlib.sha256((TINY_TRAINED / "model.safetensors").read_bytes()).hexdigest()[:12]
    target = Path(cache_root) / f"tiny-control-{digest}"
    if target.is_dir():
        read_directory(target)
        return target
    random_dir = build_tiny_checkpoint(target.parent / "tiny-seed0", 0)
    with _building(target) as tmp:
        if tmp is not None:
            for name in ("config.json", "model.safetensors", "tokenizer.model"):
                shutil.copyfile(TINY_TRAINED / name, tmp / name)
            try:
                os.link(random_dir / "mimi.safetensors", tmp / "mimi.safetensors")
            except OSError:
                shutil.copyfile(random_dir / "mimi.safetensors", tmp / "mimi.safetensors")
    read_directory(target)
    return target


def train_demo_tokenizer() -> bytes:
    lines = [" ".join(DEMO_WORDS[i:] + DEMO_WORDS[:i]) for i in range(len(DEMO_WORDS))]
    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 4), model_writer=buffer, vocab_size=60,
        model_type="unigram", hard_vocab_limit=False, unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        seed_sentencepiece_size=1000, minloglevel=2, num_threads=1)  # single thread: deterministic
    return buffer.getvalue()
