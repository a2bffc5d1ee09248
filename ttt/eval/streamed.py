"""The streamed cell modes, ``generate`` and ``transcribe``: each input's user channel streamed
step by step (:func:`ttt.eval.generate.stream_user_channel`), resumable from snapshots kept
beside the cell's directory until it completes."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from ttt.base.files import write_audio, write_csv
from ttt.base.code_identity import code_digest
from ttt.base.identity import file_digest, files_digest
from ttt.eval.cell_outputs import telemetry_summary, write_plots
from ttt.data.conversations import FRAME_RATE, OTHER, SAMPLE_RATE, reference_speaker
from ttt.eval.generate import (collapse_indicators, decode_audio, stream_user_channel,
                               windowed_words, words_with_times)
from ttt.eval.metrics import word_errors
from ttt.eval.modes import CellRun, mode
from ttt.eval.phases import peak_memory
from ttt.moshi.layouts import codec_untrained
from ttt.moshi.surgery import ttt_layers
from ttt.session.snapshot import read_identity, refuse_mismatch


def replay_dir(out: Path) -> Path:
    """Where a streamed cell keeps its snapshots between attempts (removed once it completes)."""
    return out.with_name(f".{out.name}.replay")


# Cell keys that name, place or post-process a streamed run: a snapshot continues across them.
_NOT_STREAM_STATE = ("cell", "family", "cache_dir", "snapshot_every", "window_s")


def _run_identity(cfg, sources) -> dict:
    """The part of a snapshot's identity known before loading anything: config, model and the
    code running (a resume after a code edit would mix two versions of the code in one run)."""
    return json.loads(json.dumps({
        "config": {k: v for k, v in cfg.to_dict().items() if k not in _NOT_STREAM_STATE},
        "model": files_digest(sources.files),
        "code": code_digest()}))


def refuse_foreign_snapshots(cfg, out: Path, sources) -> None:
    """Before the model loads: a snapshot left by a run of another config or model is refused."""
    replay = replay_dir(out)
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
    codes = user.detach().to("cpu").contiguous()
    return json.loads(json.dumps({
        "config": {k: v for k, v in cfg.to_dict().items() if k not in _NOT_STREAM_STATE},
        "resolved_ttt": bundle.ttt.to_dict() if bundle.ttt else None,
        "resolved_yarn": bundle.yarn.to_dict() if bundle.yarn else None,
        "model": bundle.content_id,
        "code": code_digest(),
        "input": {"index": n, "audio": file_digest(item.path), "frames": codes.shape[-1],
                  "codes": hashlib.sha256(codes.numpy().tobytes()).hexdigest()}}))


@mode("generate")
@mode("transcribe")
def run_streamed(run: CellRun) -> dict:
    """``generate``: Moshi answers the user channel; ``transcribe``: its text stream is scored as a
    transcript of the user channel (WER against the user's words)."""
    cfg, bundle, log, phases, tmp = run.cfg, run.bundle, run.log, run.phases, run.tmp
    lm, tok = bundle.lm, bundle.tokenizer
    chunk = bundle.ttt.chunk_size if ttt_layers(lm) else None
    replay = replay_dir(run.out)
    if cfg.snapshot_every:
        replay.mkdir(parents=True, exist_ok=True)
    rows, telemetry, step_ms, all_words, all_tokens, diagnostics = [], [], [], [], [], []
    refs, hyps, requeues, diverged, seconds, audio = [], [], 0, False, 0.0, None
    for n, item in enumerate(run.items):
        with phases("prepare"):
            codes = run.codes(item)
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
                diagnostics_every=cfg.diagnostics_every, log_fields={"cell": cfg.cell, "item": n},
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
                write_audio(tmp / "out.wav", np.concatenate(pcm), SAMPLE_RATE)
            # Output frames start after the acoustic delay: Moshi's text time = audio time + this.
            audio = {"file": "out.wav",
                     "offset_s": (result.steps_done - len(result.audio_codes)) / FRAME_RATE,
                     "codec_untrained": codec_untrained(cfg.model, bundle.directory)}
        with open(tmp / "transcript.txt", "a") as f:
            f.write("".join(f"[item {n} {t:8.2f} s] {w}\n" for t, w in words))
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
        write_plots(tmp, [], telemetry)
    p50 = float(np.percentile(step_ms, 50)) if step_ms else None
    return {
        "perplexity": None,
        "wer": word_errors(refs, hyps) if refs else None,
        "collapse": collapse_indicators(all_tokens, all_words, seconds / 60),
        "throughput": {"ms_per_step_p50": p50,
                       "ms_per_step_p90": float(np.percentile(step_ms, 90)) if step_ms else None,
                       "rtf": p50 / (1000 / FRAME_RATE) if p50 else None,
                       "tokens_per_s": 1000 / float(np.mean(step_ms)) if step_ms else None},
        "memory": {"run_peak_bytes": peak_memory(cfg.device)},
        "ttt_telemetry": telemetry_summary(telemetry),
        "diverged": diverged,
        "steps": int(seconds * FRAME_RATE),
        "requeues": requeues,
        **({"audio": audio} if audio else {}),
    }

