"""Inputs of a cell: moshi-finetune manifests (stereo wav, left = Moshi, right = user, plus the
sibling alignments json), their audio, and Moshi's text stream built from the alignments.

Every problem with an input is a one-line ``DataError`` naming the file.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

SAMPLE_RATE = 24000
FRAME_RATE = 12.5
MAX_TIME_S = 1e7  # an alignment time beyond 115 days is not a time (±1e308 overflowed the frame index)
PAD_ID, END_OF_PADDING_ID = 3, 0
MAIN, OTHER = "SPEAKER_MAIN", "SPEAKER_OTHER"
CODES_FORMAT = "ttt-mimi-codes/2"


class DataError(ValueError):
    """An unusable input, with the file at fault in the message."""


@dataclass
class Item:
    """One input: a stereo conversation with word alignments, or (``reference`` set) a mono
    recording of the user with its reference text, for ``transcribe``/``generate``."""

    path: Path
    duration: float
    alignments: list[tuple[str, tuple[float, float], str]]
    reference: str | None = None
    # A codes-only line (``audio_sha256`` and ``audio_seconds`` recorded, no audio file:
    # ttt/data/codes_pack.py) stands for a recording encoded elsewhere; its codes must be in the
    # cache under that digest.
    audio_sha256: str | None = None
    audio_seconds: float | None = None

    @property
    def channels(self) -> int:
        return 1 if self.reference is not None else 2


def read_manifest(path: str | os.PathLike) -> list[Item]:
    """jsonl lines ``{"path", "duration"}`` (paths relative to the manifest) for stereo
    conversations with sibling alignments, or ``{"path", "duration", "text"}`` for a mono
    recording with its reference transcript. A directory stands for every ``*jsonl`` file under
    it, as moshi-finetune reads a data directory (``finetune/data/dataset.py``, ``DataDir``). A
    stereo line with ``audio_sha256`` may lack its wav (codes-only: encoded elsewhere)."""
    path = Path(path)
    if path.is_dir():
        manifests = sorted(p for p in path.rglob("*jsonl") if p.is_file())
        if not manifests:
            raise DataError(f"{path}: no *.jsonl manifest under this data directory")
        return [item for manifest in manifests for item in read_manifest(manifest)]
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    items = []
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text (a manifest is JSON lines)") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            wav = (path.parent / entry["path"]).resolve()
            raw = entry["duration"]
            text = entry.get("text")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise DataError(f"{path}:{number}: expected a JSON object with 'path' and "
                            "'duration'") from None
        duration = _duration(raw, f"{path}:{number}")
        recorded = entry.get("audio_sha256")
        if recorded is not None and text is None and not wav.exists():
            seconds = entry.get("audio_seconds")
            if not (isinstance(recorded, str) and len(recorded) == 64 and isinstance(seconds, (int, float))):
                raise DataError(f"{path}:{number}: a codes-only line (no {wav.name}) needs audio_sha256 "
                                "(64 hex digits) and audio_seconds")
            items.append(Item(wav, duration, read_alignments(wav, duration), audio_sha256=recorded,
                              audio_seconds=float(seconds)))
            continue
        seconds = check_audio(wav, channels=1 if text is not None else 2)
        _check_duration(duration, seconds, wav, f"{path}:{number}")
        if recorded is not None and text is None:  # checked against the file when its codes are keyed
            items.append(Item(wav, duration, read_alignments(wav, duration), audio_sha256=str(recorded)))
            continue
        if text is not None:
            items.append(Item(wav, duration, [], reference=str(text)))
        else:
            items.append(Item(wav, duration, read_alignments(wav, duration)))
    if not items:
        raise DataError(f"{path}: empty manifest")
    return items


def _duration(raw, where: str) -> float:
    """A manifest's ``duration``: a finite number of seconds > 0."""
    try:
        duration = float(raw) if not isinstance(raw, bool) else math.nan
    except (TypeError, ValueError):
        duration = math.nan
    if not (math.isfinite(duration) and duration > 0):
        raise DataError(f"{where}: 'duration' must be a finite number of seconds > 0, got {raw!r}")
    return duration


def _check_duration(duration: float, seconds: float, wav: Path, where: str) -> None:
    """The manifest's duration against the audio: longer than the audio is an error (words
    would be placed past its end); much shorter is worth a warning (the rest has no words)."""
    if duration > seconds + 1 / FRAME_RATE:
        raise DataError(f"{where}: 'duration' {duration:g} s, but {wav} holds only "
                        f"{seconds:.3f} s of audio")
    if seconds > 2 * duration + 1.0:
        logging.getLogger(__name__).warning(
            "%s: 'duration' %g s, but %s holds %.3f s of audio: words after %g s are dropped",
            where, duration, wav, seconds, duration)


