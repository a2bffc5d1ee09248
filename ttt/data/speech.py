"""Two-speaker conversations of real (synthetic) speech, built offline from Debian packages.

Why: demo tones say nothing about speech; a positive control needs speech whose content can recur.
Text: Ambrose Bierce's *The Devil's Dictionary* (1911, public domain), Debian ``dict-devil``.
Voices: Festival (Debian ``festival``, X11-style free licence) with two distinct voices,
``cmu_us_slt_arctic_hts`` (US female, HTS) on Moshi's channel and ``kal_diphone`` (US male) on
the user's. Word times are Festival's own (the Word relation's ``word_start``/``word_end``), so
alignments are the synthesiser's exact segment boundaries, not a recogniser's guess.

Two turn units: ``sentence`` (1–3 consecutive sentences of a dictionary entry, the default) and
``word`` (3–8 words drawn at random from the text part's most frequent words, each synthesised on
its own and trimmed to its span: a spoken word list whose content cannot be memorised, which is
what a positive control for test-time memory needs; docs/controls.md).

Output is moshi-finetune's layout: ``manifest.jsonl`` of ``{"path", "duration"}``, stereo 24 kHz
wavs (left = Moshi = SPEAKER_MAIN, right = user) and sibling ``.json`` alignments
``{"alignments": [[word, [start, end], speaker], ...]}``. Each sentence is synthesised once per
(voice, text) and cached by content hash, so repeated text is bit-identical audio.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from ttt.data.conversations import FRAME_RATE, MAIN, OTHER, SAMPLE_RATE
from ttt.data.speech_text import (MAX_TURN_WORDS, TEXT_SOURCE, SpeechError, passages, text_entries,
                                  vocabulary)
from ttt.base.files import atomic_write, write_text

# voice name → (Festival command that selects it, Debian package, where the package puts it)
VOICES = {
    "slt": ("voice_cmu_us_slt_arctic_hts", "festvox-us-slt-hts",
            Path("/usr/share/festival/voices/us/cmu_us_slt_arctic_hts")),
    "kal": ("voice_kal_diphone", "festvox-kallpc16k",
            Path("/usr/share/festival/voices/english/kal_diphone")),
    # the third English voice in Debian: natural training sets speak with it, so the held-out
    # natural conversations (slt, kal) are in voices the model never heard (ttt/data/natural.py)
    "ked": ("voice_ked_diphone", "festvox-kdlpc16k",
            Path("/usr/share/festival/voices/english/ked_diphone")),
}
DEFAULT_VOICES = ("slt", "kal")  # (Moshi / left / SPEAKER_MAIN, user / right / SPEAKER_OTHER)
DEBIAN_PACKAGES = ("festival", "festvox-us-slt-hts", "festvox-kallpc16k", "festvox-kdlpc16k", "dict-devil")
PEAK = 0.5            # every sentence is peak-normalised to this, so both voices are equally loud
MAX_TURN_SENTENCES = 3
WORDS_PER_S = 2.6    # both voices speak about 2.5 words/s (measured)
UNITS = ("sentence", "word")
WORD_TURN = (3, 8)    # words per turn in unit "word"
WORD_MARGIN_S = 0.04  # kept around a word's span when it is cut out of its utterance


@dataclass(frozen=True)
class Sentence:
    """One synthesised sentence: 24 kHz mono samples and Festival's word times (s)."""

    samples: np.ndarray
    words: tuple[tuple[str, float, float], ...]

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


# ---- synthesis ---------------------------------------------------------------------------------

def check_festival(voices=DEFAULT_VOICES) -> str:
    """Path of the festival binary; one-line error naming the Debian packages otherwise."""
    exe = shutil.which("festival")
    unknown = [v for v in voices if v not in VOICES]
    if unknown:
        raise SpeechError(f"unknown voice {unknown[0]!r} (known: {', '.join(VOICES)})")
    if exe is None:
        raise SpeechError("festival not found: apt-get install " + " ".join(DEBIAN_PACKAGES))
    for voice in voices:
        _, package, folder = VOICES[voice]
        if not folder.is_dir():
            raise SpeechError(f"{folder}: festival voice {voice!r} missing (apt-get install {package})")
    return exe


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _cache_key(voice: str, text: str) -> str:
    return hashlib.sha256(f"festival|{VOICES[voice][0]}|{PEAK}|{text}".encode()).hexdigest()[:24]


