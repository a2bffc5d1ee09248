"""Run one matrix cell end to end: model, data, mode, metrics, telemetry, outputs.

A cell writes into a temporary sibling of its output directory and renames it into place when
done, so a cell directory is either complete or absent (a failed run leaves nothing behind).
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ttt.base.files import write_csv
from ttt.config import MODES, CellConfig, load_cell_config  # noqa: F401 - this module's API too
from ttt.base.outdir import check_output, claim_output, remove_dead_temporaries
from ttt.eval.data import FRAME_RATE, DataError, conversation_codes, read_manifest, write_demo_manifest
from ttt.session.diagnostics import Diagnostics, diagnostics_line
from ttt.eval.metrics import perplexity, sliding_perplexity, teacher_forced_nll
from ttt.moshi.checkpoints import resolve_checkpoint
from ttt.moshi.checkpoints import codec_untrained
from ttt.moshi.model import CheckpointError, load_checkpoint
from ttt.moshi.tiny import DEMO_WORDS
from ttt.moshi.surgery import ttt_disabled, ttt_layers
from ttt.session.telemetry import (chunk_rows, chunk_telemetry, next_chunk_gain, telemetry_line,
                                   ttt_state)


def run_cell(cfg: CellConfig, out_dir: str | os.PathLike, log=print, fresh: bool = False) -> dict:
    """Run ``cfg`` and write its directory atomically; returns metrics.json's content. One run per
    ``out_dir`` (an OS lock, see outdir.py). A streamed cell resumes from its snapshots unless
    ``fresh`` (they are discarded; a snapshot of another config, model or input is refused)."""
    out = Path(out_dir)
    check_output(out)
    check_device(cfg.device)
    with claim_output(out):
        if fresh and _replay_dir(out).exists():
            shutil.rmtree(_replay_dir(out))
            log(f"[{cfg.cell}] --fresh: discarded the snapshots in {_replay_dir(out)}")
        return _run_claimed(cfg, out, log)


def _run_claimed(cfg: CellConfig, out: Path, log) -> dict:
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    torch.manual_seed(cfg.seed)
    cache = Path(cfg.cache_dir)
    phases = Phases(cfg.device)
    with phases("prepare"):
        items = cell_items(cfg, cache)
        sources = resolve_checkpoint(cfg.model, cfg.base, cache / "models")
        _refuse_foreign_snapshots(cfg, out, sources)
    with phases("load"):
        bundle = load_checkpoint(sources, ttt=cfg.ttt, yarn=cfg.yarn, device=cfg.device,
                                 dtype=getattr(torch, cfg.dtype), seed=cfg.seed, base=cfg.base,
                                 cache_root=cache / "models")
    load = {"load_s": round(phases.totals["load"], 3),
            "load_peak_bytes": _peak_memory(cfg.device)}
    _reset_peak_memory(cfg.device)  # the run's peak, without the load transient
    for stale in remove_dead_temporaries(out):  # left by a preempted or killed attempt
        log(f"[{cfg.cell}] removed {stale.name}, left by a dead run")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        if cfg.mode == "teacher_forced":
            metrics = _teacher_forced(cfg, bundle, items, cache, tmp, log, phases)
        else:
            metrics = _streamed(cfg, bundle, items, cache, tmp, out, log, phases)
        metrics.setdefault("requeues", 0)
        metrics["memory"] = {"load_peak_bytes": load["load_peak_bytes"],
                             "run_peak_bytes": metrics["memory"]["run_peak_bytes"]}
        metrics["load_s"] = load["load_s"]
        with phases("run"):
            plumbing = (_embedding_plumbing(cfg, bundle, items, cache)
                        if ttt_layers(bundle.lm) else None)
        metrics.update(cell=cfg.cell, family=cfg.family, mode=cfg.mode,
                       model_path=str(Path(bundle.directory).resolve()),
                       ttt=bool(ttt_layers(bundle.lm)),
                       model_layers=len(bundle.lm.transformer.layers),
                       plumbing=plumbing,
                       config={**cfg.to_dict(),
                               "resolved_ttt": bundle.ttt.to_dict() if bundle.ttt else None,
                               "resolved_yarn": bundle.yarn.to_dict() if bundle.yarn else None},
                       provenance=_provenance(cfg, started))
        with phases("write"):
            metrics["timing"] = phases.seconds()  # metrics.json's own writing is the rest
            _write_json(tmp / "metrics.json", metrics)
            tmp.rename(out)
        shutil.rmtree(_replay_dir(out), ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return metrics


class Phases:
    """Wall seconds per phase of a cell (metrics.json ``timing``): ``load`` (checkpoint),
    ``prepare`` (data, Mimi codes, warm-up), ``run`` (the measured passes and the checks beside
    them), ``write`` (tables, plots, audio). CUDA is synchronised at every boundary so queued
    work is counted where it was issued."""

    NAMES = ("load", "prepare", "run", "write")

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.totals = dict.fromkeys(self.NAMES, 0.0)

    @contextmanager
    def __call__(self, name: str):
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.totals[name] += time.perf_counter() - start

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def seconds(self) -> dict:
        return {f"{name}_s": round(value, 4) for name, value in self.totals.items()}


def check_device(device: str) -> None:
    """One line, before any loading, instead of torch's traceback deep inside the model build."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} but CUDA is not available on {platform.node()} "
                         "(run the cell on a GPU node, or set device: cpu)")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise ValueError(f"device: {device!r} but this host has {torch.cuda.device_count()} "
                         "CUDA device(s)")