def read_alignments(wav: Path, duration: float) -> list:
    """``[word, (start, end), speaker]`` of the sibling json (moshi-finetune's ``annotate.py``
    format). Words starting at or after the end of the audio are dropped, and counted in the log,
    as moshi-finetune never reaches them; a word starting inside that runs past the end is kept
    (its tokens are placed as moshi-finetune places them)."""
    sibling = wav.with_suffix(".json")
    if not sibling.is_file():
        raise DataError(f"{sibling}: alignments file missing (expected beside {wav.name})")
    try:
        raw = json.loads(sibling.read_text())["alignments"]
        alignments = [(str(w), (float(a), float(b)), str(spk)) for w, (a, b), spk in raw]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise DataError(f"{sibling}: expected {{\"alignments\": [[word, [start, end], speaker], "
                        "...]}") from None
    for n, (word, times, _) in enumerate(alignments):
        if not all(math.isfinite(t) and 0 <= t <= MAX_TIME_S for t in times):
            raise DataError(f"{sibling}: alignments[{n}] ({word!r}): times {list(times)} must be "
                            f"seconds in [0, {MAX_TIME_S:g}]")
    kept = [a for a in alignments if a[1][0] < duration]
    running_over = sum(1 for a in kept if a[1][1] > duration)
    if len(kept) < len(alignments) or running_over:
        logging.getLogger(__name__).warning(
            "%s: %d word(s) start past the end of the audio (%.3f s): dropped; %d run past it: "
            "kept", sibling, len(alignments) - len(kept), duration, running_over)
    return kept


def reference_speaker(alignments) -> str:
    """Whose words a ``transcribe`` cell scores: the user's (SPEAKER_OTHER, right channel) when
    the alignments carry any, else SPEAKER_MAIN's (left channel) — moshi-finetune's
    ``annotate.py`` transcribes the left channel only and labels every word SPEAKER_MAIN."""
    return OTHER if any(spk == OTHER for _, _, spk in alignments) else MAIN


def check_audio(path: Path, channels: int = 2) -> float:
    """Header-only check, so a bad file fails before any model is loaded; its length (s)."""
    if not path.is_file():
        raise DataError(f"{path}: audio file not found")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise DataError(f"{path}: unreadable or unsupported audio ({str(exc).strip()})") from None
    if info.channels != channels:
        raise DataError(f"{path}: {info.channels} channel(s), expected {channels}"
                        + (" (left = Moshi, right = user)" if channels == 2 else ""))
    if info.frames == 0:
        raise DataError(f"{path}: no samples")
    return info.frames / info.samplerate


def load_audio(path: Path, channels: int = 2) -> np.ndarray:
    """float32 [channels, samples] at 24 kHz (resampled with soxr when needed)."""
    check_audio(path, channels)
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise DataError(f"{path}: unreadable or unsupported audio ({str(exc).strip()})") from None
    if rate != SAMPLE_RATE:
        import soxr
        audio = soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)
    return np.ascontiguousarray(audio.T)


def word_tokens(tokenizer, word: str) -> list[int]:
    """A word's tokens as moshi-finetune tokenises an alignment: stripped, each line encoded,
    lines joined by the newline piece, no BOS."""
    lines = [tokenizer.encode(line) for line in word.strip().split("\n")]
    tokens = lines[0]
    for line in lines[1:]:
        tokens = [*tokens, tokenizer.encode("\n")[-1], *line]
    return tokens


def text_stream(alignments, tokenizer, frames: int, speaker: str = MAIN) -> torch.Tensor:
    """Moshi's text stream as moshi-finetune builds it for training (``Interleaver`` with
    ``keep_main_only=True``, ``finetune/data/interleaver.py``): ``speaker``'s words with a duration
    (start < end), in start order; a word enters at frame floor(12.5·start) (0 if negative) and
    its tokens take consecutive frames until the next word enters, which cuts off what is left
    (of several words entering in one frame, the last wins); padding (3) elsewhere, and
    end-of-padding (0) on a padding frame right before a token."""
    entering = []  # (frame, tokens) in start order
    for word, (start, end), spk in sorted(alignments, key=lambda a: a[1][0]):
        if spk != speaker or not start < end:
            continue
        frame = max(0, math.floor(start * FRAME_RATE))
        if frame >= frames:
            break
        entering.append((frame, word_tokens(tokenizer, word)))
    stream = torch.full((frames,), PAD_ID, dtype=torch.long)
    for k, (frame, tokens) in enumerate(entering):
        stop = entering[k + 1][0] if k + 1 < len(entering) else frames
        for t, token in zip(range(frame, stop), tokens):
            if t > 0 and stream[t - 1] == PAD_ID:
                stream[t - 1] = END_OF_PADDING_ID
            stream[t] = token
    return stream
