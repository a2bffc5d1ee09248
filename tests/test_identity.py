"""Content digests: equal to sha256sum's, remembered per (size, mtime_ns, ctime_ns, inode,
device), never stale."""
import json
import os
import subprocess

from ttt.base import identity
from ttt.base.identity import file_digest, files_digest, sidecar, value_digest


def _sha256sum(path):
    return subprocess.run(["sha256sum", str(path)], capture_output=True, text=True,
                          check=True).stdout.split()[0]


def test_digest_matches_sha256sum_and_is_remembered_in_a_sidecar(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(os.urandom(3 << 20) + b"tail")
    assert file_digest(f) == _sha256sum(f)
    saved = json.loads(sidecar(f).read_text())
    st = f.stat()
    assert [saved[k] for k in identity.STAMP] == [st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                                  st.st_ino, st.st_dev]
    # A fresh process trusts the sidecar while the stamp holds: it does not rehash.
    identity._MEMO.clear()
    sidecar(f).write_text(json.dumps({**saved, "sha256": "ab" * 32}))
    assert file_digest(f) == "ab" * 32


def test_a_changed_file_or_a_bad_sidecar_is_rehashed(tmp_path):
    f = tmp_path / "a.wav"
    f.write_bytes(b"one")
    first = file_digest(f)
    os.replace(_write(tmp_path / "b", b"two"), f)  # atomic replacement: new inode
    assert file_digest(f) == _sha256sum(f) != first
    identity._MEMO.clear()
    sidecar(f).write_text("{not json")
    assert file_digest(f) == _sha256sum(f)
    identity._MEMO.clear()
    sidecar(f).write_text(json.dumps({"size": 3, "mtime_ns": 0, "inode": 0, "sha256": "00" * 32}))
    assert file_digest(f) == _sha256sum(f)


def test_unwritable_sidecar_still_gives_the_digest(tmp_path):
    f = _write(tmp_path / "x", b"data")
    sidecar(f).mkdir()  # the sidecar cannot be written (as in a read-only directory, even as root)
    assert file_digest(f) == _sha256sum(f)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x", sidecar(f).name])  # no temp left


def test_combined_digests_depend_on_content_and_role(tmp_path):
    a, b = _write(tmp_path / "a", b"A"), _write(tmp_path / "b", b"B")
    assert files_digest({"x": a, "y": b}) != files_digest({"x": b, "y": a})
    assert files_digest([a, b]) != files_digest([b, a])
    assert value_digest({"k": 1, "j": [1.5]}) == value_digest({"j": [1.5], "k": 1})
    assert value_digest({"k": 1}) != value_digest({"k": 2})


def _write(path, data):
    path.write_bytes(data)
    return path


def test_mimi_code_cache_is_keyed_by_content_not_directory_name(cache, tmp_path, capsys):
    """Issue 16 item 2: a/ckpt and b/ckpt (different Mimi weights) used to share cache files."""
    import torch
    from moshi.models import loaders
    from safetensors.torch import save_file

    from ttt.data.codes import conversation_codes
    from ttt.data.conversations import load_audio
    from ttt.data.demo import write_demo_conversation
    from ttt.moshi.model import resolve_model
    from ttt.moshi.tiny import DEMO_WORDS

    item = write_demo_conversation(tmp_path / "data" / "c.wav", 1.0, 5, DEMO_WORDS)
    mimi = loaders.get_mimi(str(resolve_model("tiny-random", cache / "models") / "mimi.safetensors"),
                            device="cpu", num_codebooks=8)
    shared, codes, ids = tmp_path / "codes", {}, {}
    for name in ("a", "b"):
        if name == "b":  # another checkpoint: the same Mimi with other codebooks
            with torch.no_grad():
                for module in mimi.modules():
                    if hasattr(module, "embedding_sum"):
                        module.embedding_sum.mul_(-1.5)
                        module._embedding = None
        weights = tmp_path / name / "ckpt" / "mimi.safetensors"
        weights.parent.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in mimi.state_dict().items()}, str(weights))
        ids[name] = file_digest(weights)
        codes[name] = conversation_codes(mimi, _NoWords(), item, shared, ids[name])
        with torch.no_grad():  # independent of the cache: Mimi on the audio itself
            direct = mimi.encode(torch.from_numpy(load_audio(item.path))[:, None])
        assert torch.equal(codes[name][0, 1:], torch.cat([direct[0], direct[1]]))
    assert not torch.equal(codes["a"], codes["b"])
    files = sorted(shared.glob("*.safetensors"))
    assert len(files) == 2
    # A corrupt cached file is discarded (with a warning naming it) and recomputed.
    for f in files:
        f.write_bytes(b"garbage")
    assert torch.equal(conversation_codes(mimi, _NoWords(), item, shared, ids["b"]), codes["b"])
    assert "discarding a corrupt cached codes file" in capsys.readouterr().err
    assert conversation_codes(mimi, _NoWords(), item, shared, ids["b"]).shape == codes["b"].shape
    assert "discarding" not in capsys.readouterr().err  # the rewritten file is used as is


class _NoWords:
    """A tokenizer for the text stream (not what this test is about)."""

    def encode(self, word):
        return [5]


def _tarball(path, member, data, mtime=1_700_000_000):
    """A tarball of one file, archived with a fixed mtime (as a release's tarballs are)."""
    import io
    import tarfile
    info = tarfile.TarInfo(member)
    info.size, info.mtime = len(data), mtime
    with tarfile.open(path, "w") as tar:
        tar.addfile(info, io.BytesIO(data))
    return path


def test_tarball_extracted_over_another_is_rehashed(tmp_path):
    """Issue 25 item 13: same name, size and mtime, same inode (tar truncates and rewrites in
    place); only the content and ctime differ. The remembered digest must not be served."""
    import tarfile
    first, second = os.urandom(1 << 16), os.urandom(1 << 16)
    for name, data in (("one.tar", first), ("two.tar", second)):
        _tarball(tmp_path / name, "data/a.wav", data)
    with tarfile.open(tmp_path / "one.tar") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    f = tmp_path / "x" / "data" / "a.wav"
    assert file_digest(f) == _sha256sum(f)
    before = f.stat()
    with tarfile.open(tmp_path / "two.tar") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    after = f.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert after.st_ino == before.st_ino  # the case the inode could not tell apart
    identity._MEMO.clear()  # a later process: only the sidecar remembers
    assert file_digest(f) == _sha256sum(f) == __import__("hashlib").sha256(second).hexdigest()
    assert file_digest(f, remember=False) == file_digest(f)
