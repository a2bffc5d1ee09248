"""Scores of what the recogniser heard (:mod:`ttt.asr.recogniser`) against Moshi's own text stream.

Moshi's text and audio streams can drift apart (the "gibberish after minutes" failure is heard,
not read); ``consistency_wer`` (reference = Moshi's text, hypothesis = what the recogniser heard)
measures that drift per window and per cell, beside collapse indicators computed from the
recognised words and a speech detector's silence fraction.

The stage runs after the cell, in its own job, and writes ``<cell>/asr/`` atomically
(``asr.json``, ``asr.jsonl``, ``words.jsonl``).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ttt.asr.recogniser import (DECODE, AsrConfig, AsrError, CellDataError, read_audio_16k,
                                speech_spans, transcribe_file)
from ttt.asr.words import normalize, word_errors, word_indicators
from ttt.base.files import read_json


def asr_indicators(words: list[str], seconds: float) -> dict:
    """Collapse indicators of what was heard: words per minute, distinct-1/2, longest repeated
    n-gram (over normalised words, so "Hello," and "hello" are one word)."""
    tokens = normalize(" ".join(words)).split()
    c = word_indicators(tokens, seconds / 60)
    return {"asr_words": len(tokens), "asr_words_per_min": c["words_per_min"],
            "asr_distinct_1": c["distinct_1"], "asr_distinct_2": c["distinct_2"],
            "asr_longest_repeated_ngram": c["longest_repeated_ngram"]}


def silence_fraction(spans: list[tuple[float, float]], start: float, end: float) -> float | None:
    """Fraction of [start, end) (s, audio axis) the speech detector found no speech in."""
    if end <= start:
        return None
    speech = sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans)
    return 1.0 - speech / (end - start)


def consistency(moshi_text: str, heard_text: str) -> dict:
    """WER of what was heard against what Moshi's text stream says (Whisper normaliser + jiwer,
    as every WER of the project): 0 when the audio says the text's words."""
    return word_errors([moshi_text], [heard_text])


def score_cell(cell_dir: Path, heard: dict, spans: list[tuple[float, float]]) -> tuple[list[dict], dict]:
    """Per-window rows (item 0's windows, the ones ``out.wav`` holds) and the cell summary."""
    metrics = read_json(cell_dir / "metrics.json", "cell metrics", CellDataError)
    audio = metrics.get("audio") or {}
    offset = float(audio.get("offset_s") or 0.0)  # Moshi's text time = audio time + offset
    window = float((metrics.get("config") or {}).get("window_s") or 30.0)
    rows_in = [r for r in _read_jsonl(cell_dir / "transcript.jsonl") if r.get("item", 0) == 0]
    words = heard["words"]
    seconds = heard["audio_s"]
    rows = []
    for r in rows_in:
        start = float(r["start_s"])
        heard_words = [w["word"] for w in words if start <= w["start"] + offset < start + window]
        a, b = max(0.0, start - offset), min(seconds, start + window - offset)
        moshi = r.get("hypothesis") or ""
        asr_text = " ".join(heard_words)
        rows.append({"item": 0, "start_s": start, "hypothesis": moshi, "asr_hypothesis": asr_text,
                     "consistency_wer": consistency(moshi, asr_text)["wer"],
                     **asr_indicators(heard_words, max(b - a, 0.0)),
                     "silence_fraction": silence_fraction(spans, a, b)})
    moshi_all = " ".join(r.get("hypothesis") or "" for r in rows_in)
    summary = {"consistency": consistency(moshi_all, heard["text"]),
               "text_words": len(moshi_all.split()),  # before normalisation (fillers counted)
               "indicators": {**asr_indicators([w["word"] for w in words], seconds),
                              "silence_fraction": silence_fraction(spans, 0.0, seconds)},
               "offset_s": offset, "window_s": window,
               "codec_untrained": bool(audio.get("codec_untrained"))}
    return rows, summary


def run_stage(cell_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: AsrConfig,
              cache_dir: str | os.PathLike | None, threads: int = 0, log=print) -> dict:
    """Transcribe one generate cell and write ``out_dir`` atomically: ``asr.json`` (summary,
    recogniser, speed), ``asr.jsonl`` (per window: Moshi's ``hypothesis`` beside the
    ``asr_hypothesis`` and the scores), ``words.jsonl`` (recognised words with times). A cell
    without audio (failed, or not a generate cell) gets an ``asr.json`` that says why."""
    cell_dir, out = Path(cell_dir), Path(out_dir)
    heard = None
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        wav = cell_dir / "out.wav"
        if not (cell_dir / "metrics.json").is_file() or not wav.is_file():
            reason = ("the cell did not complete" if not (cell_dir / "metrics.json").is_file()
                      else "the cell wrote no audio (not a generate cell, or it diverged at once)")
            summary = {"status": "no_audio", "reason": reason}
        else:
            try:
                heard = transcribe_file(wav, cfg, cache_dir, threads, log)
                spans = speech_spans(read_audio_16k(wav))
                rows, scores = score_cell(cell_dir, heard, spans)
            except AsrError:
                raise
            except Exception as exc:  # noqa: BLE001 - recorded like a failed cell: the matrix goes on
                heard = None
                summary = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}".splitlines()[0]}
                log(f"asr: failed: {summary['reason']}")
        if heard is not None:
            summary = {"status": "ok", **scores, "asr_hypothesis": heard["text"],
                       "recogniser": {"engine": "faster-whisper", "version": _version(),
                                      "model": cfg.model, "model_id": heard["model_id"],
                                      "device": heard["device"], "compute_type": cfg.compute_type,
                                      "language": cfg.language, "decode": DECODE},
                       "audio": {"file": str(wav), "sha256": heard["sha256"],
                                 "seconds": heard["audio_s"]},
                       "speed": {"elapsed_s": heard["elapsed_s"], "load_s": heard.get("load_s"),
                                 "x_realtime": heard["x_realtime"], "threads": heard.get("threads"),
                                 "cached": heard["cached"]}}
            _write_jsonl(tmp / "asr.jsonl", rows)
            _write_jsonl(tmp / "words.jsonl", heard["words"])
        (tmp / "asr.json").write_text(json.dumps(summary, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _version() -> str:
    from importlib.metadata import version
    return version("faster-whisper")


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise CellDataError(f"{path}: not valid JSON lines ({exc.msg})") from None


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
