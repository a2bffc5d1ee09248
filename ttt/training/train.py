"""The outer loop: train a Moshi-architecture LM with TTT layers in the loop (teacher forcing).

``lm(codes)`` runs the parallel (dual) form of In-Place TTT, which is differentiable and
chunk-causal, so the loss is what the model scores at test time: text and audio cross-entropy on
moshi's own masks. Two modes: ``scratch`` (every weight, from a fresh random model) and
``ttt_only`` (only the TTT parameters, on top of a checkpoint's frozen weights).

Output directory: ``checkpoint/`` in the project's layout (``run-cell`` loads it) plus
``train_state.pt`` inside it (optimizer, step, RNG states, config), replaced together and
atomically; ``train_log.csv`` (one row per logged step). A rerun with the same ``--out`` resumes
from the last checkpoint and refuses a different config.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from ttt.base.files import read_yaml, write_csv, write_text
from ttt.base.identity import file_digest
from ttt.base.outdir import lock_output
from ttt.base.config import SEED_RANGE, TTTConfig
from ttt.base.validate import check, is_int, is_number, strict_kwargs
from ttt.data.codes import TrainBase, load_codes
from ttt.data.conversations import read_manifest
from ttt.data.recurrence import add_repeats, check_spec
from ttt.training.batches import Prefetched, mixed_batch, sample_batch
from ttt.training.held_out import eval_items, evaluate_loss, selection_loss
from ttt.training.probe import InnerProbe
from ttt.training.state import (STATE_FILE, check_state, find_resume, rng_state, set_rng_state,
                                sync_twin, write_checkpoint)
from ttt.training.word_rows import UNITS, build_lexicon, fresh_batch
from ttt.moshi.gating import TTTGating
from ttt.moshi.model import load_checkpoint, resolve_model
from ttt.moshi.surgery import apply_ttt, ttt_layers

MODES = ("scratch", "ttt_only")
SELECT = ("last", "best_eval_loss")
RESUMABLE_CHANGES = {"steps", "time_limit_s"}


@dataclass(frozen=True)
class TrainConfig:
    """Every key of a training YAML (docs/training.md)."""

    train: str                          # manifest.jsonl of the training conversations
    eval: str | None = None             # manifest of held-out conversations (loss logged)
    base: str = "tiny-random"           # model spec: tokenizer + Mimi (and weights for ttt_only)
    mode: str = "scratch"
    lm_kwargs: Mapping[str, Any] = field(default_factory=dict)  # scratch: overrides of base's
    ttt: Mapping[str, Any] = field(default_factory=dict)        # TTTConfig keys
    steps: int = 100
    batch_size: int = 4
    segment_frames: int | None = None   # random crops of this length; null = whole conversations
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    text_weight: float = 1.0
    audio_weight: float = 1.0
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    time_limit_s: float | None = None   # stop after this much time: machine-dependent, not for results
    recurrence: Mapping[str, Any] | None = None  # exact repeats spliced into batches (frames)
    select: str = "last"                # checkpoint evaluated: last, or best_eval_loss (→ OUT/best)
    mix_blocks: int | None = None       # rows of random spans of this many frames (no memorising)
    fresh_rows: int | None = None       # rows of this many frames of new word orders (word_rows.py)
    fresh_unit: str = "word"            # fresh rows' turns: random words, or phrases as spoken
    device: str = "cpu"
    cache_dir: str = "results/cache"

    def __post_init__(self) -> None:
        for name in ("train", "base"):
            check(isinstance(getattr(self, name), str) and getattr(self, name), name,
                  "must be a non-empty string")
        check(self.eval is None or isinstance(self.eval, str), "eval", "must be a path or null")
        check(self.mode in MODES, "mode", f"must be one of {MODES}, got {self.mode!r}")
        check(isinstance(self.lm_kwargs, Mapping), "lm_kwargs", "must be a mapping")
        check(not self.lm_kwargs or self.mode == "scratch", "lm_kwargs",
              "only with mode: scratch (ttt_only keeps the checkpoint's architecture)")
        check(isinstance(self.ttt, Mapping), "ttt", "must be a mapping of TTT settings")
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            value = getattr(self, name)
            check(is_int(value) and value >= 1, name, f"must be an integer >= 1, got {value!r}")
        check(is_int(self.warmup_steps) and self.warmup_steps >= 0, "warmup_steps",
              "must be an integer >= 0")
        check(is_int(self.seed) and -SEED_RANGE <= self.seed < SEED_RANGE, "seed",
              f"must be an integer in [-2**63, 2**63), got {self.seed!r}")
        check(self.segment_frames is None or (is_int(self.segment_frames) and self.segment_frames >= 2),
              "segment_frames", "must be null or an integer >= 2")
        for name in ("lr", "weight_decay", "text_weight", "audio_weight"):
            value = getattr(self, name)
            check(is_number(value) and math.isfinite(value) and value >= 0, name,
                  f"must be a finite number >= 0, got {value!r}")
        check(self.grad_clip is None or (is_number(self.grad_clip) and self.grad_clip > 0),
              "grad_clip", "must be null (off) or a number > 0")
        check(isinstance(self.device, str), "device", "must be a string (cpu, cuda, ...)")
        check(self.time_limit_s is None or (is_number(self.time_limit_s) and self.time_limit_s > 0),
              "time_limit_s", "must be null (none) or a number > 0")
        check(self.select in SELECT, "select", f"must be one of {SELECT}, got {self.select!r}")
        check(self.select != "best_eval_loss" or self.eval is not None, "select",
              "best_eval_loss needs an eval manifest")
        check(self.mix_blocks is None or (is_int(self.mix_blocks) and self.mix_blocks >= 2),
              "mix_blocks", "must be null or an integer >= 2")
        check(self.fresh_rows is None or (is_int(self.fresh_rows) and self.fresh_rows >= 2),
              "fresh_rows", "must be null or an integer >= 2")
        check(self.fresh_unit in UNITS, "fresh_unit", f"must be one of {UNITS}, got {self.fresh_unit!r}")
        check(self.fresh_rows is None or self.mix_blocks is None, "fresh_rows",
              "cannot be combined with mix_blocks (each decides what a training row is)")
        check_spec(self.recurrence)
        self.ttt_config()  # validated here, before any heavy work

    def ttt_config(self) -> TTTConfig:
        try:
            return TTTConfig.from_dict(dict(self.ttt))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"ttt.{exc}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        return cls(**strict_kwargs(cls, data, "train config"))

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["lm_kwargs"], out["ttt"] = dict(self.lm_kwargs), dict(self.ttt)
        if self.recurrence is not None:
            out["recurrence"] = {k: (list(v) if isinstance(v, (list, tuple)) else v)
                                 for k, v in self.recurrence.items()}
        return out


def load_train_config(path: str | os.PathLike) -> TrainConfig:
    raw = read_yaml(path, "training config", ValueError)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of training settings")
    try:
        return TrainConfig.from_dict(raw)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from None


# ---- model -----------------------------------------------------------------------------------

def build_model(cfg: TrainConfig):
    """(lm with TTT applied, base checkpoint (tokenizer, lazy Mimi), LM kwargs, parameters to
    train)."""
    from moshi.models import loaders

    base_dir = resolve_model(cfg.base, Path(cfg.cache_dir) / "models")
    ttt = cfg.ttt_config()
    if cfg.mode == "ttt_only":
        bundle = load_checkpoint(base_dir, ttt=ttt.to_dict(), device=cfg.device, seed=cfg.seed)
        lm = bundle.lm
        base = TrainBase(cfg.base, base_dir, cfg.device, bundle.mimi)
        lm_kwargs = dict(base.sources.lm_kwargs)
        for p in lm.parameters():
            p.requires_grad_(False)
        trained = [p for name, p in ttt_parameters(lm)]
        for p in trained:
            p.requires_grad_(True)
    else:
        base = TrainBase(cfg.base, base_dir, cfg.device)
        lm_kwargs = {**base.sources.lm_kwargs, **cfg.lm_kwargs}
        torch.manual_seed(cfg.seed)
        try:
            lm = loaders.get_moshi_lm(None, lm_kwargs=lm_kwargs, device=cfg.device,
                                      dtype=torch.float32)
        except TypeError as exc:
            raise ValueError(f"lm_kwargs: {exc}") from None
        apply_ttt(lm, ttt)
        trained = list(lm.parameters())
    if not trained:
        raise ValueError("ttt: no TTT layer selected, nothing to train in mode ttt_only")
    return lm, base, lm_kwargs, trained


def ttt_parameters(lm) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters TTT adds: the target generator (In-Place; W^(0) stays the pretrained down
    projection) or the whole TTT-MLP branch and its gate."""
    out = []
    for i, module in ttt_layers(lm).items():
        for name, p in module.named_parameters():
            if isinstance(module, TTTGating) and not name.startswith("target_generator."):
                continue
            out.append((f"transformer.layers.{i}.{name}", p))
    return out