def cell_items(cfg: CellConfig, cache: Path):
    """The inputs of a cell (demo conversations are written on first use)."""
    if "manifest" in cfg.data:
        items = read_manifest(cfg.data["manifest"])
        if cfg.mode == "teacher_forced" and any(i.reference is not None for i in items):
            raise DataError(f"{cfg.data['manifest']}: teacher_forced needs stereo conversations "
                            "with alignments, not mono recordings with text")
        return items
    demo = dict(cfg.data["demo"])
    durations = [float(d) for d in demo.get("durations", [20.0])]
    seed = int(demo.get("seed", 0))
    return read_manifest(write_demo_manifest(cache / "demo", durations, seed, DEMO_WORDS,
                                             recurrent=bool(demo.get("recurrent", False))))


def _teacher_forced(cfg, bundle, items, cache, tmp: Path, log, phases: "Phases",
                    inputs: list[torch.Tensor] | None = None) -> dict:
    """``inputs``: the code tensors of ``items`` when the caller has them (the cell benchmark)."""
    lm = bundle.lm
    model_key = bundle.mimi_id
    chunk = bundle.ttt.chunk_size if ttt_layers(lm) else None
    block = teacher_forced_block(cfg.block, chunk)
    window = max(1, int(round(cfg.window_s * FRAME_RATE)))
    rows, telemetry, block_times, diagnostics = [], [], [], []
    diag = Diagnostics(lm) if cfg.diagnostics_every and ttt_layers(lm) else None
    diverged, text_all, audio_all, offset, first = False, [], [], 0, None
    with phases("prepare"):
        if inputs is None:
            inputs = [conversation_codes(bundle.mimi, bundle.tokenizer, item, cache / "codes",
                                         model_key).to(cfg.device) for item in items]
        warm_up(lm, inputs[0], chunk, diag, block)
    for n, codes in enumerate(inputs):
        T = codes.shape[-1]
        last = {"t": time.perf_counter(), "step": 0}
        clip_count = {}

        def on_block(end, block_nll, item_index=n):
            nonlocal diverged
            states, chunks = ttt_state(lm), chunk_telemetry(lm)
            # one device → host transfer per block: the finiteness flag and every telemetry value
            # (one row per chunk update where the layer logs them, else the state at the block end)
            flat = [torch.isfinite(block_nll).all().reshape(1).double()] + [
                v[:1].double() for s in states.values() for v in s.values()] + [
                c[0].reshape(-1) for c in chunks.values()]
            values = torch.cat(flat).tolist()
            now = time.perf_counter()
            block_times.append(((now - last["t"]) * 1e3, end - last["step"]))
            diverged |= values[0] == 0.0
            at, per_chunk = 1 + sum(map(len, states.values())), {}
            for layer, c in chunks.items():
                per_chunk[layer] = chunk_rows(values[at:at + c[0].numel()])
                at += c[0].numel()
            at = 1
            for layer, s in states.items():
                block_row = dict(zip(s, values[at:at + len(s)]))
                at += len(s)
                rows = [(int(r["updates"]) * chunk, r) for r in per_chunk.get(layer, [])]
                for step, row in rows or [(end, block_row)]:
                    row.update(item=item_index, step=offset + step, layer=layer)
                    telemetry.append(row)
                    clip_count[layer] = row.get("clip_events", 0)
                    if not all(math.isfinite(v) for v in row.values()):
                        diverged = True
            if diag is not None and (end // cfg.diagnostics_every > last["step"] // cfg.diagnostics_every
                                     or end == T):
                record = diag.record()
                diagnostics.extend({"item": item_index, "step": offset + end, "layer": i, **r}
                                   for i, r in record.items())
                log(diagnostics_line(record, offset + end, cell=cfg.cell, item=item_index))
            updates = end // chunk if chunk else 0
            if cfg.clip_saturation is not None and updates >= 4 and any(
                    c >= cfg.clip_saturation * updates for c in clip_count.values()):
                diverged = True
            if end % (block * 20) < block or end == T or diverged:  # the last state logged too
                log(f"[{cfg.cell}] item {item_index + 1}/{len(inputs)}: step {end}/{T}"
                    f" ({end / FRAME_RATE:.0f} s of {T / FRAME_RATE:.0f} s)")
                if states:
                    log(telemetry_line(states, offset + end, cell=cfg.cell, item=item_index))
            last.update(t=time.perf_counter(), step=end)
            return diverged

        with phases("run"):
            nll = teacher_forced_nll(lm, codes, block=block, on_block=on_block,
                                     head=chunk if cfg.ab and n == 0 else 0)
        if n == 0 and not diverged:
            first = nll
        text_all.append(nll.text[0])
        audio_all.append(nll.audio[0].reshape(-1))
        for start, ppl in sliding_perplexity(nll.text[0], window):
            audio_ppl = perplexity(nll.audio[0][:, start:start + window])
            rows.append({"item": n, "start_s": (offset + start) / FRAME_RATE, "text_ppl": ppl,
                         "audio_ppl": audio_ppl})
        offset += T
        if diverged:
            log(f"[{cfg.cell}] diverged at item {n + 1}: stopping, partial results kept")
            break
    text = np.concatenate(text_all)
    audio_tokens = np.concatenate(audio_all)
    with phases("run"):
        ab = _ab(lm, inputs[0], chunk, block, first) if cfg.ab and ttt_layers(lm) else None
        regression = _upstream_regression(cfg, bundle, items, cache) if cfg.check_upstream else None
    if diag is not None:
        diag.close()
    with phases("write"):
        write_csv(tmp / "timeseries.csv", rows)
        write_csv(tmp / "telemetry.csv", telemetry)
        write_csv(tmp / "diagnostics.csv", diagnostics)
        _plots(tmp, rows, telemetry)
    block_ms = [ms for ms, _ in block_times]
    per_frame = [ms / max(steps, 1) for ms, steps in block_times]
    total_ms, frames = sum(block_ms), sum(s for _, s in block_times)
    return {
        "perplexity": {"text": perplexity(text), "audio": perplexity(audio_tokens)},
        "wer": None,
        "throughput": {"frames_per_s": 1000 * frames / total_ms if total_ms else None,
                       "tokens_per_s": 1000 * frames / total_ms if total_ms else None,
                       "block": block,
                       "ms_per_block_p50": float(np.percentile(block_ms, 50)),
                       "ms_per_block_p90": float(np.percentile(block_ms, 90)),
                       "ms_per_step_p50": float(np.percentile(per_frame, 50)),
                       "ms_per_step_p90": float(np.percentile(per_frame, 90)),
                       "rtf": float(np.percentile(per_frame, 50)) / (1000 / FRAME_RATE)},
        "memory": {"run_peak_bytes": _peak_memory(cfg.device)},
        "ttt_telemetry": _telemetry_summary(telemetry),
        "diverged": diverged,
        "steps": offset,
        "ab": ab,
        "regression": regression,
    }


