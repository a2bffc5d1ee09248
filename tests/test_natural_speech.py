"""The held-out natural-conversation set (ttt/data/natural.py): its manifest says what it holds.
Repeats of a recurrent conversation sit where the manifest puts them (the same samples as their
source, beyond ``recur_after_s``), plain conversations say no sentence twice, the audio sounds
only inside the listed turns, the text parts are disjoint, and the set is deterministic.

Festival, its voices and WordNet (Debian packages) are installed by the fixture when missing and
running as root; the tests skip with the reason otherwise.
"""
import json
import shutil

import numpy as np
import pytest
from conftest import apt_install_or_skip

from ttt.data import natural, speech
from ttt.data.conversations import FRAME_RATE, SAMPLE_RATE, load_audio, read_manifest

PACKAGES = speech.DEBIAN_PACKAGES + ("wordnet-base",)
RECUR_AFTER = 10.0
DURATION = 40.0


def _installed() -> bool:
    return (shutil.which("festival") is not None and (natural.WORDNET / "data.noun").is_file()
            and all(folder.is_dir() for _, _, folder in speech.VOICES.values()))


@pytest.fixture(scope="module")
def festival():
    apt_install_or_skip(PACKAGES, _installed, "festival/voices/wordnet-base")


@pytest.fixture(scope="module")
def built(festival, tmp_path_factory):
    root = tmp_path_factory.mktemp("natural")
    manifest = natural.write_natural_set(root / "set", count=1, duration_s=DURATION, seed=5,
                                         recur_after_s=RECUR_AFTER, recur_fraction=1.0,
                                         cache_dir=root / "cache")
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    return root, manifest, lines


def _span(audio, speaker, start, end):
    return audio[speaker, int(round(start * SAMPLE_RATE)):int(round(end * SAMPLE_RATE))]


def test_manifest_reads_and_holds_both_kinds(built):
    _, manifest, lines = built
    items = read_manifest(manifest)
    assert [line["kind"] for line in lines] == ["recurrent", "plain"]
    assert [line["recurrent"] for line in lines] == [True, False]
    for kind in natural.KINDS:
        alone = [json.loads(x) for x in (manifest.parent / f"manifest-{kind}.jsonl").read_text().splitlines()]
        assert alone == [line for line in lines if line["kind"] == kind]
    for item in items:
        assert item.duration == DURATION and load_audio(item.path).shape[1] == DURATION * SAMPLE_RATE


def test_repeats_sit_where_the_manifest_says(built):
    root, _, lines = built
    repeats = 0
    for line in lines[:1]:
        audio = load_audio(root / "set" / line["path"])
        for turn in line["turns"]:
            if turn["repeat_of"] is None:
                continue
            source = line["turns"][turn["repeat_of"]]
            assert source["repeat_of"] is None and source["speaker"] == turn["speaker"]
            assert source["sentences"] == turn["sentences"]
            assert turn["start"] - source["end"] > RECUR_AFTER
            assert abs(turn["start"] * FRAME_RATE - round(turn["start"] * FRAME_RATE)) < 1e-6
            length = source["end"] - source["start"]  # starts lie on the frame grid, exactly
            here = _span(audio, turn["speaker"], turn["start"], turn["start"] + length)
            there = _span(audio, source["speaker"], source["start"], source["start"] + length)
            assert np.abs(here).max() > 0.1 and np.array_equal(here, there)
            repeats += 1
    assert repeats >= 2


def test_plain_conversations_say_no_sentence_twice(built):
    root, _, lines = built
    for line in lines[1:]:
        said = [natural.normalised(s) for turn in line["turns"] for s in turn["sentences"]]
        assert len(said) >= 8 and len(said) == len(set(said))
        assert all(turn["repeat_of"] is None for turn in line["turns"])
        audio = load_audio(root / "set" / line["path"])
        spans = [_span(audio, t["speaker"], t["start"], t["end"]) for t in line["turns"]]
        assert not any(np.array_equal(a, b) for i, a in enumerate(spans) for b in spans[:i])


def test_audio_sounds_inside_the_listed_turns_only(built):
    root, _, lines = built
    for line in lines:
        audio = load_audio(root / "set" / line["path"])
        silent = np.ones(audio.shape, dtype=bool)
        for turn in line["turns"]:
            assert np.abs(_span(audio, turn["speaker"], turn["start"], turn["end"])).max() > 0.1
            a, b = (int(round(x * SAMPLE_RATE)) for x in (turn["start"], turn["end"]))
            silent[turn["speaker"], a:b + 1] = False
        assert not np.any(audio[silent])


def test_text_parts_are_disjoint_and_deterministic(built, tmp_path):
    root, manifest, _ = built
    held, train = (set(map(natural.normalised, natural.example_sentences(text_part=p)))
                   for p in ("heldout", "train"))
    assert len(held) > 1000 and len(train) > 4 * len(held) - 100 and not held & train
    again = natural.write_natural_set(tmp_path / "again", count=1, duration_s=DURATION, seed=5,
                                      recur_after_s=RECUR_AFTER, recur_fraction=1.0,
                                      cache_dir=root / "cache")
    assert again.read_text() == manifest.read_text()
    for line in json.loads(manifest.read_text().splitlines()[0]), :
        assert (tmp_path / "again" / line["path"]).read_bytes() == (root / "set" / line["path"]).read_bytes()


def test_bad_input_is_one_line_and_exit_2(festival, tmp_path, capsys):
    assert natural.main(["--out", str(tmp_path / "x"), "--count", "0"]) == 2
    assert natural.main(["--out", str(tmp_path / "x"), "--duration", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "count=0" in err[0] and "duration_s=5" in err[1]
    with pytest.raises(natural.SpeechError, match="wordnet-base"):
        natural.example_sentences(tmp_path)


def test_training_voices_are_not_the_held_out_ones(built, tmp_path):
    """``--voices ked ked`` (a training set): both channels speak ked, whose samples differ from
    the held-out voices' for the same sentences and seed; the held-out set never used ked."""
    root, _, lines = built
    assert sorted(p.name for p in (root / "cache").iterdir()) == ["kal", "slt"]
    manifest = natural.main(["--out", str(tmp_path / "train"), "--count", "1", "--duration",
                             str(DURATION), "--seed", "5", "--voices", "ked", "ked",
                             "--cache-dir", str(tmp_path / "cache")])
    assert manifest == 0 and sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["ked"]
    heldout = load_audio(root / "set" / lines[0]["path"])
    trained = load_audio(tmp_path / "train" / lines[0]["path"])
    first = json.loads((tmp_path / "train" / "manifest.jsonl").read_text().splitlines()[0])["turns"][0]
    assert first["sentences"] == lines[0]["turns"][0]["sentences"]  # same seed, same text
    assert not np.array_equal(_span(trained, 0, first["start"], first["end"]),
                              _span(heldout, 0, first["start"], first["end"]))
