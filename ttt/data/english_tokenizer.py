"""A text tokenizer that covers ordinary English, and a base checkpoint that carries it.

Why: the tiny models' tokenizer was trained on the 35 demo words. On the held-out natural
conversations' sentences (WordNet's examples, ``ttt.data.natural``) it gives 5.4 pieces a word,
8.4 % of them unknown, and 40 % of words hold an unknown piece: a model trained with it cannot
tell English sentences apart, so their recurrence cannot show in its text stream (issue 24 item
4). This one is a sentencepiece unigram model trained on the ``train`` part of the WordNet
sentences only (the held-out part stays unseen), single-threaded so the same sentences give the
same bytes on any machine.

``python -m ttt.data.english_tokenizer --base tiny-random --out DIR`` writes DIR: the base's files
with ``tokenizer.model`` replaced, ``config.json``'s ``text_card`` set to the vocabulary, random
LM weights of that vocabulary (``model.safetensors``; a base is trained from scratch), and
``tokenizer.json`` (provenance, digest, coverage of the held-out part beside the base's).
"""
from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import sentencepiece

from ttt.data.natural import WORDNET, example_sentences

VOCAB_SIZE = 1000
SPECIAL = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=3)  # the demo tokenizer's ids, as moshi reads them


def train_english_tokenizer(sentences: list[str], vocab_size: int = VOCAB_SIZE) -> bytes:
    """A unigram sentencepiece model of ``sentences`` (bytes); deterministic: one thread, fixed
    input order, every character kept."""
    if len(sentences) < 100:
        raise ValueError(f"{len(sentences)} sentences: too few to train an English tokenizer")
    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=buffer, vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, minloglevel=2, num_threads=1, **SPECIAL)
    return buffer.getvalue()


def coverage(model: bytes | sentencepiece.SentencePieceProcessor, sentences: list[str]) -> dict:
    """How well a tokenizer covers ``sentences``: pieces per word, the share of pieces that are
    unknown, the share of words holding an unknown piece."""
    sp = model if isinstance(model, sentencepiece.SentencePieceProcessor) else \
        sentencepiece.SentencePieceProcessor(model_proto=model)
    unk = sp.unk_id()
    words = [w for s in sentences for w in s.split()]
    pieces = [sp.encode(s) for s in sentences]
    total = sum(len(p) for p in pieces)
    return {"sentences": len(sentences), "words": len(words), "vocab_size": sp.vocab_size(),
            "pieces_per_word": round(total / max(len(words), 1), 4),
            "unknown_piece_share": round(sum(i == unk for p in pieces for i in p) / max(total, 1), 6),
            "words_with_unknown_share": round(sum(unk in sp.encode(w) for w in words) / max(len(words), 1), 6)}


def write_english_base(base_dir: Path, out: Path, vocab_size: int = VOCAB_SIZE,
                       wordnet: Path = WORDNET) -> dict:
    """``out``: ``base_dir``'s files with the English tokenizer (built beside, renamed into place);
    returns what ``tokenizer.json`` records."""
    import hashlib

    config_path = base_dir / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{config_path}: the base needs a config.json (a project-layout checkpoint)")
    model = train_english_tokenizer(example_sentences(wordnet, "train"), vocab_size)
    held_out = example_sentences(wordnet, "heldout")
    before = base_dir / "tokenizer.model"
    info = {"source": "WordNet 3.0 example sentences, train part (ttt.data.natural)",
            "vocab_size": vocab_size, "tokenizer_sha256": hashlib.sha256(model).hexdigest(),
            "heldout_coverage": coverage(model, held_out),
            "base": str(base_dir),
            "base_heldout_coverage": coverage(before.read_bytes(), held_out) if before.is_file() else None}
    config = json.loads(config_path.read_text())
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in base_dir.iterdir():
        if f.is_file() and f.name not in ("tokenizer.model", "config.json", "tokenizer.json"):
            shutil.copyfile(f, tmp / f.name)
    (tmp / "tokenizer.model").write_bytes(model)
    _set_text_card(config, vocab_size)
    (tmp / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    (tmp / "tokenizer.json").write_text(json.dumps(info, indent=1) + "\n")
    _random_lm_weights(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return info


def _random_lm_weights(directory: Path, seed: int = 0) -> None:
    """Random LM weights of the new text vocabulary, so the folder stays a loadable checkpoint
    (the base's own weights have the old vocabulary's embeddings; a base is trained from scratch)."""
    import torch
    from moshi.models import loaders
    from safetensors.torch import save_file

    from ttt.moshi.layouts import read_directory

    torch.manual_seed(seed)
    lm = loaders.get_moshi_lm(None, lm_kwargs=read_directory(directory).lm_kwargs, device="cpu",
                              dtype=torch.float32)
    save_file({k: v.contiguous() for k, v in lm.state_dict().items()}, str(directory / "model.safetensors"))


def _set_text_card(config: dict, vocab_size: int) -> None:
    """The LM's text vocabulary follows the tokenizer (moshi's config.json holds the LM kwargs at
    its top level; a project config may nest them under ``lm_kwargs``)."""
    (config["lm_kwargs"] if isinstance(config.get("lm_kwargs"), dict) else config)["text_card"] = vocab_size


def main(argv: list[str] | None = None) -> int:
    import argparse

    from ttt.moshi.model import resolve_model

    parser = argparse.ArgumentParser(prog="python -m ttt.data.english_tokenizer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="tiny-random", help="checkpoint folder or tiny name")
    parser.add_argument("--out", required=True, help="new base checkpoint folder")
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    parser.add_argument("--cache-dir", default="results/cache")
    args = parser.parse_args(argv)
    try:
        base = Path(resolve_model(args.base, Path(args.cache_dir) / "models"))
        info = write_english_base(base, Path(args.out), args.vocab_size)
    except (ValueError, OSError) as exc:
        parser.exit(2, f"error: {exc}\n")
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