def teacher_forced_block(block: int, chunk: int | None) -> int:
    """Steps per teacher-forced block: ``block`` rounded down to a multiple of the TTT chunk (at
    least one chunk), so telemetry rows fall on update boundaries."""
    return block if not chunk else max(chunk, block // chunk * chunk)


def warm_up(lm, codes: torch.Tensor, chunk: int | None, diag=None, block: int | None = None) -> None:
    """Run the block shapes a timed pass can meet (3, 2 and 1 steps, and two whole TTT chunks
    with a tail) once in a throwaway streaming session, with one diagnostics record, so
    torch.compile's first compile and its dynamic-shape recompile (a shorter last block) and the
    first whole-chunk TTT block happen here and not inside the timed run (the first TTT-on pass
    of a process paid ≈ 0.3 s more than later ones at 7B on an H100). On CUDA the whole-chunk
    block is the pass's own first block (``block`` frames, rings of the pass's size, then it
    stops), so the allocator's growth, cuDNN's attention plans and cuBLAS's choices for the
    pass's shapes are paid here too, outside the timed run (not measured on a GPU yet)."""
    teacher_forced_nll(lm, codes[:, :, :5], block=3)
    teacher_forced_nll(lm, codes[:, :, :1], block=1)
    if chunk and codes.shape[-1] > chunk:
        def record(_end, _nll, stop=False):
            if diag is not None:
                diag.record()
            return stop
        if codes.is_cuda and block:  # the pass's first block, KV rings sized as in the pass
            teacher_forced_nll(lm, codes, block=block, on_block=lambda e, x: record(e, x, stop=True))
        else:
            n = min(codes.shape[-1], 2 * chunk + 2)
            teacher_forced_nll(lm, codes[:, :, :n], block=n, on_block=record)
        if diag is not None:
            diag.previous.clear()  # the first real record compares with nothing, as before


def _upstream_regression(cfg, bundle, items, cache) -> dict:
    """This cell's model vs the same checkpoint loaded by upstream moshi's own loader, on the first
    block of the first input: the TTT-off regression guard (seed 000 item 9)."""
    from moshi.models import loaders
    from safetensors import safe_open
    from safetensors.torch import load_file

    src = bundle.sources
    kwargs = dict(src.lm_kwargs)
    if src.lora is not None:  # moshi's own LoRA path: LoRALinear modules, fused after loading
        kwargs.update(lora=True, lora_scaling=src.lora_scaling, lora_rank=_lora_rank(src.lora))
    dtype = getattr(torch, cfg.dtype)
    with safe_open(str(src.lm_weights), "pt") as f:
        stored = set(f.keys())
    with torch.device("meta"):
        upstream_keys = set(loaders.get_moshi_lm(None, lm_kwargs=kwargs, device="meta").state_dict())
    ttt_only = stored - upstream_keys
    if ttt_only and src.lora is None:
        # A checkpoint trained with TTT: moshi's loader refuses its TTT tensors, so moshi's own
        # LMModel takes every other tensor, strictly (no key missing, nothing added).
        plain = loaders.get_moshi_lm(None, lm_kwargs=kwargs, device=cfg.device, dtype=dtype)
        state = load_file(str(src.lm_weights), device=str(cfg.device))
        plain.load_state_dict({k: v for k, v in state.items() if k not in ttt_only}, strict=True)
        loader = f"LMModel.load_state_dict(strict), {len(ttt_only)} TTT tensors left out"
    else:
        plain = loaders.get_moshi_lm(str(src.lm_weights), lm_kwargs=kwargs, device=cfg.device,
                                     dtype=dtype, lora_weights=src.lora, fuse_lora=True)
        loader = "moshi.models.loaders.get_moshi_lm"
    codes = conversation_codes(bundle.mimi, bundle.tokenizer, items[0], cache / "codes",
                               bundle.mimi_id)[:, :, :cfg.block].to(cfg.device)
    with torch.no_grad():
        ours, theirs = bundle.lm(codes), plain(codes)
    diffs = [(a - b).abs().nan_to_num().max().item() for a, b in
             ((ours.text_logits, theirs.text_logits), (ours.logits, theirs.logits))]
    equal = all(torch.equal(a.nan_to_num(), b.nan_to_num()) for a, b in
                ((ours.text_logits, theirs.text_logits), (ours.logits, theirs.logits)))
    return {"bitwise_equal": equal, "max_abs_diff": max(diffs), "steps": codes.shape[-1],
            "upstream_loader": loader}


def _embedding_plumbing(cfg, bundle, items, cache) -> dict:
    """Seed 000 item 3: the X₀ each TTT layer receives equals the summed token embeddings
    recomputed from moshi's own tables (audio codebooks, then text; before conditioning), on the
    first block of the first input. ``max_abs_diff`` 0.0 means bitwise identical."""
    lm = bundle.lm
    seq = conversation_codes(bundle.mimi, bundle.tokenizer, items[0], cache / "codes",
                             bundle.mimi_id)[:, :, :cfg.block].to(cfg.device)
    seen = {}
    handles = [layer.register_forward_pre_hook(
        lambda module, _args, i=i: seen.__setitem__(i, module._tap.x0))
        for i, layer in ttt_layers(lm).items()
        if hasattr(layer, "_tap") and layer.cfg.target_source == "embeddings"]  # reads X₀
    if not handles:
        return None
    try:
        with torch.no_grad():
            lm.forward_text(seq)
            x0 = sum(lm.emb[c](seq[:, c + lm.audio_offset]) for c in range(lm.num_audio_codebooks))
            x0 = x0 + lm.text_emb(seq[:, 0])
    finally:
        for handle in handles:
            handle.remove()
    diffs = [float("inf") if got is None or got.shape != x0.shape else
             (got.float() - x0.float()).abs().max().item() for got in seen.values()]
    return {"layers": sorted(seen), "max_abs_diff": max(diffs) if diffs else None,
            "steps": seq.shape[-1]}


def _replay_dir(out: Path) -> Path:
    """Where a streamed cell keeps its snapshots between attempts (removed once it completes)."""
    return out.with_name(f".{out.name}.replay")


# Cell keys that name, place or post-process a streamed run: a snapshot continues across them.
_NOT_STREAM_STATE = ("cell", "family", "cache_dir", "snapshot_every", "window_s")


def _run_identity(cfg, sources) -> dict:
    """The part of a snapshot's identity known before loading anything: config and model."""
    from ttt.base.identity import files_digest
    return json.loads(json.dumps({
        "config": {k: v for k, v in cfg.to_dict().items() if k not in _NOT_STREAM_STATE},
        "model": files_digest(sources.files)}))


def _refuse_foreign_snapshots(cfg, out: Path, sources) -> None:
    """Before the model loads: a snapshot left by a run of another config or model is refused."""
    from ttt.session.snapshot import read_identity, refuse_mismatch
    replay = _replay_dir(out)
    if not cfg.snapshot_every or not replay.is_dir():
        return
    current = _run_identity(cfg, sources)
    for snap in sorted(replay.iterdir()):
        saved = read_identity(snap) if snap.suffix == ".safetensors" else None
        if saved is not None:  # an unreadable one is discarded when its input is reached
            refuse_mismatch(snap, {k: saved.get(k) for k in current}, current)


def _stream_identity(cfg, bundle, n: int, item, user: torch.Tensor) -> dict:
    """What a snapshot of input ``n`` continues: the resolved cell config, the model's content
    and the input's (its audio and the exact codes streamed)."""
    import hashlib

    from ttt.base.identity import file_digest
    codes = user.detach().to("cpu").contiguous()
    return json.loads(json.dumps({
        "config": {k: v for k, v in cfg.to_dict().items() if k not in _NOT_STREAM_STATE},
        "resolved_ttt": bundle.ttt.to_dict() if bundle.ttt else None,
        "resolved_yarn": bundle.yarn.to_dict() if bundle.yarn else None,
        "model": bundle.content_id,
        "input": {"index": n, "audio": file_digest(item.path), "frames": codes.shape[-1],
                  "codes": hashlib.sha256(codes.numpy().tobytes()).hexdigest()}}))


def _streamed(cfg, bundle, items, cache, tmp: Path, out: Path, log, phases: Phases) -> dict:
    """``generate``: Moshi answers the user channel; ``transcribe``: its text stream is scored as a
    transcript of the user channel (WER against the user's words)."""
    import soundfile as sf

    from ttt.eval.data import OTHER, SAMPLE_RATE, reference_speaker
    from ttt.eval.generate import (collapse_indicators, decode_audio, stream_user_channel, windowed_words,
                           words_with_times)
    from ttt.eval.metrics import word_errors

    lm, tok = bundle.lm, bundle.tokenizer
    chunk = bundle.ttt.chunk_size if ttt_layers(lm) else None
    replay = _replay_dir(out)
    if cfg.snapshot_every:
        replay.mkdir(parents=True, exist_ok=True)
    rows, telemetry, step_ms, all_words, all_tokens, diagnostics = [], [], [], [], [], []
    refs, hyps, requeues, diverged, seconds, audio = [], [], 0, False, 0.0, None
    for n, item in enumerate(items):
        with phases("prepare"):
            codes = conversation_codes(bundle.mimi, tok, item, cache / "codes", bundle.mimi_id)
        # transcribe scores the channel whose words the alignments carry (data.reference_speaker):
        # the user's (right), or with moshi-finetune's annotate.py output the left one, fed to
        # Moshi as the user's; generate always answers the right channel.
        speaker = reference_speaker(item.alignments) if cfg.mode == "transcribe" else OTHER
        user = (codes[:, 1 + lm.dep_q:] if speaker == OTHER else codes[:, 1:1 + lm.dep_q]).to(cfg.device)
        with phases("run"):
            result = stream_user_channel(
                lm, bundle.mimi, user, seed=cfg.seed + n, chunk=chunk,
                snapshot_path=replay / f"item{n}.safetensors" if cfg.snapshot_every else None,
                identity=_stream_identity(cfg, bundle, n, item, user) if cfg.snapshot_every else None,
                snapshot_every=cfg.snapshot_every or 1, temp=cfg.temperature,
                temp_text=cfg.temperature_text, decode=False,
                diagnostics_every=cfg.diagnostics_every,
                log=lambda m, n=n: log(f"[{cfg.cell}] item {n + 1}: {m}"))
        requeues += result.requeues
        diverged |= result.diverged
        step_ms += result.step_ms[10:] or result.step_ms
        telemetry += [{**r, "item": n} for r in result.telemetry]
        diagnostics += [{"item": n, **r} for r in result.diagnostics]
        words = words_with_times(result.text_tokens, tok)
        all_words += [w for _, w in words]
        all_tokens += result.text_tokens
        seconds += result.steps_done / FRAME_RATE
        reference = [(a, w) for w, (a, _), spk in item.alignments if spk == speaker]
        if item.reference is not None and cfg.mode == "transcribe":  # mono + text: one row
            hyp = " ".join(w for _, w in words)
            rows.append({"item": n, "start_s": 0.0, "reference": item.reference, "hypothesis": hyp,
                         "wer": word_errors([item.reference], [hyp])["wer"]})
            refs.append(item.reference)
            hyps.append(hyp)
        for start in np.arange(0.0, result.steps_done / FRAME_RATE, cfg.window_s):
            if item.reference is not None and cfg.mode == "transcribe":
                break
            ref = windowed_words(reference, cfg.window_s, start) if cfg.mode == "transcribe" else None
            hyp = windowed_words(words, cfg.window_s, start)
            row = {"item": n, "start_s": float(start), "hypothesis": hyp}
            if ref is not None:
                row.update(reference=ref, wer=word_errors([ref], [hyp])["wer"])
                refs.append(ref)
                hyps.append(hyp)
            rows.append(row)
        if n == 0 and cfg.mode == "generate" and result.audio_codes:
            with phases("write"):  # Mimi decodes after generation, off the timed steps
                pcm = decode_audio(bundle.mimi, result.audio_codes, cfg.device)
                sf.write(str(tmp / "out.wav"), np.concatenate(pcm), SAMPLE_RATE)
            # Output frames start after the acoustic delay: Moshi's text time = audio time + this.
            audio = {"file": "out.wav",
                     "offset_s": (result.steps_done - len(result.audio_codes)) / FRAME_RATE,
                     "codec_untrained": codec_untrained(cfg.model, bundle.directory)}
        (tmp / "transcript.txt").open("a").write(
            "".join(f"[item {n} {t:8.2f} s] {w}\n" for t, w in words))
        if diverged:
            break
    with phases("write"):
        with open(tmp / "transcript.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        write_csv(tmp / "timeseries.csv", [{k: r[k] for k in ("item", "start_s", "wer") if k in r}
                                            for r in rows])
        write_csv(tmp / "telemetry.csv", telemetry)
        write_csv(tmp / "diagnostics.csv", diagnostics)
        _plots(tmp, [], telemetry)
    p50 = float(np.percentile(step_ms, 50)) if step_ms else None
    return {
        "perplexity": None,
        "wer": word_errors(refs, hyps) if refs else None,
        "collapse": collapse_indicators(all_tokens, all_words, seconds / 60),
        "throughput": {"ms_per_step_p50": p50,
                       "ms_per_step_p90": float(np.percentile(step_ms, 90)) if step_ms else None,
                       "rtf": p50 / (1000 / FRAME_RATE) if p50 else None,
                       "tokens_per_s": 1000 / float(np.mean(step_ms)) if step_ms else None},
        "memory": {"run_peak_bytes": _peak_memory(cfg.device)},
        "ttt_telemetry": _telemetry_summary(telemetry),
        "diverged": diverged,
        "steps": int(seconds * FRAME_RATE),
        "requeues": requeues,
        **({"audio": audio} if audio else {}),
    }


