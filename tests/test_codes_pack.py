"""Codes packs (ttt/data/codes_pack.py): encoded conversations and their base carried without the
audio or the base's Mimi weights. After unpacking, training reads the same codes as from the
original manifest, by content (no Mimi runs), and anything that is not what was packed is refused."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from ttt.data.codebooks import levels, write_fitted_base
from ttt.data.codes import TrainBase, load_codes
from ttt.data.codes_pack import DELTA, main, pack, unpack
from ttt.data.conversations import DataError, read_manifest
from ttt.data.demo import write_demo_manifest
from ttt.moshi.model import load_checkpoint, resolve_model
from ttt.moshi.tiny import DEMO_WORDS


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A 'fitted' base (tiny-random with level 0's codebook moved, as a fit would), two demo
    conversations encoded with it, and their pack."""
    root = tmp_path_factory.mktemp("pack")
    cache = root / "cache"
    reference = resolve_model("tiny-random", cache / "models")
    mimi = load_checkpoint(reference).mimi
    with torch.no_grad():
        codebook = levels(mimi.quantizer)[0][1]
        codebook.embedding_sum.mul_(-1.0)
        codebook._embedding = None
    fitted = write_fitted_base(reference, mimi, root / "fitted", {"how": "test"})
    manifest = write_demo_manifest(root / "data", [3.0, 3.6], seed=4, words=list(DEMO_WORDS))
    original = load_codes(str(manifest), TrainBase("fitted", fitted, "cpu"), str(cache))
    info = pack(fitted, "tiny-random", {"train": manifest}, cache, root / "pack")
    return root, fitted, manifest, original, info


def test_unpacked_pack_gives_the_same_codes_without_audio_or_mimi(packed, tmp_path):
    root, fitted, manifest, original, info = packed
    moved = tmp_path / "pack"
    shutil.copytree(root / "pack", moved)  # another machine: no fitted Mimi, no wavs, no cache
    assert not (moved / "base" / "mimi.safetensors").exists()
    assert not list(moved.rglob("*.wav"))
    assert info["delta_tensors"] and all("_codebook" in k for k in info["delta_tensors"])
    assert (moved / "base" / DELTA).stat().st_size < (fitted / "mimi.safetensors").stat().st_size / 20
    base = unpack(moved)
    assert (base / "mimi.safetensors").read_bytes() == (fitted / "mimi.safetensors").read_bytes()
    items = read_manifest(moved / "data" / "train" / "manifest.jsonl")
    assert [i.alignments for i in items] == [i.alignments for i in read_manifest(manifest)]
    train_base = TrainBase("packed", base, "cpu")
    codes = load_codes(str(moved / "data" / "train" / "manifest.jsonl"), train_base, str(moved / "cache"))
    assert train_base._mimi is None  # every conversation came from the cache
    assert len(codes) == 2 and all(torch.equal(a, b) for a, b in zip(codes, original))


def test_a_pack_that_is_not_what_was_packed_is_refused(packed, tmp_path):
    root = packed[0]
    moved = tmp_path / "pack"
    shutil.copytree(root / "pack", moved)
    delta = load_file(str(moved / "base" / DELTA))
    save_file({k: v * 2 for k, v in delta.items()}, str(moved / "base" / DELTA))
    with pytest.raises(ValueError, match="rebuilt Mimi's sha256"):
        unpack(moved)
    assert not (moved / "base" / "mimi.safetensors").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["unpack", str(tmp_path / "nothing")])
    assert exit_info.value.code == 2
    # a codes-only line whose codes are not cached: one line naming the file, no Mimi on silence
    shutil.copytree(root / "pack", tmp_path / "second")
    base = unpack(tmp_path / "second")
    shutil.rmtree(tmp_path / "second" / "cache" / "codes")
    with pytest.raises(DataError, match="codes-only conversation whose codes are not in"):
        load_codes(str(tmp_path / "second" / "data" / "train" / "manifest.jsonl"),
                   TrainBase("packed", base, "cpu"), str(tmp_path / "second" / "cache"))


def test_a_wav_that_differs_from_its_recorded_digest_is_refused(packed, tmp_path):
    root, _, manifest, _, _ = packed
    line = json.loads(manifest.read_text().splitlines()[0])
    line["audio_sha256"] = "0" * 64
    wrong = manifest.parent / "wrong.jsonl"
    wrong.write_text(json.dumps(line) + "\n")
    with pytest.raises(DataError, match="content differs from the manifest's audio_sha256"):
        load_codes(str(wrong), TrainBase("fitted", root / "fitted", "cpu"), str(root / "cache"))