def lm_loss(lm, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(text CE, audio CE) in nats, means over moshi's valid positions (its masks)."""
    out = lm(codes)
    wide = lambda x: x if x.dtype == torch.float64 else x.float()  # noqa: E731  (fp32 at least)
    text_target = codes[:, :1]
    text = F.cross_entropy(wide(out.text_logits[out.text_mask]), text_target[out.text_mask])
    audio_target = codes[:, lm.audio_offset:lm.audio_offset + lm.dep_q]
    audio = F.cross_entropy(wide(out.logits[out.mask]), audio_target[out.mask])
    return text, audio


# ---- the loop -------------------------------------------------------------------------------

def train(cfg: TrainConfig, out_dir: str | os.PathLike, log=print) -> dict:
    """Train to ``cfg.steps`` (resuming from ``out_dir`` when it holds a checkpoint); returns
    the final summary (also written to ``out_dir/summary.json``). One run per ``out_dir``: the
    lock ``run-cell`` takes (ttt/base/outdir.py); a second run is refused, not interleaved."""
    with lock_output(Path(out_dir)):
        return _train_locked(cfg, Path(out_dir), log)


def _train_locked(cfg: TrainConfig, out: Path, log) -> dict:
    resume = find_resume(out)
    saved = None
    if resume is not None:
        try:  # tensors and plain values only: a file planted in --out cannot run code
            saved = torch.load(resume / STATE_FILE, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - pickle refused, truncated, not a torch file
            raise ValueError(f"{resume / STATE_FILE}: unreadable training state "
                             f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        check_state(saved, resume / STATE_FILE)
        # Only the step budget may change between a run and its resumption.
        new, old = cfg.to_dict(), saved["config"]
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # keys added later
        diff = sorted(k for k in set(new) | set(old)
                      if k not in RESUMABLE_CHANGES and old.get(k, defaults.get(k)) != new.get(k))
        if diff:
            raise ValueError(f"{out}: holds a run with a different config (key(s) {diff}); "
                             "use another --out or the same config")
    torch.manual_seed(cfg.seed)
    lm, base, lm_kwargs, params = build_model(cfg)
    ttt = cfg.ttt_config()
    train_codes = load_codes(cfg.train, base, cfg.cache_dir)
    lexicon = (build_lexicon(train_codes, [item.alignments for item in read_manifest(cfg.train)],
                             base.tokenizer) if cfg.fresh_rows else None)
    eval_codes = eval_items(load_codes(cfg.eval, base, cfg.cache_dir), cfg.recurrence) if cfg.eval else []
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    step, rows, elapsed, best = 0, [], 0.0, None
    if saved is not None:
        from safetensors.torch import load_file
        try:  # a state of the right shape whose contents do not fit this model or optimizer
            lm.load_state_dict(load_file(str(resume / "model.safetensors"), device=cfg.device))
            opt.load_state_dict(saved["optimizer"])
            set_rng_state(saved["rng"], g)
        except Exception as exc:  # noqa: BLE001 - torch's KeyError, ValueError, RuntimeError alike
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{resume}: cannot resume from this checkpoint ({first})") from None
        step, rows, elapsed = saved["step"], saved["log"], saved["elapsed_s"]
        best = saved.get("best")
        log(f"resumed from {resume} at step {step}")
    lm.train()
    probe = InnerProbe(lm)
    data_hashes = {name: file_digest(Path(path)) for name, path in
                   (("train", cfg.train), ("eval", cfg.eval)) if path}
    started = time.perf_counter() - elapsed

    def make_batch(g: torch.Generator) -> torch.Tensor:  # runs in the batch worker: g is its alone
        if lexicon is not None:
            batch = fresh_batch(lexicon, cfg.batch_size, cfg.fresh_rows, g, cfg.fresh_unit)
        elif cfg.mix_blocks:
            batch = mixed_batch(train_codes, cfg.batch_size, cfg.segment_frames, cfg.mix_blocks, g)
        else:
            batch = sample_batch(train_codes, cfg.batch_size, cfg.segment_frames, g)
        return add_repeats(batch, cfg.recurrence, g)[0]

    batches = Prefetched(make_batch, g)
    try:
        while step < cfg.steps:
            batch, batch_state = batches.next()
            batch = batch.to(cfg.device)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
            last = step + 1 == cfg.steps or (cfg.time_limit_s is not None and
                                              time.perf_counter() - started >= cfg.time_limit_s)
            logging = (step + 1) % cfg.log_every == 0 or last
            text, audio = lm_loss(lm, batch)
            loss = cfg.text_weight * text + cfg.audio_weight * audio
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or float("inf"))
            opt.step()
            step += 1
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"step {step}: loss is {loss.item()} (diverged)")
            if logging:
                row = {"step": step, "loss": loss.item(), "text_loss": text.item(),
                       "audio_loss": audio.item(), "grad_norm": float(grad_norm),
                       "lr": opt.param_groups[0]["lr"], "elapsed_s": time.perf_counter() - started}
                row.update(probe.stats())
                if eval_codes:
                    sync_twin(lm)
                    row.update(evaluate_loss(lm, eval_codes, cfg.device))
                    row["eval_loss"] = selection_loss(row, cfg.text_weight, cfg.audio_weight)
                    if cfg.select == "best_eval_loss" and (best is None or row["eval_loss"] < best["eval_loss"]):
                        best = {"step": step, "eval_loss": row["eval_loss"]}
                        write_checkpoint(out, lm, base, lm_kwargs, ttt,
                                         {"config": cfg.to_dict(), **best}, name="best")
                rows.append(row)
                write_csv(out / "train_log.csv", rows) if out.is_dir() else None
                log(_log_line(row))
            if step % cfg.checkpoint_every == 0 or last:
                out.mkdir(parents=True, exist_ok=True)
                state = {"config": cfg.to_dict(), "step": step, "optimizer": opt.state_dict(),
                         "rng": rng_state(batch_state), "log": rows, "elapsed_s": time.perf_counter() - started,
                         "best": best}
                write_checkpoint(out, lm, base, lm_kwargs, ttt, state)
                write_csv(out / "train_log.csv", rows)
            if last:
                break
        summary = {"steps": step, "final": rows[-1] if rows else None,
                   "train_time_s": time.perf_counter() - started, "device": _device_name(cfg.device),
                   "platform": platform.platform(), "torch": torch.__version__,
                   "data_sha256": data_hashes, "config": cfg.to_dict(),
                   "parameters_trained": sum(p.numel() for p in params),
                   "selected": ({"criterion": cfg.select, **best, "checkpoint": str(out / "best")}
                                if best is not None else {"criterion": "last", "step": step,
                                                          "checkpoint": str(out / "checkpoint")})}
        write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
        return summary
    finally:
        batches.close()
        probe.close()


def _log_line(row: dict) -> str:
    parts = [f"step {row['step']}", f"loss {row['loss']:.4f}", f"text {row['text_loss']:.4f}",
             f"audio {row['audio_loss']:.4f}", f"|g| {row['grad_norm']:.3g}"]
    if "eval_text_loss" in row:
        parts.append(f"eval text {row['eval_text_loss']:.4f} audio {row['eval_audio_loss']:.4f}")
    for key in ("eval_ttt_gain_text", "eval_ttt_gain_copy_text"):
        if key in row:
            parts.append(f"{key[5:]} {row[key]:+.4f}")
    for key in sorted(k for k in row if k.endswith("_w_norm")):
        i = key.split("_")[0]
        parts.append(f"{i}: |W| {row[key]:.4g} dW/W {row.get(i + '_w_rel_change', float('nan')):.3g}"
                     f" inner W0/before/after {row.get(i + '_inner_w0', float('nan')):.4g}/"
                     f"{row.get(i + '_inner_before', float('nan')):.4g}/"
                     f"{row.get(i + '_inner_after', float('nan')):.4g}")
    parts.append(f"{row['elapsed_s']:.0f} s")
    return "TRAIN " + ", ".join(parts)


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
