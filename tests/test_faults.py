"""Fault injection: kill -9 a snapshotting cell at random points, rerun, compare with a run that
was never interrupted; plant corrupt, pickled and foreign snapshots on the way."""
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import CELL_TTT

# Outputs that depend on the machine or the run's history, not on what was computed.
_VOLATILE = {"throughput", "memory", "provenance", "requeues", "load_s", "timing"}
_COMPARED = ("transcript.jsonl", "transcript.txt", "timeseries.csv", "telemetry.csv",
             "diagnostics.csv")


class _Touch:
    """Unpickling this creates ``path``: the stand-in for code planted in the results tree."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _config(tmp_path, cache, name="c.yaml", **overrides):
    cfg = {"cell": "f", "mode": "transcribe", "model": "tiny",
           "data": {"demo": {"durations": [1.2, 0.8], "seed": 4}}, "ttt": CELL_TTT,
           "window_s": 1.0, "snapshot_every": 2, "diagnostics_every": 0, "cache_dir": str(cache),
           **overrides}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _start(config, out, log, *flags):
    """The CLI in its own process, its output in ``log`` (a pipe could fill and stall it)."""
    env = {**os.environ, "NO_TORCH_COMPILE": "1"}
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "ttt", "run-cell", "--config", str(config),
                                 "--out", str(out), *flags], stdout=f, stderr=subprocess.STDOUT,
                                env=env)


def _finish(proc, log):
    proc.wait(timeout=600)
    return proc.returncode, Path(log).read_text()


def _snapshots(replay):
    try:
        return {p.name: p.stat().st_mtime_ns for p in replay.glob("item*.safetensors")}
    except FileNotFoundError:
        return {}


def _kill_after_next_snapshot(proc, replay, delay):
    """SIGKILL ``proc`` ``delay`` s after it writes a snapshot; False when it ended first. Only a
    written (new or rewritten) snapshot counts: a snapshot removed because its item finished
    once triggered the kill too, and under load the rerun then found nothing of its own to resume
    (CI: requeues 0)."""
    before = _snapshots(replay)
    while proc.poll() is None:
        now = _snapshots(replay)
        if any(before.get(name) != stamp for name, stamp in now.items()):
            time.sleep(delay)
            if proc.poll() is not None:
                return False
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    return False


def _outputs(out):
    metrics = json.loads((out / "metrics.json").read_text())
    files = {name: (out / name).read_bytes() for name in _COMPARED if (out / name).exists()}
    return {k: v for k, v in metrics.items() if k not in _VOLATILE}, files


@pytest.mark.slow
def test_killed_cell_reruns_to_the_uninterrupted_result(cache, tmp_path):
    rng = random.Random(16)
    config = _config(tmp_path, cache)
    code, text = _finish(_start(config, tmp_path / "reference", tmp_path / "reference.log"),
                         tmp_path / "reference.log")
    assert code == 0, text[-2000:]
    out = tmp_path / "cells" / "f"
    replay = out.with_name(".f.replay")
    kills, marker, logs = 0, tmp_path / "planted-code-ran", []
    for attempt in range(30):
        logs.append(tmp_path / f"attempt{attempt}.log")
        proc = _start(config, out, logs[-1])
        if kills < 5 and _kill_after_next_snapshot(proc, replay, rng.uniform(0.0, 0.3)):
            kills += 1
            if kills == 2:  # a rerun with other settings must not continue this snapshot
                other = _config(tmp_path, cache, "other.yaml", seed=1, temperature=0.5,
                                ttt={**CELL_TTT, "lr": 0.02})
                code, text = _finish(_start(other, out, tmp_path / "other.log"), tmp_path / "other.log")
                assert code == 2, text[-2000:]
                error = text.strip().splitlines()[-1]
                assert error.startswith("error: ") and "snapshot of another run" in error
                for differs in ("config.seed 0 → 1", "config.temperature 0.8 → 0.5",
                                "config.ttt.lr 0.01 → 0.02"):
                    assert differs in error, error
                assert "Traceback" not in text
            if kills in (3, 4):  # a corrupt snapshot (3) or planted code (4): discarded, never run
                for snap in replay.glob("item*.safetensors"):
                    snap.write_bytes(snap.read_bytes()[:1000] if kills == 3 else
                                     pickle.dumps(_Touch(marker)))
            continue
        code, text = _finish(proc, logs[-1])
        assert code == 0, text[-2000:]
        break
    assert kills >= 5
    assert not marker.exists()
    for after in (3, 4):  # the attempt after the 3rd / 4th kill discarded what it found
        assert "discarding it and starting afresh" in logs[after].read_text()
    got, want = _outputs(out), _outputs(tmp_path / "reference")
    assert got[0] == want[0]
    assert got[1] == want[1] and set(got[1]) >= {"transcript.jsonl", "timeseries.csv"}
    assert json.loads((out / "metrics.json").read_text())["requeues"] >= 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["f"]  # no temp, lock or replay left


def test_planted_pickle_never_runs(tmp_path):
    import torch

    from ttt.session.snapshot import SnapshotError, load_snapshot

    marker = tmp_path / "ran"
    pickled = tmp_path / "item0.pt"
    torch.save({"format": "ttt-streaming-snapshot/1", "x": _Touch(marker)}, pickled)
    renamed = tmp_path / "item0.safetensors"
    renamed.write_bytes(pickled.read_bytes())
    for planted in (pickled, renamed):
        with pytest.raises(SnapshotError, match=rf"{planted.name}: unreadable snapshot"):
            load_snapshot(planted)
    assert not marker.exists()
    torch.load(pickled, weights_only=False)  # the plant is real: unpickling runs it
    assert marker.exists()


def test_nothing_in_ttt_unpickles():
    """Everything ttt loads from the results tree is safetensors or JSON."""
    import ttt
    sources = Path(ttt.__file__).parent.glob("*.py")
    offenders = [f"{p.name}: {line.strip()}" for p in sources for line in p.read_text().splitlines()
                 if ("torch.load(" in line and "weights_only=True" not in line)
                 or "pickle.load" in line or "np.load(" in line and "allow_pickle=False" not in line]
    assert offenders == []


# Each fault: what it does to one cell's directory, and the file its row must name.
_CORRUPTIONS = {
    "truncated metrics.json": (lambda d: _truncate(d / "cell" / "metrics.json"), "cell/metrics.json"),
    "truncated status.json": (lambda d: _truncate(d / "status.json"), "status.json"),
    "deleted metrics.json": (lambda d: (d / "cell" / "metrics.json").unlink(), "cell/metrics.json"),
    "metrics.json holding a list": (lambda d: (d / "cell" / "metrics.json").write_text("[1, 2]"),
                                    "cell/metrics.json"),
    "metrics.json of odd shape": (lambda d: (d / "cell" / "metrics.json").write_text(
        '{"perplexity": "high", "throughput": 3}'), "cell/metrics.json"),
    "non-UTF-8 status.json": (lambda d: (d / "status.json").write_bytes(b"\xff\xfe{}"), "status.json"),
    "garbage telemetry.csv": (lambda d: (d / "cell" / "telemetry.csv").write_bytes(b"\xff\x00\xfe" * 50),
                              "cell/telemetry.csv"),
}


def _truncate(path):
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def test_aggregate_and_verdicts_survive_corrupt_files(tmp_path, capsys):
    """Issue 16 item 7: one bad file costs its own cell's row, named; no traceback, others kept."""
    from results_factory import healthy_specs, write_results
    from ttt.cli.main import main

    root = write_results(tmp_path / "results", healthy_specs())
    cells = sorted(p.parent for p in (root / "cells").glob("**/status.json"))
    rng = random.Random(7)
    victims = dict(zip(rng.sample(cells, len(_CORRUPTIONS)), _CORRUPTIONS.items())) \
        if len(cells) >= len(_CORRUPTIONS) else dict(zip(cells, _CORRUPTIONS.items()))
    for cell, (_, (corrupt, _)) in victims.items():
        corrupt(cell)
    assert main(["aggregate", "--cells", str(root / "cells"), "--tables", str(root / "tables"),
                 "--plots", str(root / "plots")]) == 0
    out = capsys.readouterr().out
    rows = {r["cell"]: r for r in _read_csv_rows(root / "tables" / "cells.csv")}
    assert len(rows) == len(cells)
    for cell in cells:
        row = rows[str(cell.relative_to(root / "cells"))]
        if cell in victims and victims[cell][1][1] != "cell/telemetry.csv":
            name, (_, named) = victims[cell]
            assert row["status"] == "corrupt", name
            assert str(cell / named) in row["error"], (name, row["error"])
            assert f"corrupt: {row['cell']}: {row['error']}" in out
        elif cell not in victims:
            assert row["status"] == "ok" and row["perplexity_text"], row
    assert (root / "plots" / "long_form.png").is_file()
    # verdicts: run.completed fails and names each bad file, telemetry.csv included.
    code = main(["verdicts", "--results", str(root)])
    assert code == 0, capsys.readouterr().err
    explanations = {r["cell"]: r["explanation"] for r in _read_csv_rows(root / "tables" / "verdicts_cells.csv")
                    if r["signal"] == "run.completed"}
    for cell, (name, (_, named)) in victims.items():
        rel = str(cell.relative_to(root / "cells"))
        assert str(cell / named) in explanations[rel], (name, explanations[rel])
    assert "Traceback" not in capsys.readouterr().err


