"""The ``playback`` cell mode: Moshi's output is a recording, not a generation. Its audio is the
conversation's recorded Moshi channel (left) and its text stream the alignment words of that
channel, written as the files a ``generate`` cell writes (``out.wav``, ``transcript.jsonl``,
``transcript.txt``, the tables), so the ASR stage and the consistency gates judge it unchanged.

Why: the gibberish gates need cells whose answer is known. On the embedded default (random
Mimi) a generate cell's audio is noise, so no generate cell there can speak; a playback cell of
real recorded speech can, and its two switches make it say what a broken Moshi would:
``playback_text: empty`` (a silent text stream while the audio speaks) and
``playback_audio: silence`` (silent audio while the text says it spoke). The model is not run
(metrics.json says ``ttt: false``); the shipped input is ``ttt/assets/playback/`` (real LibriVox
speech, public domain: its README)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from ttt.base.files import write_csv
from ttt.data.conversations import FRAME_RATE, MAIN, SAMPLE_RATE, load_audio
from ttt.eval.generate import collapse_indicators, windowed_words
from ttt.eval.modes import CellRun, mode
from ttt.eval.phases import peak_memory

ASSET = Path(__file__).resolve().parents[1] / "assets" / "playback" / "manifest.jsonl"


# A recording stands for Moshi: the model is not run. Without a manifest, the shipped recording.
@mode("playback", runs_model=False, conversations_only=True, demo=ASSET)
def run_playback(run: CellRun) -> dict:
    """Write a generate cell's files from the recordings of the run's items: item 0's Moshi channel
    becomes ``out.wav`` (or as many zeros with ``playback_audio: silence``), every item's
    SPEAKER_MAIN words its text stream, per ``window_s`` window (none with
    ``playback_text: empty``). metrics.json's ``audio.offset_s`` is 0: the alignments are on the
    recording's own time axis."""
    cfg, log, phases, tmp = run.cfg, run.log, run.phases, run.tmp
    rows, all_words, seconds, audio = [], [], 0.0, None
    for n, item in enumerate(run.items):
        with phases("prepare"):
            words = ([] if cfg.playback_text == "empty" else
                     sorted((a, w) for w, (a, _), spk in item.alignments if spk == MAIN))
        seconds += item.duration
        all_words += [w for _, w in words]
        for start in np.arange(0.0, item.duration, cfg.window_s):
            rows.append({"item": n, "start_s": float(start),
                         "hypothesis": windowed_words(words, cfg.window_s, start)})
        if n == 0:
            with phases("write"):
                pcm = load_audio(item.path, channels=2)[0, :int(round(item.duration * SAMPLE_RATE))]
                if cfg.playback_audio == "silence":
                    pcm = np.zeros_like(pcm)
                sf.write(str(tmp / "out.wav"), pcm, SAMPLE_RATE)
            audio = {"file": "out.wav", "offset_s": 0.0, "codec_untrained": False}
        with open(tmp / "transcript.txt", "a") as f:
            f.write("".join(f"[item {n} {t:8.2f} s] {w}\n" for t, w in words))
        log(f"[{cfg.cell}] item {n + 1}: played back {item.duration:.1f} s, {len(words)} words "
            f"(text {cfg.playback_text}, audio {cfg.playback_audio})")
    with phases("write"):
        (tmp / "transcript.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        write_csv(tmp / "timeseries.csv", [{"item": r["item"], "start_s": r["start_s"]} for r in rows])
        write_csv(tmp / "telemetry.csv", [])
        write_csv(tmp / "diagnostics.csv", [])
    return {
        "perplexity": None,
        "wer": None,
        "collapse": collapse_indicators([], all_words, seconds / 60),
        "throughput": {"ms_per_step_p50": None, "ms_per_step_p90": None, "rtf": None,
                       "tokens_per_s": None},
        "memory": {"run_peak_bytes": peak_memory(cfg.device)},
        "ttt_telemetry": None,
        "diverged": False,
        "steps": int(seconds * FRAME_RATE),
        "requeues": 0,
        **({"audio": audio} if audio else {}),
    }
