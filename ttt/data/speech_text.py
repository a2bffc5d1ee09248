"""The text of the synthesised conversations: *The Devil's Dictionary* (Ambrose Bierce, 1911, public
domain; Debian ``dict-devil``) as speakable sentences, split into disjoint train / held-out parts,
and the word list of unit ``word`` (docs/speech-data.md)."""
from __future__ import annotations

import gzip
import hashlib
import re
from functools import lru_cache
from pathlib import Path

TEXT_SOURCE = Path("/usr/share/dictd/devil.dict.dz")
HELDOUT_EVERY = 5     # text_part "heldout" = every 5th dictionary entry, "train" = the others
MAX_TURN_WORDS = 20
_WORD = re.compile(r"^[a-z]+(?:'[a-z]+)?$")


class SpeechError(RuntimeError):
    """A missing synthesiser/text package or a failed synthesis, in one line."""


_HEAD = re.compile(r"^([A-Z][A-Z'\- ]*[A-Z]), ((?:[a-z]+\.)+)\s+(.*)$", re.S)
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
_ALLOWED = re.compile(r"^[A-Za-z0-9 ,.;:'\"!?\-]+$")


@lru_cache(maxsize=4)
def passages(source: Path = TEXT_SOURCE) -> tuple[tuple[str, ...], ...]:
    """The dictionary's entries as lists of speakable sentences (verse and citations dropped)."""
    if not Path(source).is_file():
        raise SpeechError(f"{source}: text source missing (apt-get install dict-devil)")
    text = gzip.decompress(Path(source).read_bytes()).decode("latin-1")
    entries: list[list[str]] = []
    for block in re.split(r"\n\s*\n", text):
        if not block.strip() or block[0].isspace():  # verse, quotations, attributions
            continue
        para = " ".join(block.split())
        head = _HEAD.match(para)
        if head:
            word, _pos, body = head.groups()
            para = f"{word.capitalize()}: {body}"
            entries.append([])
        elif not entries:
            continue
        para = re.sub(r"\[[^\]]*\]", "", para).replace("{", "").replace("}", "")
        para = re.sub(r"(\w)- (\w)", r"\1-\2", para)  # words hyphenated across a line break
        for s in _SPLIT.split(para):
            s = " ".join(s.split())
            if _ALLOWED.match(s) and s[-1] in ".!?" and 3 <= len(s.split()) <= MAX_TURN_WORDS:
                entries[-1].append(s)
    return tuple(tuple(e) for e in entries if e)


def vocabulary(pool, entries: list[int], size: int) -> list[str]:
    """The ``size`` most frequent words of ``entries`` (lower case, letters with at most one
    apostrophe; ties in a fixed pseudo-random order, not alphabetical), the word list of unit
    ``word``."""
    counts: dict[str, int] = {}
    for i in entries:
        for sentence in pool[i]:
            for token in sentence.split():
                word = token.strip(".,;:!?\"'-").lower()
                if _WORD.match(word):
                    counts[word] = counts.get(word, 0) + 1
    return sorted(counts, key=lambda w: (-counts[w], hashlib.sha256(w.encode()).digest()))[:size]



def text_entries(pool, text_part: str) -> list[int]:
    """Indices of the entries of ``text_part``: ``all``, or the disjoint ``train`` / ``heldout``
    parts, so held-out conversations hold no sentence a model was trained on."""
    if text_part not in ("all", "train", "heldout"):
        raise SpeechError(f"text_part {text_part!r}: expected all, train or heldout")
    keep = {"all": lambda i: True, "heldout": lambda i: i % HELDOUT_EVERY == HELDOUT_EVERY - 1,
            "train": lambda i: i % HELDOUT_EVERY != HELDOUT_EVERY - 1}[text_part]
    return [i for i in range(len(pool)) if keep(i)]