def _read_csv_rows(path):
    import csv
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_cell_scores_the_new_audio_after_a_tarball_over_a_tarball(cache, tmp_path):
    """Issue 25 item 13: the second tarball has the same member names, sizes and mtimes (and tar
    rewrites each file in place, same inode). Before, the cell served the first audio's cached
    codes: perplexities of the old recording, silently."""
    import io
    import tarfile

    from conftest import make_cell
    from ttt.eval.cell import run_cell
    from ttt.data.demo import write_demo_conversation
    from ttt.moshi.tiny import DEMO_WORDS

    def release(name, seed):
        """A data release: one 2-s conversation (its own audio, the first release's words)."""
        src = tmp_path / f"src{seed}"
        write_demo_conversation(src / "a.wav", 2.0, seed, DEMO_WORDS)
        if seed != 1:
            (src / "a.json").write_bytes((tmp_path / "src1" / "a.json").read_bytes())
        (src / "m.jsonl").write_text('{"path": "a.wav", "duration": 2.0}\n')
        with tarfile.open(tmp_path / name, "w") as tar:
            for member in ("a.wav", "a.json", "m.jsonl"):
                data = (src / member).read_bytes()
                info = tarfile.TarInfo(f"data/{member}")
                info.size, info.mtime = len(data), 1_700_000_000
                tar.addfile(info, io.BytesIO(data))
        return src

    def perplexity(manifest, out):
        cfg = make_cell(cache, "tar", [2.0], data={"manifest": str(manifest)}, window_s=1.0)
        return run_cell(cfg, tmp_path / out, log=lambda m: None)["perplexity"]

    release("one.tar", 1)
    second = release("two.tar", 2)
    wav = tmp_path / "x" / "data" / "a.wav"
    with tarfile.open(tmp_path / "one.tar") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    old = perplexity(tmp_path / "x" / "data" / "m.jsonl", "first")
    stamp = wav.stat()
    with tarfile.open(tmp_path / "two.tar") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    assert (wav.stat().st_size, wav.stat().st_mtime_ns, wav.stat().st_ino) == \
        (stamp.st_size, stamp.st_mtime_ns, stamp.st_ino)
    new = perplexity(tmp_path / "x" / "data" / "m.jsonl", "second")
    reference = perplexity(second / "m.jsonl", "reference")  # the second release, never overwritten
    assert new == reference and new != old, (old, new, reference)
