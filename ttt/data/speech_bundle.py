"""The speech positive control's bundle: what a machine without Festival needs to rebuild the
spoken-word conversations of ``ttt.data.speech`` bit for bit, and the pieces its training needs.

Why: the GPU that trains the control has no Festival and no network, and the CPU that has
Festival encodes Mimi far too slowly (measured 2.6× real time per core for the random full-size
Mimi) to ship codes. So the bundle carries the synthesis cache itself (every word of the control's
word lists in both voices, losslessly as FLAC), the dictionary text and the tokenizer; the GPU
machine unpacks the cache (each wav checked against its sha256 here), runs ``python -m ttt speech``
on it (no Festival call: everything is cached) and encodes Mimi there (gpu/control/run_speech.sh).

Subcommands (``python -m ttt.data.speech_bundle``): ``pack``, ``unpack``, ``tokenizer``, ``base``
(the base checkpoint: tiny-random's Mimi + this tokenizer), ``merge`` (several manifests → one).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf

from ttt.data.conversations import SAMPLE_RATE

INDEX = "index.json"
CACHE_TAR = "cache.tar"
TEXT = "devil.dict.dz"
TOKENIZER = "tokenizer.model"
TOKENIZER_VOCAB = 1000


class BundleError(RuntimeError):
    """A bundle that cannot be used, in one line naming the file."""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack(cache_dir: str | os.PathLike, out: str | os.PathLike, text_source: str | os.PathLike,
         tokenizer: str | os.PathLike | None = None,
         expected: dict[str, str | os.PathLike] | None = None) -> Path:
    """``out``: cache.tar (each cached wav as FLAC, its json as is), index.json (sha256 of every
    wav and json, and the ``content_digest`` of each ``expected`` manifest built here, by name, so
    the machine that rebuilds them can tell it got the same conversations), the text source and
    the tokenizer."""
    cache, out = Path(cache_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index = {}
    tmp = out / f".{CACHE_TAR}.tmp{os.getpid()}"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for wav in sorted(cache.glob("*/*.wav")):
            rel = wav.relative_to(cache)
            meta = wav.with_suffix(".json")
            if not meta.is_file():
                raise BundleError(f"{meta}: missing beside {wav.name}")
            samples, rate = sf.read(str(wav), dtype="int16")
            if rate != SAMPLE_RATE:
                raise BundleError(f"{wav}: {rate} Hz, expected {SAMPLE_RATE}")
            buffer = io.BytesIO()
            sf.write(buffer, samples, rate, format="FLAC", subtype="PCM_16")
            _add(tar, str(rel.with_suffix(".flac")), buffer.getvalue())
            _add(tar, str(rel.with_suffix(".json")), meta.read_bytes())
            index[str(rel)] = _sha(wav.read_bytes())
            index[str(rel.with_suffix(".json"))] = _sha(meta.read_bytes())
    os.replace(tmp, out / CACHE_TAR)
    shutil.copyfile(text_source, out / TEXT)
    if tokenizer is not None:
        shutil.copyfile(tokenizer, out / TOKENIZER)
    content = {name: content_digest(path) for name, path in (expected or {}).items()}
    (out / INDEX).write_text(json.dumps({"files": index, "text_sha256": _sha((out / TEXT).read_bytes()),
                                         "expected_content_sha256": content}, indent=0) + "\n")
    return out


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def unpack(bundle: str | os.PathLike, cache_dir: str | os.PathLike) -> int:
    """Rebuild the synthesis cache from ``bundle`` into ``cache_dir``; every wav and json must
    hash as it did when packed (else BundleError). Returns the number of wavs."""
    bundle, cache = Path(bundle), Path(cache_dir)
    for name in (INDEX, CACHE_TAR, TEXT):
        if not (bundle / name).is_file():
            raise BundleError(f"{bundle / name}: missing from the bundle")
    index = json.loads((bundle / INDEX).read_text())
    expected = index["files"]
    if _sha((bundle / TEXT).read_bytes()) != index["text_sha256"]:
        raise BundleError(f"{bundle / TEXT}: sha256 differs from {INDEX}")
    count = 0
    with tarfile.open(bundle / CACHE_TAR) as tar:
        for member in tar.getmembers():
            rel = Path(member.name)
            if rel.is_absolute() or ".." in rel.parts or not member.isfile():
                raise BundleError(f"{bundle / CACHE_TAR}: unsafe member {member.name!r}")
            data = tar.extractfile(member).read()
            target = cache / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if rel.suffix == ".flac":
                samples, rate = sf.read(io.BytesIO(data), dtype="int16")
                target = target.with_suffix(".wav")
                sf.write(str(target), samples, rate, subtype="PCM_16", format="WAV")
                count += 1
            else:
                target.write_bytes(data)
            key = str(target.relative_to(cache))
            if expected.get(key) != _sha(target.read_bytes()):
                raise BundleError(f"{target}: sha256 differs from the bundle's {INDEX} ({key})")
    missing = [k for k in expected if not (cache / k).is_file()]
    if missing:
        raise BundleError(f"{bundle / CACHE_TAR}: lacks {missing[0]} (and {len(missing) - 1} more)")
    return count


def train_tokenizer(text_source: str | os.PathLike, out: str | os.PathLike,
                    vocab_size: int = TOKENIZER_VOCAB) -> Path:
    """A sentencepiece unigram model of the dictionary's ``train`` part (lower case, as the
    word unit speaks it): held-out words never shaped it, they are cut into its pieces.
    Special ids as the tiny default's (unk 0, bos 1, eos 2, pad 3); single thread: deterministic."""
    import sentencepiece

    from ttt.data.speech import passages, text_entries

    pool = passages(Path(text_source))
    lines = [s.lower() for i in text_entries(pool, "train") for s in pool[i]]
    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buffer, vocab_size=vocab_size,
        model_type="unigram", hard_vocab_limit=False, unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        minloglevel=2, num_threads=1)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, out)
    return out


