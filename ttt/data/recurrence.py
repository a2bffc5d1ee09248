"""Recurrence placed at known offsets, in Mimi codes: a span of a conversation's frames copied
``offset`` frames later, exactly, in shuffled order, or replaced by fresh content.

Why codes and not audio: a copy made in code space lands exactly where its record says (no
encoder context smears its edges, no frame phase to keep), the same construction serves training
(random repeats spliced into each batch, ``TrainConfig.recurrence``) and the test sets, and any
set of encoded conversations (word tones, speech) becomes a recurrence test without re-encoding.

A test set (:func:`build_offset_set`) crops every held-out conversation to a common length ``T``
and puts the copy at the same place, the last ``length`` frames ``[T - length, T)``, for every
offset: what changes between offsets is only how far back the source lies
(``[T - length - offset, T - offset)``), so positional effects are equal across offsets. Three
kinds per offset, same splicing, same positions:

- ``exact``: the source frames, all 17 streams (text and both speakers' audio);
- ``shuffled``: the same frames in blocks of ``SHUFFLE_BLOCK`` frames, permuted (same content,
  other order: a model that recalls order gains less);
- ``fresh``: the same span of another conversation (new content: nothing to recall).

The manifest (``manifest.json``) names each row's conversation, kind, offset and spans, and the
sha256 of the codes file, so a reader can check placement (tests do) without trusting this code.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

KINDS = ("exact", "shuffled", "fresh")
SHUFFLE_BLOCK = 4  # frames (320 ms, about one word) moved together in a shuffled copy
SET_CODES, SET_MANIFEST = "codes.safetensors", "manifest.json"


def shuffled_blocks(length: int, rng: np.random.Generator) -> np.ndarray:
    """Frame order of a shuffled copy: blocks of ``SHUFFLE_BLOCK`` frames in a permutation that
    moves at least one block (the identity would be an exact copy)."""
    blocks = [np.arange(i, min(i + SHUFFLE_BLOCK, length)) for i in range(0, length, SHUFFLE_BLOCK)]
    if len(blocks) < 2:
        raise ValueError(f"a shuffled copy needs >= 2 blocks of {SHUFFLE_BLOCK} frames, got {length}")
    while True:
        order = rng.permutation(len(blocks))
        if (order != np.arange(len(blocks))).any():
            return np.concatenate([blocks[i] for i in order])


def splice(codes: torch.Tensor, source: int, offset: int, length: int, kind: str = "exact",
           other: torch.Tensor | None = None, order: np.ndarray | None = None) -> torch.Tensor:
    """A copy of ``codes`` [17, T] whose frames ``[source + offset, + length)`` are replaced:
    ``exact`` by ``codes[:, source:source + length]``, ``shuffled`` by those frames in ``order``,
    ``fresh`` by ``other[:, source:source + length]`` (another conversation)."""
    end = source + offset + length
    if source < 0 or offset < 1 or length < 1 or end > codes.shape[-1]:
        raise ValueError(f"splice: source {source}, offset {offset}, length {length} do not fit "
                         f"{codes.shape[-1]} frames")
    if kind == "exact":
        piece = codes[:, source:source + length]
    elif kind == "shuffled":
        piece = codes[:, source:source + length][:, torch.as_tensor(order)]
    elif kind == "fresh":
        piece = other[:, source:source + length]
    else:
        raise ValueError(f"splice: kind must be one of {KINDS}, got {kind!r}")
    out = codes.clone()
    out[:, source + offset:end] = piece
    return out


# ---- training: random exact repeats --------------------------------------------------------

def check_spec(spec: Mapping[str, Any] | None) -> None:
    """``recurrence`` of a training config: null, or ``{fraction, length: [lo, hi],
    offset: [lo, hi]}`` (frames). Raises ValueError naming the key."""
    if spec is None:
        return
    if not isinstance(spec, Mapping) or set(spec) != {"fraction", "length", "offset"}:
        raise ValueError("recurrence: must be null or {fraction, length: [lo, hi], offset: [lo, hi]}")
    fraction = spec["fraction"]
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 <= fraction <= 1:
        raise ValueError(f"recurrence.fraction: must be a number in [0, 1], got {fraction!r}")
    for key, least in (("length", 1), ("offset", 1)):
        pair = spec[key]
        if (not isinstance(pair, Sequence) or len(pair) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
                or not least <= pair[0] <= pair[1]):
            raise ValueError(f"recurrence.{key}: must be [lo, hi] integers, {least} <= lo <= hi, "
                             f"got {pair!r}")


def random_repeat(frames: int, spec: Mapping[str, Any], g: torch.Generator) -> tuple[int, int, int] | None:
    """(source, offset, length) of one random exact repeat in a row of ``frames`` frames, or None
    (with probability 1 - fraction, or when no offset of the range fits). Always draws the same
    number of values from ``g``, so the batches that follow do not depend on this row's outcome."""
    u, a, b, c = torch.rand(4, generator=g, dtype=torch.float64).tolist()
    length = spec["length"][0] + int(a * (spec["length"][1] - spec["length"][0] + 1))
    length = min(length, frames // 2)
    hi = min(spec["offset"][1], frames - length)
    if u >= spec["fraction"] or length < 1 or hi < spec["offset"][0]:
        return None
    offset = spec["offset"][0] + int(b * (hi - spec["offset"][0] + 1))
    source = int(c * (frames - length - offset + 1))
    return source, offset, length


def add_repeats(batch: torch.Tensor, spec: Mapping[str, Any] | None,
                g: torch.Generator) -> tuple[torch.Tensor, list]:
    """``batch`` [B, 17, L] with a random exact repeat spliced into each row drawn as recurrent;
    also the copy spans (start, end) per row (None for rows left as they were)."""
    if spec is None:
        return batch, [None] * batch.shape[0]
    rows, spans = [], []
    for row in batch:
        drawn = random_repeat(row.shape[-1], spec, g)
        if drawn is None:
            rows.append(row)
            spans.append(None)
            continue
        source, offset, length = drawn
        rows.append(splice(row, source, offset, length))
        spans.append((source + offset, source + offset + length))
    return torch.stack(rows), spans


# ---- the offset test sets ------------------------------------------------------------------

def build_offset_set(codes: list[torch.Tensor], names: list[str], offsets: Sequence[int],
                     length: int, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Rows [R, 17, T] (every conversation × offset × kind, T the shortest conversation) and the
    manifest describing each row. Deterministic from ``seed`` (the shuffled orders)."""
    if len(codes) < 2:
        raise ValueError("an offset set needs >= 2 conversations (fresh copies come from another)")
    frames = min(c.shape[-1] for c in codes)
    if length < 2 * SHUFFLE_BLOCK or max(offsets) + length > frames or min(offsets) < 1:
        raise ValueError(f"offsets {list(offsets)} with length {length} do not fit {frames} frames")
    rng = np.random.default_rng(seed)
    crop = [c[:, :frames] for c in codes]
    copy = (frames - length, frames)
    rows, records = [], []
    for i, conversation in enumerate(crop):
        other = (i + 1) % len(crop)
        for offset in offsets:
            source = frames - length - offset
            order = shuffled_blocks(length, rng)
            for kind in KINDS:
                rows.append(splice(conversation, source, offset, length, kind,
                                   other=crop[other], order=order))
                record = {"row": len(records), "conversation": i, "name": names[i],
                          "offset": int(offset), "kind": kind, "source": [source, source + length],
                          "copy": list(copy)}
                if kind == "fresh":
                    record["other"] = other
                if kind == "shuffled":
                    record["order"] = order.tolist()
                records.append(record)
    manifest = {"frames": frames, "length": length, "offsets": [int(o) for o in offsets],
                "kinds": list(KINDS), "shuffle_block": SHUFFLE_BLOCK, "seed": seed,
                "conversations": list(names), "rows": records}
    return torch.stack(rows), manifest


def write_offset_set(out: str | os.PathLike, rows: torch.Tensor, manifest: dict) -> Path:
    """``out/codes.safetensors`` (int32 codes) and ``out/manifest.json`` (with the codes' sha256),
    each written atomically."""
    from safetensors.torch import save_file

    from ttt.base.files import atomic_write, write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / SET_CODES,
                 lambda tmp: save_file({"codes": rows.to(torch.int32).contiguous()}, str(tmp)))
    manifest = {**manifest, "codes_sha256": hashlib.sha256((out / SET_CODES).read_bytes()).hexdigest()}
    write_text(out / SET_MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return out


def read_offset_set(directory: str | os.PathLike) -> tuple[torch.Tensor, dict]:
    """Rows [R, 17, T] (long) and manifest; refuses codes that are not the manifest's."""
    from safetensors.torch import load_file

    directory = Path(directory)
    try:
        manifest = json.loads((directory / SET_MANIFEST).read_text())
        data = (directory / SET_CODES).read_bytes()
    except (OSError, ValueError) as exc:
        raise ValueError(f"{directory}: not an offset set ({exc})") from None
    if hashlib.sha256(data).hexdigest() != manifest.get("codes_sha256"):
        raise ValueError(f"{directory / SET_CODES}: sha256 differs from {SET_MANIFEST}'s")
    return load_file(str(directory / SET_CODES))["codes"].long(), manifest


def main(argv: list[str] | None = None) -> int:
    """``build``: an offset set from a manifest's conversations (codes through the base's Mimi,
    cached as training caches them)."""
    import argparse

    from ttt.data.codes import TrainBase, load_codes
    from ttt.data.conversations import read_manifest
    from ttt.moshi.model import resolve_model

    parser = argparse.ArgumentParser(prog="python -m ttt.data.recurrence", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write an offset set (codes + manifest)")
    b.add_argument("--manifest", required=True, help="held-out conversations (moshi-finetune .jsonl)")
    b.add_argument("--base", default="tiny-random", help="model spec giving tokenizer and Mimi")
    b.add_argument("--cache-dir", default="results/cache")
    b.add_argument("--offsets", default="40,80,120,160,240,320,400", help="frames, comma-separated")
    b.add_argument("--length", type=int, default=32, help="frames copied")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    offsets = [int(x) for x in args.offsets.split(",")]
    directory = resolve_model(args.base, Path(args.cache_dir) / "models")
    codes = load_codes(args.manifest, TrainBase(args.base, directory, "cpu"), args.cache_dir)
    names = [item.path.name for item in read_manifest(args.manifest)]
    rows, manifest = build_offset_set(codes, names, offsets, args.length, args.seed)
    print(write_offset_set(args.out, rows, manifest), f"{len(rows)} rows of {rows.shape[-1]} frames")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
