"""Held-out natural two-speaker English conversations, to try a model as a new user would.

Why: the embedded default was trained on word-tone conversations of 35 words; whether its TTT
helps or hurts on ordinary English speech is a separate question (issue 24 item 6). Text: the
example sentences of WordNet 3.0 (Debian ``wordnet-base``, Princeton's WordNet licence, free):
everyday English with names, numbers and errands ("Can you fit the toy into the box?"), split
into disjoint ``train`` / ``heldout`` parts as the speech control's text is. Voices and synthesis:
Festival's, as ``ttt.data.speech`` (slt on Moshi's channel, kal on the user's).

Two kinds, deterministic in ``seed``: ``plain`` conversations never say a sentence twice;
``recurrent`` ones repeat whole turns of the same speaker verbatim (bit-identical audio) more than
``recur_after_s`` after the source turn ended, beyond a 4-layer × 32-frame model's reach (10.24 s).
Every manifest line lists its turns (speaker, start, end, sentences, ``repeat_of``), so a test or
an analysis knows where each repeat and its source sit.
"""
from __future__ import annotations

import json
import math
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ttt.base.files import write_text
from ttt.data.conversations import FRAME_RATE, MAIN, OTHER, SAMPLE_RATE
from ttt.data.demo import write_conversation
from ttt.data.speech import DEFAULT_VOICES, synthesise
from ttt.data.speech_text import SpeechError

WORDNET = Path("/usr/share/wordnet")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
KINDS = ("recurrent", "plain")
HELDOUT_EVERY = 5          # heldout = every 5th sentence of the sorted pool, train = the rest
SENTENCE_WORDS = (5, 16)   # words per sentence kept
TURN_SENTENCES = (1, 2)    # sentences per turn
GAP_S = (0.2, 0.7)         # silence between turns
_QUOTED = re.compile(r'"([^"]+)"')
_SPEAKABLE = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'!?\-]*[A-Za-z0-9.!?]$")


def example_sentences(folder: Path = WORDNET, text_part: str = "heldout") -> list[str]:
    """WordNet's quoted usage examples that read as a sentence (capital first, plain characters,
    5–16 words), each once, sorted; ``text_part`` ``train`` / ``heldout`` / ``all``."""
    if text_part not in ("all", "train", "heldout"):
        raise SpeechError(f"text_part {text_part!r}: expected all, train or heldout")
    missing = [f for f in WORDNET_FILES if not (Path(folder) / f).is_file()]
    if missing:
        raise SpeechError(f"{Path(folder) / missing[0]}: WordNet missing (apt-get install wordnet-base)")
    seen: dict[str, str] = {}
    for name in WORDNET_FILES:
        for line in (Path(folder) / name).read_text(encoding="latin-1").splitlines():
            if line.startswith(" ") or "|" not in line:
                continue
            for quote in _QUOTED.findall(line.split("|", 1)[1]):
                text = " ".join(quote.split()).rstrip(";,: ")
                if not _SPEAKABLE.match(text):
                    continue
                if not SENTENCE_WORDS[0] <= len(text.split()) <= SENTENCE_WORDS[1]:
                    continue
                text = text if text[-1] in ".!?" else text + "."
                seen.setdefault(normalised(text), text)
    pool = [seen[k] for k in sorted(seen)]
    if text_part == "all":
        return pool
    held = text_part == "heldout"
    return [s for i, s in enumerate(pool) if (i % HELDOUT_EVERY == HELDOUT_EVERY - 1) == held]


def normalised(sentence: str) -> str:
    """A sentence's words, lower case, without punctuation: two sentences equal here are one."""
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", sentence.lower()).split())


def _on_frame(t: float) -> float:
    """``t`` rounded up to Mimi's 80 ms frame grid (a repeat then has its source's frame phase)."""
    return math.ceil(t * FRAME_RATE - 1e-9) / FRAME_RATE


def plan_turns(durations, rng, order: list[str], *, duration_s: float, recurrent: bool,
               recur_after_s: float, recur_fraction: float) -> list[dict]:
    """Alternating turns of 1–2 fresh sentences taken from ``order`` in turn (so each at most
    once), frame-aligned, until
    ``duration_s``; with ``recurrent``, a turn starting past ``recur_after_s`` is with probability
    ``recur_fraction`` a repeat of one of its speaker's fresh turns that ended more than
    ``recur_after_s`` before (each repeated once). ``durations(texts, speaker)``: seconds spoken."""
    turns, repeated, t, speaker = [], set(), _on_frame(float(rng.uniform(0.1, 0.5))), 0
    while True:
        source = None
        if recurrent and t >= recur_after_s and rng.random() < recur_fraction:
            sources = [i for i, turn in enumerate(turns) if turn["speaker"] == speaker
                       and turn["repeat_of"] is None and i not in repeated
                       and turn["end"] < t - recur_after_s]
            if sources:
                source = sources[int(rng.integers(len(sources)))]
        if source is not None:
            texts = turns[source]["sentences"]
        else:
            count = int(rng.integers(TURN_SENTENCES[0], TURN_SENTENCES[1] + 1))
            texts, order = order[:count], order[count:]
            if not texts:
                break
        length = durations(texts, speaker)
        if t + length > duration_s:
            break
        if source is not None:
            repeated.add(source)
        turns.append({"speaker": speaker, "start": round(t, 4), "end": round(t + length, 4),
                      "sentences": list(texts), "repeat_of": source})
        t = _on_frame(t + length + float(rng.uniform(*GAP_S)))
        speaker = 1 - speaker
    return turns