def _ab(lm, codes: torch.Tensor, chunk: int, block: int, on=None) -> dict:
    """TTT-off twin on the same input in the same job: pre-update logits error and the deltas.
    ``on``: the cell's own TTT-on pass over this input (complete, with the first chunk's text
    logits), reused instead of run again. The pre-update logits are the first chunk's of each
    pass's first block (the same forward as the scored one), not a pass of their own."""
    with torch.no_grad():
        if on is None or on.head_text_logits is None:
            on = teacher_forced_nll(lm, codes, block=block, head=chunk)
        with ttt_disabled(lm):
            off = teacher_forced_nll(lm, codes, block=block, head=chunk)
    on_logits, off_logits = on.head_text_logits, off.head_text_logits
    ok = torch.isfinite(off_logits)
    err = ((on_logits - off_logits).abs()[ok].max() / off_logits.abs()[ok].max()).item()
    out = {"pre_update_logits_rel_err": err,
           "text_ppl_on": perplexity(on.text), "text_ppl_off": perplexity(off.text),
           "audio_ppl_on": perplexity(on.audio), "audio_ppl_off": perplexity(off.audio)}
    out["text_ppl_delta"] = out["text_ppl_on"] - out["text_ppl_off"]
    out["audio_ppl_delta"] = out["audio_ppl_on"] - out["audio_ppl_off"]
    return out


