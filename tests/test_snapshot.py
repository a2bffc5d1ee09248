"""Replay: a snapshot taken mid-chunk, restored in a new process, continues bit for bit."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ttt
from ttt.session.snapshot import load_snapshot, restore, save_snapshot, snapshot
from conftest import random_sequence, tiny_lm

WORKER = Path(__file__).with_name("replay_worker.py")


def run_worker(*args):
    done = subprocess.run([sys.executable, str(WORKER), *map(str, args)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("source", ["embeddings", "hidden_states"])
def test_restore_in_new_process_continues_identically(tmp_path, monkeypatch, source):
    monkeypatch.setenv("REPLAY_TARGET_SOURCE", source)
    n, k = 31, 13  # 13 is mid-chunk (chunk 5): the partial-chunk buffer must travel too
    path = tmp_path / "snap.pt"
    full = run_worker("full", n)
    first = run_worker("first", n, k, path)
    resumed = run_worker("resume", n, path)
    assert first["tokens"] == full["tokens"][:k]
    assert resumed["tokens"] == full["tokens"]
    assert resumed["telemetry"] == full["telemetry"]
    assert sum(full["telemetry"]["1"]["updates"]) == (n - 1) // 5  # updates really happened
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temporary behind


def test_restore_rejects_a_different_session(tmp_path):
    cfg = ttt.TTTConfig(layers=(1,), chunk_size=4)
    lm = ttt.apply_ttt(tiny_lm(0), cfg)
    seq = random_sequence(1, 6)
    with torch.no_grad(), lm.streaming(1):
        lm.forward_text(seq)
        snap = snapshot({"lm": lm}, extra={"step": 6})
    save_snapshot(tmp_path / "s.pt", snap)
    other = ttt.apply_ttt(tiny_lm(0), ttt.TTTConfig(layers=(2,), chunk_size=4))
    with other.streaming(1), pytest.raises(ValueError, match="one side only"):
        restore({"lm": other}, load_snapshot(tmp_path / "s.pt"))
    with lm.streaming(2), pytest.raises(ValueError, match="batch size"):
        restore({"lm": lm}, load_snapshot(tmp_path / "s.pt"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_snapshot(tmp_path / "missing.pt")
    with lm.streaming(1):
        assert restore({"lm": lm}, load_snapshot(tmp_path / "s.pt")) == {"step": 6}
