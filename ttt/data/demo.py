"""Synthetic conversations of word tones (two speakers, moshi-finetune layout): the embedded
default's demo conversations and the positive control's, whose content recurs beyond the
attention context (docs/controls.md).

A *recurrent* control conversation copies its first ``part_s`` seconds (audio samples and word
alignments, frame-aligned, so the random Mimi sees the same samples) again after a ``gap_s``
filler that is longer than the context: only a memory that outlives the attention window can
predict the copy. A *plain* one has fresh words throughout (same length, same statistics).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ttt.base.files import write_audio, write_text
from ttt.data.conversations import FRAME_RATE, MAIN, OTHER, SAMPLE_RATE, Item, read_alignments

# The positive control's recurrence (gpu/control/run.sh): an 8-s part, 4-s fillers.
RECUR_PART_S, RECUR_GAP_S = 8.0, 4.0


def word_tone_turns(rng, duration: float, words: list[str], channel: int = 0, start: float = 0.1,
                    samples: int | None = None):
    """Alternating turns of 3–8 words over ``duration`` s, each word a short harmonic tone whose
    pitch depends on the word: (audio [samples, 2], alignments, the channel that speaks next)."""
    n = int(round(duration * SAMPLE_RATE)) if samples is None else samples
    audio = np.zeros((n, 2), dtype=np.float32)
    alignments = []
    t = start
    while t < duration - 0.5:
        for _ in range(int(rng.integers(3, 9))):
            word = words[int(rng.integers(len(words)))]
            length = float(rng.uniform(0.25, 0.5))
            if t + length > duration - 0.1:
                break
            first = int(t * SAMPLE_RATE)
            k = np.arange(int(length * SAMPLE_RATE))
            f0 = 120 + 15 * (sum(map(ord, word)) % 20) + 60 * channel
            tone = sum(np.sin(2 * np.pi * f0 * h * k / SAMPLE_RATE) / h for h in (1, 2, 3))
            envelope = np.sin(np.pi * k / len(k)) ** 2
            audio[first:first + len(k), channel] += 0.2 * (tone * envelope).astype(np.float32)
            alignments.append([word, [t, t + length], MAIN if channel == 0 else OTHER])
            t += length + float(rng.uniform(0.02, 0.12))
        t += float(rng.uniform(0.2, 0.6))
        channel = 1 - channel
    audio += 0.003 * rng.standard_normal(audio.shape).astype(np.float32)
    return audio, alignments, channel


def write_conversation(wav: Path, audio: np.ndarray, alignments: list) -> None:
    """The wav and its sibling alignments json, each atomically (the json first: a wav present
    means its alignments are): cells starting together may write the same demo."""
    write_text(wav.with_suffix(".json"), json.dumps({"alignments": alignments}))
    write_audio(wav, audio, SAMPLE_RATE)


def write_demo_conversation(wav: Path, duration: float, seed: int, words: list[str]) -> Item:
    """A deterministic stereo 'conversation' of word tones (``word_tone_turns``)."""
    rng = np.random.default_rng(seed)
    audio, alignments, _ = word_tone_turns(rng, duration, words, start=0.2,
                                           samples=int(duration * SAMPLE_RATE))
    alignments = [[w, [round(a, 3), round(b, 3)], s] for w, (a, b), s in alignments]
    write_conversation(wav, audio, alignments)
    return Item(wav, duration, read_alignments(wav, duration))


def write_demo_manifest(directory: Path, durations: list[float], seed: int, words: list[str],
                        recurrent: bool = False) -> Path:
    """A manifest of demo conversations (reused when already written with the same settings).
    ``recurrent``: the positive control's pattern (docs/controls.md): the first
    ``RECUR_PART_S`` seconds come back after every ``RECUR_GAP_S``-second filler, beyond the
    default model's attention context, so a memory that outlives it can help."""
    directory.mkdir(parents=True, exist_ok=True)
    kind = "-recurrent" if recurrent else ""
    manifest = directory / f"manifest{kind}-seed{seed}-{'_'.join(f'{d:g}' for d in durations)}s.jsonl"
    lines = []
    for i, duration in enumerate(durations):
        wav = directory / f"conversation{i:03d}{kind}-{duration:g}s-seed{seed}.wav"
        if not wav.is_file() or not wav.with_suffix(".json").is_file():
            if recurrent:
                write_control_conversation(wav, duration=duration, recurrent=True,
                                           part_s=RECUR_PART_S, gap_s=RECUR_GAP_S, seed=seed + i,
                                           words=words)
            else:
                write_demo_conversation(wav, duration, seed + i, words)
        lines.append(json.dumps({"path": wav.name, "duration": duration}))
    write_text(manifest, "\n".join(lines) + "\n")
    return manifest


