"""Streaming generation over the user channel (``generate`` and ``transcribe`` modes), with
periodic snapshots to resume from, and the collapse indicators a listener would notice.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ttt.data.conversations import END_OF_PADDING_ID, FRAME_RATE, PAD_ID
from ttt.asr.words import word_indicators
from ttt.moshi.surgery import ttt_layers
from ttt.session.diagnostics import Diagnostics
from ttt.session.monitor import MonitoredInput, MonitorSettings, MonitorSinks, StreamMonitor
from ttt.session.snapshot import (SnapshotError, load_snapshot, refuse_mismatch, restore,
                                  save_snapshot, snapshot)
from ttt.session.streaming import TTTLMGen


@dataclass
class StreamResult:
    text_tokens: list[tuple[int, int]] = field(default_factory=list)  # (step, token id)
    pcm: list[np.ndarray] = field(default_factory=list)  # Mimi's decode of audio_codes
    audio_codes: list[np.ndarray] = field(default_factory=list)  # [8, 1] per complete frame
    step_ms: list[float] = field(default_factory=list)
    telemetry: list[dict] = field(default_factory=list)
    diagnostics: list[dict] = field(default_factory=list)
    steps_done: int = 0
    requeues: int = 0
    diverged: bool = False


@torch.no_grad()
def stream_user_channel(lm, mimi, user_codes: torch.Tensor, *, seed: int, chunk: int | None,
                        snapshot_path: Path | None, snapshot_every: int, log,
                        temp: float = 0.8, temp_text: float = 0.7, decode: bool = True,
                        diagnostics_every: int = 0, identity: dict | None = None,
                        log_fields: dict | None = None) -> StreamResult:
    """Feed ``user_codes`` [1, 8, T] step by step through :class:`TTTLMGen`, keeping Moshi's audio
    codes; with ``decode``, Mimi decodes them after the last step (:func:`decode_audio`: the same
    streaming decode, frame by frame, as inline, so the same samples; generation never reads the
    audio back, so decoding inside the timed step only made every step slower). With
    ``snapshot_path``, the complete state (LM, fast weights, LMGen, RNG, outputs and codes so far)
    is saved every ``snapshot_every`` steps and, if a snapshot is already there, the run resumes
    from it (preemption). ``diagnostics_every`` > 0 records the attention-vs-TTT diagnostics every
    that many steps (``result.diagnostics`` and a log line). ``identity`` (config, model and
    input digests) is saved with each snapshot; a snapshot of another identity is refused
    (``SnapshotMismatch``), an unreadable one discarded (logged). Timing, telemetry (a row
    every ``chunk`` steps), diagnostics, divergence and progress lines: :class:`StreamMonitor`,
    whose log lines carry ``log_fields`` (cell, item)."""
    gen = TTTLMGen(lm, temp=temp, temp_text=temp_text)
    T = user_codes.shape[-1]
    result = StreamResult()
    torch.manual_seed(seed)
    diag = Diagnostics(lm) if diagnostics_every and ttt_layers(lm) else None
    with gen.streaming(1):
        modules = {"gen": gen, "lm": lm}
        saved = _saved_snapshot(snapshot_path, log)
        if saved is not None:
            refuse_mismatch(snapshot_path, saved.get("identity"), identity or {})
            extra = restore(modules, saved)
            result = StreamResult(**extra["result"])
            result.requeues += 1
            log(f"resumed from {snapshot_path} at step {result.steps_done}")
        settings = MonitorSettings(chunk=chunk, log_every=250, frame_rate=FRAME_RATE,
                                   diagnostics_every=diagnostics_every, record_last=False,
                                   per_chunk=False)
        watched = MonitoredInput(T, log=log, start=result.steps_done, log_fields=log_fields or {})
        sinks = MonitorSinks(result.telemetry, result.diagnostics, result.step_ms)  # snapshotted
        monitor = StreamMonitor(lm, settings, watched, sinks, diag)
        for t in range(result.steps_done, T):
            monitor.restart()
            out = gen.step(user_codes[:, :, t:t + 1])
            if out is not None:
                out = out.cpu().numpy()  # one transfer: the text token and the audio codes
                result.text_tokens.append((t, int(out[0, 0, 0])))
                if (out[0, 1:] >= 0).all():
                    result.audio_codes.append(out[0, 1:])
            result.steps_done = t + 1
            result.diverged = monitor.observe(result.steps_done)
            if snapshot_path is not None and result.steps_done % snapshot_every == 0:
                save_snapshot(snapshot_path, snapshot(modules, extra={"result": vars(result)},
                                                      identity=identity))
            if result.diverged:
                break
    if diag is not None:
        diag.close()
    if decode:
        result.pcm = decode_audio(mimi, result.audio_codes, user_codes.device)
    return result


# Frames per Mimi decode call after generation: one call per frame cost ≈ 2.9 ms on an H100
# (launch-bound), 65 s of a 30-minute cell's 460 s; 25 frames (2 s of audio) per call.
DECODE_FRAMES = 25


@torch.no_grad()
def decode_audio(mimi, frames: list[np.ndarray], device, per_call: int = DECODE_FRAMES) -> list[np.ndarray]:
    """Mimi's streaming decode of ``frames`` ([8, 1] codes each) in one streaming session,
    ``per_call`` frames per call: the samples a decode inside the generation loop (one frame per
    call) gives, up to float summation order. Upstream's streaming attention keeps a ring of
    ``context`` keys, right for one frame per call; a call of several frames would overwrite keys
    its own first queries still need, so each decoder attention's ring is widened by one call's
    steps (its mask still limits every query to ``context`` keys), as the streamed encode does
    (:mod:`ttt.data.mimi_encode`). Returns one array of samples per call."""
    from moshi.modules.transformer import RingKVCache, StreamingMultiheadAttention
    from moshi.utils.compile import no_cuda_graph

    pcm = []
    if not frames:
        return pcm
    codes = torch.from_numpy(np.concatenate(frames, axis=-1)).to(device)[None]  # [1, 8, T]
    steps = per_call * round(mimi.encoder_frame_rate / mimi.frame_rate)
    with no_cuda_graph() if per_call > 1 else contextlib.nullcontext(), mimi.streaming(1):
        if per_call > 1:
            for module in mimi.decoder_transformer.modules():
                if isinstance(module, StreamingMultiheadAttention) and module.context is not None:
                    ring = module._streaming_state.kv_cache.cache  # [2, B, heads, context, dim]
                    module._streaming_state.kv_cache = RingKVCache(
                        1, ring.shape[2], ring.shape[4], module.context + steps,
                        device=ring.device, dtype=ring.dtype)
        for start in range(0, codes.shape[-1], per_call):
            pcm.append(mimi.decode(codes[:, :, start:start + per_call])[0, 0].float().cpu().numpy())
    return pcm


def _saved_snapshot(path: Path | None, log) -> dict | None:
    """The snapshot at ``path`` if there is a readable one; a corrupt one is discarded (logged)."""
    if path is None or not path.is_file():
        return None
    try:
        return load_snapshot(path)
    except SnapshotError as exc:
        log(f"discarding it and starting afresh: {exc}")
        path.unlink(missing_ok=True)
        return None


def words_with_times(tokens: list[tuple[int, int]], tokenizer) -> list[tuple[float, str]]:
    """Group sentencepiece pieces into words ('▁' starts a word), timed by their first step."""
    words: list[list] = []
    for step, token in tokens:
        if token in (PAD_ID, END_OF_PADDING_ID) or token >= tokenizer.vocab_size():
            continue
        piece = tokenizer.id_to_piece(token)
        if piece.startswith("▁") or not words:
            words.append([step / FRAME_RATE, piece.lstrip("▁")])
        else:
            words[-1][1] += piece
    return [(t, w) for t, w in words if w]


def collapse_indicators(tokens: list[tuple[int, int]], words: list[str], minutes: float) -> dict:
    """What tells a listener the model stopped talking sense: speaking rate, lexical diversity,
    the longest n-gram said twice (:func:`ttt.asr.words.word_indicators`), and how much of the
    text stream is padding."""
    pads = sum(1 for _, tok in tokens if tok in (PAD_ID, END_OF_PADDING_ID))
    return {**word_indicators(words, minutes),
            "pad_fraction": pads / len(tokens) if tokens else None}


def windowed_words(words: list[tuple[float, str]], window_s: float, start: float) -> str:
    return " ".join(w for t, w in words if start <= t < start + window_s)