def synthesise(texts: list[str], voice: str, cache_dir: Path) -> list[Sentence]:
    """Sentences for ``texts`` in ``voice``: cached ones read back, the rest synthesised in one
    Festival process (its start-up dominates short sentences)."""
    folder = Path(cache_dir) / voice
    folder.mkdir(parents=True, exist_ok=True)
    todo = sorted({t for t in texts if not (folder / f"{_cache_key(voice, t)}.json").is_file()})
    if todo:
        _run_festival(todo, voice, folder)
    return [_load(folder / _cache_key(voice, t)) for t in texts]


def _run_festival(texts: list[str], voice: str, folder: Path) -> None:
    import soxr

    exe = check_festival((voice,))
    with tempfile.TemporaryDirectory(prefix="festival-") as tmp:
        lines = [f"({VOICES[voice][0]})"]
        for i, text in enumerate(texts):
            wav, words = Path(tmp, f"{i}.wav"), Path(tmp, f"{i}.txt")
            lines += [
                f"(set! utt (utt.synth (Utterance Text {_scheme_string(text)})))",
                f"(utt.save.wave utt {_scheme_string(str(wav))} 'riff)",
                f"(set! fd (fopen {_scheme_string(str(words))} \"w\"))",
                "(mapcar (lambda (w) (format fd \"%s\\t%f\\t%f\\n\" (item.name w) "
                "(item.feat w \"word_start\") (item.feat w \"word_end\"))) "
                "(utt.relation.items utt 'Word))",
                "(fclose fd)",
            ]
        script = Path(tmp, "batch.scm")
        script.write_text("\n".join(lines) + "\n")
        done = subprocess.run([exe, "--batch", str(script)], capture_output=True, text=True)
        for i, text in enumerate(texts):
            wav, words = Path(tmp, f"{i}.wav"), Path(tmp, f"{i}.txt")
            if not (wav.is_file() and words.is_file()):
                raise SpeechError(f"festival ({voice}) failed on {text!r}: "
                                  f"{(done.stderr or done.stdout).strip()[-200:]}")
            audio, rate = sf.read(str(wav), dtype="float32")
            if rate != SAMPLE_RATE:
                audio = soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)
            audio = (audio * (PEAK / max(float(np.abs(audio).max()), 1e-9))).astype(np.float32)
            duration = len(audio) / SAMPLE_RATE
            times = _word_times(words.read_text(), duration)
            key = folder / _cache_key(voice, text)
            atomic_write(key.with_suffix(".wav"), lambda p: sf.write(
                str(p), audio, SAMPLE_RATE, subtype="PCM_16", format="WAV"))
            write_text(key.with_suffix(".json"),
                       json.dumps({"voice": voice, "text": text, "words": times}))


def _word_times(rows: str, duration: float) -> list:
    """Festival's Word items as [word, start, end]. A clitic it splits off with no segments of
    its own ("Christ" + "'s", span 0–0) is joined back onto the word before it."""
    times = []
    for row in rows.splitlines():
        name, start, end = row.split("\t")
        start, end = round(min(float(start), duration), 4), round(min(float(end), duration), 4)
        if times and name.startswith("'") and end <= start:
            times[-1][0] += name
        elif name.strip() and end > start:
            times.append([name, start, end])
    return times


def trimmed(sentence: Sentence) -> Sentence:
    """The sentence cut to its words' span plus ``WORD_MARGIN_S`` each side (a word synthesised on
    its own carries Festival's utterance pauses), word times shifted to match."""
    if not sentence.words:
        return sentence
    start = max(0.0, sentence.words[0][1] - WORD_MARGIN_S)
    end = min(sentence.duration, sentence.words[-1][2] + WORD_MARGIN_S)
    a, b = int(round(start * SAMPLE_RATE)), int(round(end * SAMPLE_RATE))
    at = a / SAMPLE_RATE
    return Sentence(sentence.samples[a:b], tuple((w, round(s - at, 4), round(e - at, 4))
                                                 for w, s, e in sentence.words))


def _units(texts, voice: str, cache: Path, unit: str) -> list[Sentence]:
    out = synthesise(list(texts), voice, cache)
    return [trimmed(s) for s in out] if unit == "word" else out


@lru_cache(maxsize=8192)  # a word list is read back thousands of times per set
def _load(key: Path) -> Sentence:
    audio, _ = sf.read(str(key.with_suffix(".wav")), dtype="float32")
    words = json.loads(key.with_suffix(".json").read_text())["words"]
    return Sentence(audio, tuple((w, float(a), float(b)) for w, a, b in words))


