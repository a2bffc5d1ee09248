"""Does the LM fit its codec and tokenizer? Checked from the config and tensor headers alone.

Every part of a checkpoint can be well-formed on its own (the LM's weights fit its config, Mimi's
keys are Mimi's) and still not work together: an LM whose ``card`` is not Mimi's codebook size
indexes out of its embedding (``IndexError`` in the first forward), a ``text_card`` below the
tokenizer's vocabulary does the same with text tokens, and an ``n_q`` that is not twice ``dep_q``
does not read the 1 + 2·codebooks streams of a two-speaker conversation (moshi's
``AssertionError (9, 17)``). Each would crash every cell after planning, on a cluster as GPU jobs;
:func:`check_architecture` says so in one line naming the key and both values, reading no weights.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

_FIRST = "quantizer.rvq_first.vq.layers.0._codebook.embedding_sum"
_REST = re.compile(r"quantizer\.rvq_rest\.vq\.layers\.(\d+)\._codebook\.embedding_sum")


def mimi_codebooks(shapes: Mapping[str, tuple]) -> tuple[int, int] | None:
    """(codebook size, codebook count) of Mimi from its tensor headers, None when unrecognised."""
    if _FIRST not in shapes:
        return None
    rest = {int(m.group(1)) for k in shapes if (m := _REST.fullmatch(k))}
    return int(shapes[_FIRST][0]), 1 + len(rest)


def check_architecture(lm_kwargs: Mapping, config: Path | str, mimi_shapes: Mapping[str, tuple],
                       mimi: Path | str, vocabulary: int, tokenizer: Path | str) -> None:
    """Raises ValueError (one line: the key, both values, the files) when the LM, Mimi and the
    tokenizer do not fit together."""
    card, text_card = lm_kwargs.get("card"), lm_kwargs.get("text_card")
    n_q, dep_q = lm_kwargs.get("n_q"), lm_kwargs.get("dep_q")
    codec = mimi_codebooks(mimi_shapes)
    if codec is not None and card != codec[0]:
        raise ValueError(f"{config}: card {card} but Mimi's codebooks have {codec[0]} bins "
                         f"({mimi}); the LM reads and writes Mimi's codes")
    if isinstance(text_card, int) and text_card < vocabulary:
        raise ValueError(f"{config}: text_card {text_card} is smaller than the tokenizer's "
                         f"vocabulary of {vocabulary} pieces ({tokenizer})")
    if isinstance(n_q, int) and isinstance(dep_q, int) and n_q != 2 * dep_q:
        raise ValueError(f"{config}: n_q {n_q} but dep_q {dep_q}: a two-speaker conversation is "
                         f"1 text + {dep_q} Moshi + {dep_q} user streams, n_q = {2 * dep_q}")
    if codec is not None and isinstance(dep_q, int) and dep_q > codec[1]:
        raise ValueError(f"{config}: dep_q {dep_q} but Mimi has {codec[1]} codebooks ({mimi})")
