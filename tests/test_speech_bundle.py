"""The speech control's data path (ttt/data/speech.py unit "word", ttt/data/speech_bundle.py):
spoken-word conversations, and their rebuild from a packed synthesis cache on a machine without
Festival, byte for byte (what gpu/control/run_speech.sh relies on)."""
import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from ttt.data import speech
from ttt.data import speech_bundle
from ttt.data.conversations import SAMPLE_RATE, read_manifest

WORDS = 12


def _installed() -> bool:
    return (shutil.which("festival") is not None and speech.TEXT_SOURCE.is_file()
            and all(folder.is_dir() for _, _, folder in speech.VOICES.values()))


needs_festival = pytest.mark.skipif(not _installed(), reason="Debian festival, voices or dict-devil "
                                    "missing (tests/test_speech.py installs them as root)")


def _build(directory, cache, recurrence=True, seed=5):
    return speech.write_conversations(directory, count=2, duration_s=20.0, recurrence=recurrence,
                                      seed=seed, recur_after_s=4.0, recur_fraction=0.7,
                                      text_part="heldout", cache_dir=cache, unit="word",
                                      vocabulary_size=WORDS)


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    if not _installed():
        pytest.skip("festival missing")
    root = tmp_path_factory.mktemp("words")
    return root, _build(root / "rec", root / "cache")


def _turns(item):
    """Maximal runs of one speaker's words (speakers alternate turns): (speaker, words, gaps)."""
    out = []
    for word, (start, end), spk in sorted(item.alignments, key=lambda a: a[1][0]):
        if out and out[-1][0] == spk:
            out[-1][1].append(word)
            out[-1][2].append(start - out[-1][3])
            out[-1][3] = end
        else:
            out.append([spk, [word], [], end])
    return [(spk, words, gaps) for spk, words, gaps, _ in out]


@needs_festival
def test_word_turns_draw_from_the_parts_word_list(words):
    _, manifest = words
    vocab = set(speech.vocabulary(speech.passages(), speech.text_entries(speech.passages(), "heldout"), WORDS))
    items = read_manifest(manifest)
    said = {w for item in items for w, _, _ in item.alignments}
    assert said <= vocab and len(said) > WORDS // 2
    turns = [t for item in items for t in _turns(item)]
    assert all(speech.WORD_TURN[0] <= len(words) <= speech.WORD_TURN[1] for _, words, _ in turns)
    # each word cut to its span ± WORD_MARGIN_S: words of a turn lie 2 margins apart, with none of
    # Festival's utterance pauses (≈ 0.2 s each side) left between them
    gaps = np.array([g for _, _, gs in turns for g in gs])
    assert np.allclose(gaps, 2 * speech.WORD_MARGIN_S, atol=0.01), (gaps.min(), gaps.max())


@needs_festival
def test_recurrent_flag_says_whether_a_turn_repeats(words, tmp_path):
    root, manifest = words
    flags = [json.loads(x)["recurrent"] for x in manifest.read_text().splitlines()]
    for item, flag in zip(read_manifest(manifest), flags):
        turns = [(spk, tuple(words)) for spk, words, _ in _turns(item)]
        assert flag == (len(set(turns)) < len(turns))
    assert any(flags)
    plain = _build(tmp_path / "plain", root / "cache", recurrence=False)
    assert not any(json.loads(x)["recurrent"] for x in plain.read_text().splitlines())
    # asked for, but no source lies far enough back in 20 s: the flag reports none
    never = speech.write_conversations(tmp_path / "never", count=2, duration_s=20.0, recurrence=True,
                                       seed=5, recur_after_s=25.0, text_part="heldout",
                                       cache_dir=root / "cache", unit="word", vocabulary_size=WORDS)
    assert not any(json.loads(x)["recurrent"] for x in never.read_text().splitlines())


