"""Scores over words, with no torch or moshi import (the ASR job uses them and must stay light):
the project's text normalisation, word error rate (Whisper's English normaliser + jiwer) and the
collapse indicators computed from words alone.

Digits: Whisper's normaliser turns spelled numbers into one number ("five five" → ``55``, "two
nine three four zero" → ``29340``), while a recogniser may write the digits apart (tiny.en hears
``5 5``). Left as it is, "five five" against "5 5" scores 200 %. So after the normaliser every
run of digits is split into single digits, on both sides alike: ``55`` and ``5 5`` both become
``5 5``, and a year such as 1990 counts as four words on either side.
"""
from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

_DIGIT_PAIR = re.compile(r"(?<=\d)(?=\d)")


@lru_cache(maxsize=1)
def _normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer
    return EnglishTextNormalizer()


def split_digits(text: str) -> str:
    """``"call 5550 now"`` → ``"call 5 5 5 0 now"`` (a space between every two adjacent digits)."""
    return _DIGIT_PAIR.sub(" ", text)


def normalize(text: str) -> str:
    """Whisper's English text normaliser (maintained package ``whisper-normalizer``), then digit
    runs split into single digits (module docstring: why)."""
    return " ".join(split_digits(_normalizer()(text)).split())


def word_errors(references: list[str], hypotheses: list[str]) -> dict:
    """WER over pairs after normalisation: ``wer``, ``substitutions``, ``deletions``,
    ``insertions``, ``ref_words``. Pairs whose normalised reference is empty count their
    hypothesis words as insertions (jiwer's ratio is undefined there); ``wer`` is None when no
    reference word exists at all."""
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"wer: {len(references)} references but {len(hypotheses)} hypotheses")
    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
    counts = dict(substitutions=0, deletions=0, insertions=0, ref_words=0)
    scored = [(r, h) for r, h in zip(refs, hyps) if r]
    for r, h in zip(refs, hyps):
        if not r:
            counts["insertions"] += len(h.split())
    if scored:
        out = jiwer.process_words([r for r, _ in scored], [h for _, h in scored])
        counts["substitutions"] += out.substitutions
        counts["deletions"] += out.deletions
        counts["insertions"] += out.insertions
        counts["ref_words"] = out.substitutions + out.deletions + out.hits
    errors = counts["substitutions"] + counts["deletions"] + counts["insertions"]
    return {"wer": errors / counts["ref_words"] if counts["ref_words"] else None, **counts}


def word_indicators(words: list[str], minutes: float) -> dict:
    """What tells a listener the model stopped talking sense, from words alone: speaking rate,
    lexical diversity (distinct-1/2) and the longest n-gram said twice."""
    def distinct(n: int) -> float | None:
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        return len(set(grams)) / len(grams) if grams else None

    longest = 0
    for n in range(1, min(len(words), 200) + 1):
        counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        if not counts or max(counts.values()) < 2:
            break
        longest = n
    return {"words_per_min": len(words) / minutes if minutes > 0 else None,
            "distinct_1": distinct(1), "distinct_2": distinct(2),
            "longest_repeated_ngram": longest}
