"""The English tokenizer (ttt/data/english_tokenizer.py): deterministic, trained on the train part
of the WordNet sentences only, covering the held-out part where the demo tokenizer does not, and
a base checkpoint that carries it and loads. WordNet is a Debian package (wordnet-base), installed
by the fixture when missing and running as root; the tests skip with the reason otherwise."""
import json

import pytest
import sentencepiece
from conftest import apt_install_or_skip

from ttt.data import natural
from ttt.data.english_tokenizer import coverage, train_english_tokenizer, write_english_base
from ttt.moshi.tiny import train_demo_tokenizer


@pytest.fixture(scope="module")
def parts():
    apt_install_or_skip(("wordnet-base",), lambda: (natural.WORDNET / "data.noun").is_file(),
                        "wordnet-base")
    return natural.example_sentences(text_part="train"), natural.example_sentences(text_part="heldout")


def test_coverage_counts_pieces_and_unknowns_by_hand():
    """A tokenizer of the letters a-e and space: 'ab cd' is 2 words of known pieces; 'ax' holds
    one unknown piece (x was never seen)."""
    model = train_english_tokenizer(["abc de", "ed cba", "a b c d e"] * 40, vocab_size=12)
    sp = sentencepiece.SentencePieceProcessor(model_proto=model)
    ids = [sp.encode(s) for s in ("ab cd", "ax")]
    got = coverage(model, ["ab cd", "ax"])
    assert got["words"] == 3 and got["pieces_per_word"] == pytest.approx(sum(map(len, ids)) / 3, abs=1e-4)
    unknown = sum(i == sp.unk_id() for x in ids for i in x)
    assert unknown > 0 and got["unknown_piece_share"] == pytest.approx(unknown / sum(map(len, ids)), abs=1e-6)
    assert got["words_with_unknown_share"] == pytest.approx(1 / 3, abs=1e-6)


def test_english_tokenizer_is_deterministic_and_covers_unseen_sentences(parts):
    train, heldout = parts
    assert not set(map(natural.normalised, train)) & set(map(natural.normalised, heldout))
    first, second = train_english_tokenizer(train), train_english_tokenizer(list(train))
    assert first == second
    ours, demo = coverage(first, heldout), coverage(train_demo_tokenizer(), heldout)
    assert ours["vocab_size"] == 1000 and ours["words"] > 10_000
    assert ours["unknown_piece_share"] < 1e-3 and ours["pieces_per_word"] < 2.5
    assert demo["unknown_piece_share"] > 0.05 and demo["words_with_unknown_share"] > 0.3


def test_english_base_loads_with_the_vocabulary_as_text_card(parts, tmp_path):
    from ttt.moshi.model import load_checkpoint
    from ttt.moshi.tiny import build_tiny_checkpoint
    base = build_tiny_checkpoint(tmp_path / "tiny")
    info = write_english_base(base, tmp_path / "english", vocab_size=800)
    bundle = load_checkpoint(tmp_path / "english")
    assert bundle.tokenizer.vocab_size() == 800 == bundle.lm.text_card
    assert (tmp_path / "english" / "mimi.safetensors").read_bytes() == (base / "mimi.safetensors").read_bytes()
    recorded = json.loads((tmp_path / "english" / "tokenizer.json").read_text())
    assert recorded == info and info["base_heldout_coverage"]["vocab_size"] == 60
    assert info["heldout_coverage"]["unknown_piece_share"] < 1e-3
