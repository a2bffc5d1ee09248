"""``ttt speech``: two-speaker conversations from Festival voices (docs/speech-data.md)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ttt.cli.common import bad_input, example


def speech_command(args: argparse.Namespace) -> int:
    """Exit 0 written, 2 for bad settings or a missing synthesiser/text package (one line)."""
    from ttt.data.speech import SpeechError, write_conversations
    try:
        manifest = write_conversations(args.out, count=args.count, duration_s=args.duration,
                                       recurrence=args.recurrence, seed=args.seed,
                                       recur_after_s=args.recur_after,
                                       recur_fraction=args.recur_fraction,
                                       text_part=args.text_part, cache_dir=args.cache,
                                       unit=args.unit, vocabulary_size=args.vocabulary_size,
                                       **({"text_source": Path(args.text_source)}
                                          if args.text_source else {}))
    except SpeechError as exc:
        return bad_input(exc, stdout=True)
    print(manifest)
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser(
        "speech", help="synthesise two-speaker conversations (Festival voices, public-domain text)",
        description="Write COUNT stereo 24 kHz conversations with word alignments in "
                    "moshi-finetune's layout (OUT/manifest.jsonl); see docs/speech-data.md. "
                    "Exit codes: 0 written, 2 bad settings or missing Debian packages.",
        epilog=example("python -m ttt speech --out results/data/speech/demo --count 2 "
                       "--duration 60 --recurrence"))
    s.add_argument("--out", required=True, help="output folder (manifest.jsonl, wavs, alignments)")
    s.add_argument("--count", type=int, required=True, help="number of conversations")
    s.add_argument("--duration", type=float, required=True, help="length of each (s)")
    s.add_argument("--seed", type=int, default=0, help="seed of the set (text, turns, gaps)")
    s.add_argument("--recurrence", action="store_true",
                   help="repeat earlier turns verbatim more than --recur-after seconds later")
    s.add_argument("--recur-after", type=float, default=10.0, help="minimum recurrence distance (s)")
    s.add_argument("--recur-fraction", type=float, default=0.5,
                   help="probability that a turn past --recur-after is a repeat")
    s.add_argument("--text-part", choices=["all", "train", "heldout"], default="all",
                   help="dictionary entries used: all, or the disjoint train / heldout parts")
    s.add_argument("--unit", choices=["sentence", "word"], default="sentence",
                   help="turns of 1-3 dictionary sentences, or of 3-8 random words of the part")
    s.add_argument("--vocabulary-size", type=int, default=600,
                   help="--unit word: the part's N most frequent words")
    s.add_argument("--cache", default=None, help="sentence cache (default OUT/sentences)")
    s.add_argument("--text-source", default=None,
                   help="the dictionary (default /usr/share/dictd/devil.dict.dz, Debian dict-devil)")
    s.set_defaults(func=speech_command)