# ---- conversations -----------------------------------------------------------------------------

@dataclass
class _Turn:
    speaker: int                # 0 = Moshi (left), 1 = user (right)
    texts: tuple[str, ...]
    start: float = 0.0
    end: float = 0.0
    repeat_of: int | None = None


class _FreshTurns:
    """One speaker's fresh turns, in a fixed order: consecutive sentences (at most
    ``MAX_TURN_SENTENCES`` and ``MAX_TURN_WORDS``) of a dictionary entry, no entry used twice."""

    def __init__(self, pool, entries: list[int], rng):
        self.pool, self.entries, self.rng, self.taken = pool, entries, rng, []

    def __getitem__(self, i: int) -> tuple[str, ...] | None:
        while len(self.taken) <= i and self.entries:
            entry = self.pool[self.entries.pop(0)]
            first = int(self.rng.integers(0, len(entry)))
            turn = [entry[first]]
            for s in entry[first + 1:first + int(self.rng.integers(1, MAX_TURN_SENTENCES + 1))]:
                if sum(len(x.split()) for x in turn) + len(s.split()) > MAX_TURN_WORDS:
                    break
                turn.append(s)
            self.taken.append(tuple(turn))
        return self.taken[i] if i < len(self.taken) else None

    def planned(self, words: float) -> list[str]:
        """Sentences of the first turns that hold about ``words`` words (to synthesise at once)."""
        out, i = [], 0
        while words > 0 and self[i] is not None:
            out += self[i]
            words -= sum(len(s.split()) for s in self[i])
            i += 1
        return out


class _WordTurns(_FreshTurns):
    """One speaker's fresh turns in unit ``word``: 3–8 words drawn uniformly from ``words``."""

    def __init__(self, words: list[str], rng):
        super().__init__(None, [], rng)
        self.words = words

    def __getitem__(self, i: int) -> tuple[str, ...]:
        while len(self.taken) <= i:
            n = int(self.rng.integers(WORD_TURN[0], WORD_TURN[1] + 1))
            self.taken.append(tuple(self.words[int(j)] for j in self.rng.integers(0, len(self.words), n)))
        return self.taken[i]


def write_conversations(directory, *, count: int, duration_s: float, recurrence: bool, seed: int,
                        recur_after_s: float = 10.0, recur_fraction: float = 0.5,
                        text_part: str = "all", voices: tuple[str, str] = DEFAULT_VOICES,
                        cache_dir=None, text_source: Path = TEXT_SOURCE, unit: str = "sentence",
                        vocabulary_size: int = 600) -> Path:
    """Write ``count`` stereo conversations of ``duration_s`` seconds into ``directory`` and return
    their manifest. Speakers alternate turns (1–3 sentences of one dictionary entry, 0.2–0.7 s gap,
    each turn starting on Mimi's 80 ms frame grid).
    With ``recurrence``, each turn starting past ``recur_after_s`` is, with probability
    ``recur_fraction``, a verbatim repeat (same speaker, same text, identical audio) of one of that
    speaker's fresh turns which ended more than ``recur_after_s`` earlier (each repeated at most
    once); without it, no entry (hence no sentence) occurs twice in a conversation. ``text_part``
    picks the entries (see ``text_entries``); ``unit`` the turns (module docstring; ``word``
    draws from the part's ``vocabulary_size`` most frequent words). Deterministic in ``seed``;
    sentences are cached in ``cache_dir`` (default DIRECTORY/sentences), and Festival is needed
    only for what the cache lacks. Manifest lines carry ``recurrent``: whether a turn repeats."""
    if (count < 1 or duration_s <= 0 or recur_after_s < 0 or not 0 <= recur_fraction <= 1
            or unit not in UNITS or vocabulary_size < 1):
        raise SpeechError(f"bad conversation settings: count={count}, duration_s={duration_s}, "
                          f"recur_after_s={recur_after_s}, recur_fraction={recur_fraction}, "
                          f"unit={unit!r}, vocabulary_size={vocabulary_size}")
    unknown = [v for v in voices if v not in VOICES]
    if unknown:
        raise SpeechError(f"unknown voice {unknown[0]!r} (known: {', '.join(VOICES)})")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else directory / "sentences"
    pool = passages(Path(text_source))
    entries = text_entries(pool, text_part)

    # 1. each conversation's fresh turns per speaker (disjoint entries), and one synthesis batch
    #    per voice for the turns the conversation will most likely use; more are made on demand
    words = vocabulary(pool, entries, vocabulary_size) if unit == "word" else None
    plans = []
    for index in range(count):
        if words is not None:
            plans.append([_WordTurns(words, np.random.default_rng([seed, index, s])) for s in (0, 1)])
            continue
        order = [entries[i] for i in np.random.default_rng([seed, index]).permutation(len(entries))]
        plans.append([_FreshTurns(pool, order[s::2], np.random.default_rng([seed, index, s]))
                      for s in (0, 1)])
    expected_words = 0.5 * duration_s * WORDS_PER_S * 1.2 + 10
    with ThreadPoolExecutor(len(voices)) as pool:  # one Festival process per voice, in parallel
        batches = [pool.submit(synthesise, words if words is not None else  # every word, once
                               [t for plan in plans for t in plan[s].planned(expected_words)],
                               voice, cache) for s, voice in enumerate(voices)]
        for batch in batches:
            batch.result()

    # 2. lay the turns out with their real durations
    lines = []
    for index, plan in enumerate(plans):
        name = (f"conversation{index:03d}-{duration_s:g}s-seed{seed}-{'rec' if recurrence else 'fresh'}"
                + ("-words" if unit == "word" else ""))
        turns = _layout(plan, voices, cache, duration_s, recurrence, recur_after_s,
                        recur_fraction, np.random.default_rng([seed, index, 2]), unit)
        if not turns:
            raise SpeechError(f"duration_s={duration_s}: too short for a single turn")
        _write_conversation(directory / f"{name}.wav", turns, voices, cache, duration_s, unit)
        lines.append(json.dumps({"path": f"{name}.wav", "duration": float(duration_s),
                                 "recurrent": any(t.repeat_of is not None for t in turns)}))
    manifest = directory / "manifest.jsonl"
    write_text(manifest, "\n".join(lines) + "\n")
    return manifest