def build_base(out: str | os.PathLike, tokenizer: str | os.PathLike, lm_kwargs: dict,
               cache_root: str | os.PathLike) -> Path:
    """A base checkpoint for ``ttt train`` (``base: OUT``): tiny-random seed 0's Mimi (linked),
    ``tokenizer``, and a random LM of ``lm_kwargs`` (seed 0; text_card ≥ the tokenizer's size),
    so every loader reads it as a complete untrained model."""
    import sentencepiece
    import torch
    from moshi.models import loaders
    from safetensors.torch import save_file

    from ttt.moshi.layouts import UNTRAINED, project_config
    from ttt.moshi.tiny import DEFAULT_LM_KWARGS, build_tiny_checkpoint

    size = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer)).vocab_size()
    kwargs = {**DEFAULT_LM_KWARGS, **lm_kwargs}
    if kwargs["text_card"] < size:
        raise BundleError(f"lm_kwargs.text_card={kwargs['text_card']} < {size}, the size of {tokenizer}")
    random_dir = build_tiny_checkpoint(Path(cache_root) / "tiny-seed0", 0)
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    try:
        os.link(random_dir / "mimi.safetensors", out / "mimi.safetensors")
    except OSError:
        shutil.copyfile(random_dir / "mimi.safetensors", out / "mimi.safetensors")
    torch.manual_seed(0)
    lm = loaders.get_moshi_lm(None, lm_kwargs=kwargs, device="cpu", dtype=torch.float32)
    save_file({k: v.contiguous() for k, v in lm.state_dict().items()}, str(out / "model.safetensors"))
    shutil.copyfile(tokenizer, out / TOKENIZER)
    (out / "config.json").write_text(json.dumps(project_config(kwargs, UNTRAINED), indent=1) + "\n")
    return out


def merge(out: str | os.PathLike, manifests: list[str | os.PathLike]) -> Path:
    """One manifest.jsonl holding every line of ``manifests`` (paths rewritten relative to
    ``out``'s folder; other keys, e.g. ``recurrent``, kept)."""
    out = Path(out)
    lines = []
    for manifest in manifests:
        manifest = Path(manifest)
        for raw in manifest.read_text().splitlines():
            if raw.strip():
                entry = json.loads(raw)
                entry["path"] = os.path.relpath((manifest.parent / entry["path"]).resolve(),
                                                out.parent.resolve())
                lines.append(json.dumps(entry))
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out)
    return out


def content_digest(manifest: str | os.PathLike) -> str:
    """sha256 over the manifest's wav and alignment bytes, in order (path-independent)."""
    from ttt.data.conversations import read_manifest

    h = hashlib.sha256()
    for item in read_manifest(manifest):
        h.update(Path(item.path).read_bytes())
        h.update(Path(item.path).with_suffix(".json").read_bytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m ttt.data.speech_bundle", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="synthesis cache + text + tokenizer → bundle folder")
    p.add_argument("--cache", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--text-source", default="/usr/share/dictd/devil.dict.dz")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--expected", nargs="*", default=[], metavar="NAME=MANIFEST",
                   help="record the content digest of manifests built here")
    u = sub.add_parser("unpack", help="bundle → synthesis cache (sha256-checked)")
    u.add_argument("bundle")
    u.add_argument("--cache", required=True)
    t = sub.add_parser("tokenizer", help="train the speech tokenizer")
    t.add_argument("--text-source", default="/usr/share/dictd/devil.dict.dz")
    t.add_argument("--out", required=True)
    t.add_argument("--vocab-size", type=int, default=TOKENIZER_VOCAB)
    b = sub.add_parser("base", help="base checkpoint: tiny-random's Mimi + the speech tokenizer")
    b.add_argument("--out", required=True)
    b.add_argument("--tokenizer", required=True)
    b.add_argument("--lm-kwargs", default="{}", help="JSON object of LM kwargs")
    b.add_argument("--cache-root", default="results/cache/models")
    m = sub.add_parser("merge", help="manifests → one manifest")
    m.add_argument("--out", required=True)
    m.add_argument("manifests", nargs="+")
    d = sub.add_parser("digest", help="content sha256 of a manifest's conversations")
    d.add_argument("manifest")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            expected = dict(x.split("=", 1) for x in args.expected)
            print(pack(args.cache, args.out, args.text_source, args.tokenizer, expected))
        elif args.command == "unpack":
            print(unpack(args.bundle, args.cache), "wavs")
        elif args.command == "tokenizer":
            print(train_tokenizer(args.text_source, args.out, args.vocab_size))
        elif args.command == "base":
            print(build_base(args.out, args.tokenizer, json.loads(args.lm_kwargs), args.cache_root))
        elif args.command == "merge":
            print(merge(args.out, args.manifests))
        else:
            print(content_digest(args.manifest))
    except (BundleError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