@needs_festival
def test_packed_cache_rebuilds_the_same_conversations_without_festival(words, tmp_path, monkeypatch):
    root, manifest = words
    bundle = speech_bundle.pack(root / "cache", tmp_path / "bundle", speech.TEXT_SOURCE,
                                expected={"rec": manifest})
    cache = tmp_path / "cache"
    assert speech_bundle.unpack(bundle, cache) == len(list((root / "cache").glob("*/*.wav")))
    monkeypatch.setattr(speech.shutil, "which", lambda name: None)  # no Festival from here on
    speech._load.cache_clear()
    rebuilt = _build(tmp_path / "rec", cache)
    index = json.loads((bundle / "index.json").read_text())
    assert speech_bundle.content_digest(rebuilt) == index["expected_content_sha256"]["rec"]
    with pytest.raises(speech.SpeechError, match="festival not found"):  # a word not in the cache
        speech.synthesise(["zebra"], "slt", cache)


def test_unpack_refuses_a_changed_wav(tmp_path):
    cache = tmp_path / "cache" / "slt"
    cache.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        sf.write(str(cache / f"{name}.wav"), (0.1 * rng.standard_normal(2400)).astype(np.float32),
                 SAMPLE_RATE, subtype="PCM_16", format="WAV")
        (cache / f"{name}.json").write_text(json.dumps({"words": [["x", 0.0, 0.1]]}))
    (tmp_path / "text.dz").write_bytes(b"any text source")
    bundle = speech_bundle.pack(tmp_path / "cache", tmp_path / "bundle", tmp_path / "text.dz")
    out = tmp_path / "out"
    assert speech_bundle.unpack(bundle, out) == 2
    assert (out / "slt" / "a.wav").read_bytes() == (cache / "a.wav").read_bytes()
    index = json.loads((bundle / "index.json").read_text())
    index["files"]["slt/b.wav"] = "0" * 64
    (bundle / "index.json").write_text(json.dumps(index))
    with pytest.raises(speech_bundle.BundleError, match="b.wav: sha256 differs"):
        speech_bundle.unpack(bundle, tmp_path / "out2")
    assert speech_bundle.main(["unpack", str(bundle), "--cache", str(tmp_path / "out3")]) == 2


def test_merge_rewrites_paths_and_keeps_flags(tmp_path):
    for name, flag in (("rec", True), ("plain", False)):
        (tmp_path / name).mkdir()
        sf.write(str(tmp_path / name / "c.wav"), np.zeros((2400, 2), np.float32), SAMPLE_RATE)
        (tmp_path / name / "c.json").write_text(json.dumps({"alignments": []}))
        (tmp_path / name / "manifest.jsonl").write_text(
            json.dumps({"path": "c.wav", "duration": 0.1, "recurrent": flag}) + "\n")
    merged = speech_bundle.merge(tmp_path / "all.jsonl", [tmp_path / "rec" / "manifest.jsonl",
                                                          tmp_path / "plain" / "manifest.jsonl"])
    lines = [json.loads(x) for x in merged.read_text().splitlines()]
    assert [x["path"] for x in lines] == ["rec/c.wav", "plain/c.wav"]
    assert [x["recurrent"] for x in lines] == [True, False]
    assert [i.path.parent.name for i in read_manifest(merged)] == ["rec", "plain"]


@pytest.mark.skipif(not speech.TEXT_SOURCE.is_file(), reason="Debian dict-devil missing")
def test_the_base_is_a_complete_checkpoint_with_the_speech_tokenizer(tmp_path, cache):
    from ttt.moshi.model import inspect_checkpoint

    a = speech_bundle.train_tokenizer(speech.TEXT_SOURCE, tmp_path / "a.model", vocab_size=300)
    with pytest.raises(speech_bundle.BundleError, match="text_card=64 < 300"):
        speech_bundle.build_base(tmp_path / "base", a, {"text_card": 64}, cache / "models")
    base = speech_bundle.build_base(tmp_path / "base", a, {"text_card": 300}, cache / "models")
    sources = inspect_checkpoint(base)  # every tensor header against the config, the tokenizer
    assert sources.lm_kwargs["text_card"] == 300
    assert sources.mimi.read_bytes() == (cache / "models" / "tiny-seed0" / "mimi.safetensors").read_bytes()