SAMPLES_PER_FRAME = int(SAMPLE_RATE / FRAME_RATE)  # 1920


def _frames(seconds: float) -> float:
    """Round a duration to whole Mimi frames (80 ms), so a copied part keeps its frame phase."""
    return round(seconds * FRAME_RATE) / FRAME_RATE


def write_control_conversation(wav: Path, *, duration: float, recurrent: bool, part_s: float,
                               gap_s: float, seed: int, words: list[str]) -> dict:
    """One conversation: [A | filler] and, when ``recurrent``, [A | B | A | B' ...] with A the
    first ``part_s`` seconds and B fillers of ``gap_s`` seconds; plain conversations draw every
    part fresh. Returns the manifest line."""
    rng = np.random.default_rng(seed)
    part_s, gap_s = _frames(part_s), _frames(gap_s)
    # Whole frames, a partial last frame counting as one: a remainder of half a frame or less
    # rounded to no frame and never ended the loop (25 s = 312.5 frames hung).
    duration = math.ceil(round(duration * FRAME_RATE, 6)) / FRAME_RATE
    pieces, alignments, t, channel, first = [], [], 0.0, 0, None
    while t < duration - 1e-6:
        for length, is_a in ((part_s, True), (gap_s, False)):
            length = min(length, _frames(duration - t))
            if length <= 0:
                break
            if is_a and recurrent and first is not None:
                audio, words_here = first
            else:
                audio, words_here, channel = word_tone_turns(rng, length, words, channel)
                if is_a and first is None:
                    first = (audio, words_here)
            audio = audio[:int(round(length * SAMPLE_RATE))]
            pieces.append(audio)
            alignments += [[w, [round(t + a, 3), round(t + min(b, length), 3)], s]
                           for w, (a, b), s in words_here if a < length]
            t += length
    audio = np.concatenate(pieces)
    write_conversation(wav, audio, alignments)
    return {"path": wav.name, "duration": round(len(audio) / SAMPLE_RATE, 4), "recurrent": recurrent}


def write_control_manifest(directory: str | os.PathLike, *, count: int, duration: float,
                           recurrent_fraction: float, part_s: float, gap_s: float, seed: int,
                           words: list[str], workers: int = 1) -> Path:
    """``count`` conversations (a ``recurrent_fraction`` of them recurrent, interleaved), their
    manifest.jsonl (moshi-finetune lines plus a ``recurrent`` flag). Deterministic from ``seed``."""
    from concurrent.futures import ProcessPoolExecutor

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n_rec = int(round(recurrent_fraction * count))
    jobs = []
    for i in range(count):
        recurrent = (i * n_rec) // count != ((i + 1) * n_rec) // count
        wav = directory / f"conv{i:04d}-{'rec' if recurrent else 'plain'}.wav"
        jobs.append(dict(wav=wav, duration=duration, recurrent=recurrent, part_s=part_s,
                         gap_s=gap_s, seed=seed * 100_003 + i, words=words))
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            lines = list(pool.map(_write_one, jobs, chunksize=8))
    else:
        lines = [_write_one(job) for job in jobs]
    manifest = directory / "manifest.jsonl"
    write_text(manifest, "".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def _write_one(job: dict) -> dict:
    return write_control_conversation(job.pop("wav"), **job)