def _plots(tmp: Path, rows: list[dict], telemetry: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if rows:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.plot([r["start_s"] for r in rows], [r["text_ppl"] for r in rows], label="text")
        ax.plot([r["start_s"] for r in rows], [r["audio_ppl"] for r in rows], label="audio")
        ax.set(xlabel="time (s)", ylabel="perplexity (window)", title="Sliding perplexity")
        ax.legend()
        fig.tight_layout()
        fig.savefig(tmp / "perplexity.png", dpi=100)
        plt.close(fig)
    if not telemetry:
        return
    layers = sorted({r["layer"] for r in telemetry})
    panels = [("w_norm", "‖W‖_F"), ("clip_events", "clip events (cumulative)"),
              ("inner_loss", "Figure-5 inner loss"),
              ("inner_gain", "next-chunk gain ℓ(W⁽⁰⁾) − ℓ(W⁽ⁱ⁾)")]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.2))
    for ax, (key, title) in zip(axes, panels):
        for layer in layers:
            rs = [r for r in telemetry if r["layer"] == layer]
            x = [r["step"] / FRAME_RATE for r in rs]
            if key == "inner_loss":
                ax.plot(x, [r["inner_loss_initial"] for r in rs], ":", label=f"L{layer} W0")
                ax.plot(x, [r["inner_loss_before"] for r in rs], "--", label=f"L{layer} before")
                ax.plot(x, [r["inner_loss_after"] for r in rs], label=f"L{layer} after")
            else:
                ax.plot(x, [r.get(key) for r in rs], label=f"layer {layer}")
        if key == "inner_gain":
            ax.axhline(0.0, color="grey", lw=0.5)
        ax.set(xlabel="time (s)", title=title)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(tmp / "telemetry.png", dpi=100)
    plt.close(fig)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def _telemetry_summary(telemetry: list[dict]) -> dict | None:
    """metrics.json's ``ttt_telemetry`` from the per-chunk rows. Counters are cumulative within
    one input (each input streams from a fresh state), so totals add each input's last row."""
    if not telemetry:
        return None
    per_input = {(row.get("item"), row["layer"]): row for row in telemetry}
    last = {row["layer"]: row for row in telemetry}
    return {"updates": int(sum(r["updates"] for r in per_input.values())),
            "clip_events": int(sum(r["clip_events"] for r in per_input.values())),
            "final_w_norm": {str(k): r["w_norm"] for k, r in last.items()},
            "max_delta_norm": max(r["last_delta_norm"] for r in telemetry),
            "max_w_rel_change": max(r["w_drift"] / r["w_norm"] if r["w_norm"] else 0.0
                                    for r in telemetry),
            "next_chunk_gain": next_chunk_gain(telemetry)}


def _lora_rank(path: Path) -> int:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return next(f.get_slice(k).get_shape()[0] for k in f.keys() if k.endswith(".lora_A.weight"))


def _reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_memory(device: str) -> int | None:
    """CUDA peak allocation since the last reset, or the process's peak RSS on CPU (which cannot
    be reset: there the run peak includes the load)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except ImportError:  # pragma: no cover
        return None


def _provenance(cfg: CellConfig, started: str) -> dict:
    import moshi

    from ttt import __version__
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        sha = None
    device = torch.cuda.get_device_name() if cfg.device.startswith("cuda") else platform.processor() or "cpu"
    return {"git_sha": sha, "versions": {"torch": torch.__version__, "moshi": moshi.__version__,
                                         "ttt": __version__},
            "device": device, "seed": cfg.seed, "started_at": started,
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


__all__ = ["CellConfig", "load_cell_config", "run_cell", "CheckpointError", "DataError"]
