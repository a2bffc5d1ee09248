"""Snapshot identity: what a resumed run must share with the snapshot it continues.

Issue 26 item 7: `identity_mismatch` tested directly: each kind of difference, and keys present on
one side only (the mutants "always None" and "ignore one-sided keys" survived the fast suite).
Issue 25 item 11: the identity includes the code digest, so a resume after a code edit (a SLURM
requeue after `git pull`) is refused with one line; `--fresh` starts afresh."""
import os
import subprocess
import sys

import pytest
import yaml

from ttt.base.code_identity import code_digest
from ttt.session.snapshot import (SnapshotMismatch, identity_mismatch, refuse_mismatch,
                                  save_snapshot, snapshot)

SAVED = {"config": {"seed": 0, "ttt": {"lr": 0.01, "layers": [1, 3]}, "mode": "generate"},
         "model": "a" * 64, "code": "0123456789abcdef",
         "input": {"index": 0, "frames": 100, "codes": "c" * 64}}


def changed(**paths):
    """SAVED with dotted keys set (a value of `...` removes the key)."""
    out = yaml.safe_load(yaml.safe_dump(SAVED))
    for dotted, value in paths.items():
        *parents, last = dotted.split("__")
        node = out
        for p in parents:
            node = node[p]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return out


def test_equal_identities_agree():
    assert identity_mismatch(SAVED, changed()) is None
    assert identity_mismatch({}, {}) is None and identity_mismatch(None, {}) is None


@pytest.mark.parametrize("change, phrase", [
    ({"config__seed": 1}, "config.seed 0 → 1"),                         # a top-level config value
    ({"config__ttt__lr": 0.02}, "config.ttt.lr 0.01 → 0.02"),            # nested
    ({"config__ttt__layers": [1]}, "config.ttt.layers [1, 3] → [1]"),    # a list
    ({"config__mode": None}, "config.mode 'generate' → None"),           # to null
    ({"model": "b" * 64}, "model differs"),                              # a content digest: no hex dump
    ({"code": "fedcba9876543210"}, "code '0123456789abcdef' → 'fedcba9876543210'"),
    ({"input__frames": 101}, "input.frames 100 → 101"),
])
def test_each_kind_of_difference_is_named(change, phrase):
    assert identity_mismatch(SAVED, changed(**change)) == phrase


def test_keys_on_one_side_only_differ():
    # a key the snapshot lacks (e.g. one taken before the code digest existed) ...
    assert identity_mismatch(changed(code=...), SAVED) == "code '<absent>' → '0123456789abcdef'"
    # ... or that the current run lacks
    assert identity_mismatch(SAVED, changed(config__ttt__lr=...)) == "config.ttt.lr 0.01 → '<absent>'"
    assert identity_mismatch(SAVED, changed(input=...)) == (
        "input.codes differs, input.frames 100 → '<absent>', input.index 0 → '<absent>'")
    assert identity_mismatch({"config": {}}, {"config": {"ab": False}}) == "config.ab '<absent>' → False"


def test_several_differences_in_one_line():
    got = identity_mismatch(SAVED, changed(config__seed=1, model="b" * 64, code="f" * 16))
    assert got == f"code '0123456789abcdef' → '{'f' * 16}', config.seed 0 → 1, model differs"


def test_refusal_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(SnapshotMismatch) as info:
        refuse_mismatch(tmp_path / "item0.safetensors", SAVED, changed(code="f" * 16))
    assert str(info.value) == (f"{tmp_path / 'item0.safetensors'}: snapshot of another run (code "
                               f"'0123456789abcdef' → '{'f' * 16}'); refusing to mix runs: rerun "
                               "with --fresh (or delete it) to start afresh")


def planted_snapshot_of_other_code(cache, tmp_path):
    """A cell config and, in its --out's replay folder, a snapshot of the same run on other code."""
    from ttt.base.config import load_cell_config
    from ttt.eval.streamed import _run_identity, replay_dir
    from ttt.moshi.checkpoints import resolve_checkpoint

    config = tmp_path / "cell.yaml"
    config.write_text(yaml.safe_dump({
        "cell": "resume", "mode": "generate", "model": "tiny-random", "cache_dir": str(cache),
        "data": {"demo": {"durations": [1.0], "seed": 3}}, "window_s": 0.5, "snapshot_every": 5,
        "ttt": {"start_layer": 1, "layer_frequency": 2, "chunk_size": 8}}))
    cfg = load_cell_config(config)
    sources = resolve_checkpoint("tiny-random", None, cache / "models")
    identity = _run_identity(cfg, sources)
    out = tmp_path / "out"
    replay_dir(out).mkdir()
    save_snapshot(replay_dir(out) / "item0.safetensors",
                  snapshot({}, extra={}, identity={**identity, "code": "f" * 16}))
    return config, cfg, sources, out


def test_the_run_identity_carries_the_code_digest(cache, tmp_path):
    from ttt.eval.streamed import _run_identity, refuse_foreign_snapshots

    _, cfg, sources, out = planted_snapshot_of_other_code(cache, tmp_path)
    assert _run_identity(cfg, sources)["code"] == code_digest()
    with pytest.raises(SnapshotMismatch, match=rf"\(code '{'f' * 16}' → '{code_digest()}'\)"):
        refuse_foreign_snapshots(cfg, out, sources)


@pytest.mark.slow
def test_resume_after_a_code_change_is_refused_and_fresh_starts_afresh(cache, tmp_path):
    """A snapshot left by the same cell run on other code: `run-cell` refuses it before the model
    loads (exit 2, one line); `--fresh` discards it and runs."""
    from ttt.eval.streamed import replay_dir

    config, _, _, out = planted_snapshot_of_other_code(cache, tmp_path)

    def run_cell(*extra):
        return subprocess.run([sys.executable, "-m", "ttt", "run-cell", "--config", str(config),
                               "--out", str(out), *extra], capture_output=True, text=True,
                              timeout=600, env={**os.environ, "NO_TORCH_COMPILE": "1"})

    refused = run_cell()
    assert refused.returncode == 2, refused.stderr[-2000:]
    (line,) = refused.stderr.strip().splitlines()
    assert line == (f"error: {replay_dir(out) / 'item0.safetensors'}: snapshot of another run "
                    f"(code '{'f' * 16}' → '{code_digest()}'); refusing to mix runs: rerun with "
                    "--fresh (or delete it) to start afresh")
    assert not out.exists()
    fresh = run_cell("--fresh")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert "--fresh: discarded the snapshots" in fresh.stderr and (out / "metrics.json").exists()