def _layout(plan, voices, cache, duration_s, recurrence, recur_after_s, recur_fraction, rng,
            unit="sentence"):
    turns: list[_Turn] = []
    used = [0, 0]              # fresh turns taken per speaker
    repeated: set[int] = set()
    t, speaker = float(rng.uniform(0.1, 0.5)), 0
    while True:
        choice = None
        if recurrence and t >= recur_after_s and rng.random() < recur_fraction:
            sources = [i for i, tr in enumerate(turns) if tr.speaker == speaker
                       and tr.repeat_of is None and i not in repeated and tr.end < t - recur_after_s]
            if sources:
                choice = sources[int(rng.integers(len(sources)))]
        if choice is not None:
            texts = turns[choice].texts
        else:
            texts = plan[speaker][used[speaker]]
            if texts is None:  # the text ran out: the rest stays silent
                break
        length = sum(s.duration for s in _units(texts, voices[speaker], cache, unit))
        t = _on_frame(t)
        if t + length > duration_s:
            break
        if choice is None:
            used[speaker] += 1
        else:
            repeated.add(choice)
        turns.append(_Turn(speaker, texts, t, t + length, choice))
        t += length + float(rng.uniform(0.2, 0.7))
        speaker = 1 - speaker
    return turns


def _on_frame(t: float) -> float:
    """``t`` rounded up to Mimi's 80 ms frame grid: a repeated turn then starts at the same frame
    phase as its source, so a codec sees the same samples in the same frames."""
    samples = SAMPLE_RATE / FRAME_RATE
    return math.ceil(t * FRAME_RATE - 1e-9) * samples / SAMPLE_RATE


def _write_conversation(wav: Path, turns: list[_Turn], voices, cache, duration_s: float,
                        unit: str = "sentence") -> None:
    audio = np.zeros((int(round(duration_s * SAMPLE_RATE)), 2), dtype=np.float32)
    alignments = []
    for turn in turns:
        offset = int(round(turn.start * SAMPLE_RATE))
        for sentence in _units(turn.texts, voices[turn.speaker], cache, unit):
            audio[offset:offset + len(sentence.samples), turn.speaker] = sentence.samples
            at = offset / SAMPLE_RATE
            for word, start, end in sentence.words:
                alignments.append([word, [round(at + start, 4), round(at + end, 4)],
                                   MAIN if turn.speaker == 0 else OTHER])
            offset += len(sentence.samples)
    atomic_write(wav, lambda p: sf.write(str(p), audio, SAMPLE_RATE, subtype="PCM_16", format="WAV"))
    write_text(wav.with_suffix(".json"), json.dumps({"alignments": alignments}))