def write_natural_set(directory, *, count: int, duration_s: float, seed: int,
                      recur_after_s: float = 12.0, recur_fraction: float = 0.5,
                      text_part: str = "heldout", voices=DEFAULT_VOICES, cache_dir=None,
                      wordnet: Path = WORDNET) -> Path:
    """``count`` recurrent and ``count`` plain conversations of ``duration_s`` seconds in
    ``directory`` and their manifest.jsonl (moshi-finetune lines plus ``kind``, ``recurrent``
    and ``turns``; ``manifest-recurrent.jsonl`` / ``manifest-plain.jsonl`` hold each kind alone).
    Sentences are cached per voice in ``cache_dir`` (default DIRECTORY/sentences)."""
    if count < 1 or duration_s <= recur_after_s or recur_after_s < 0 or not 0 <= recur_fraction <= 1:
        raise SpeechError(f"bad natural set: count={count}, duration_s={duration_s}, "
                          f"recur_after_s={recur_after_s}, recur_fraction={recur_fraction}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else directory / "sentences"
    sentences = example_sentences(wordnet, text_part)
    likely = int(duration_s / 2.5) + 4  # sentences a conversation most likely uses (about 3 s each)

    def spoken(texts, speaker):
        return synthesise(list(texts), voices[speaker], cache)

    def durations(texts, speaker):
        return sum(len(s.samples) for s in spoken(texts, speaker)) / SAMPLE_RATE

    lines = []
    for k, kind in enumerate(KINDS):
        for index in range(count):
            rng = np.random.default_rng([seed, k, index])
            order = [sentences[int(i)] for i in rng.permutation(len(sentences))]
            distinct = sorted(set(voices))  # one batch per voice (a voice may speak both channels)
            with ThreadPoolExecutor(len(distinct)) as pool:  # the likely sentences
                list(pool.map(lambda v: synthesise(order[:likely], v, cache), distinct))
            turns = plan_turns(durations, rng, order, duration_s=duration_s,
                               recurrent=kind == "recurrent", recur_after_s=recur_after_s,
                               recur_fraction=recur_fraction)
            name = f"natural-{kind}{index:02d}-{duration_s:g}s-seed{seed}.wav"
            audio = np.zeros((int(round(duration_s * SAMPLE_RATE)), 2), dtype=np.float32)
            alignments = []
            for turn in turns:
                at = int(round(turn["start"] * SAMPLE_RATE))
                for sentence in spoken(turn["sentences"], turn["speaker"]):
                    audio[at:at + len(sentence.samples), turn["speaker"]] = sentence.samples
                    alignments += [[w, [round(at / SAMPLE_RATE + a, 4), round(at / SAMPLE_RATE + b, 4)],
                                    MAIN if turn["speaker"] == 0 else OTHER]
                                   for w, a, b in sentence.words]
                    at += len(sentence.samples)
            write_conversation(directory / name, audio, alignments)
            lines.append({"path": name, "duration": float(duration_s), "kind": kind,
                          "recurrent": any(t["repeat_of"] is not None for t in turns),
                          "turns": turns})
    for kind in KINDS:  # one manifest per kind too: a cell over either alone
        write_text(directory / f"manifest-{kind}.jsonl",
                   "".join(json.dumps(line) + "\n" for line in lines if line["kind"] == kind))
    manifest = directory / "manifest.jsonl"
    write_text(manifest, "".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m ttt.data.natural", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the wavs and manifest.jsonl")
    parser.add_argument("--count", type=int, default=6, help="conversations of each kind")
    parser.add_argument("--duration", type=float, default=72.0, help="seconds per conversation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recur-after", type=float, default=12.0,
                        help="a repeat starts more than this many seconds after its source ended")
    parser.add_argument("--recur-fraction", type=float, default=0.5)
    parser.add_argument("--text-part", default="heldout", choices=("heldout", "train", "all"))
    parser.add_argument("--cache-dir", default=None, help="sentence cache (default OUT/sentences)")
    parser.add_argument("--voices", nargs=2, default=list(DEFAULT_VOICES), metavar=("MOSHI", "USER"),
                        help="Festival voices of the two channels (default: slt kal, the held-out "
                             "voices; training sets: ked ked, voices the held-out set never uses)")
    args = parser.parse_args(argv)
    try:
        manifest = write_natural_set(args.out, count=args.count, duration_s=args.duration,
                                     seed=args.seed, recur_after_s=args.recur_after,
                                     recur_fraction=args.recur_fraction, text_part=args.text_part,
                                     cache_dir=args.cache_dir, voices=tuple(args.voices))
    except SpeechError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(manifest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
