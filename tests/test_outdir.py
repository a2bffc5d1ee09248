"""One run per output directory: the lock, literal names, up-front checks of --out."""
import os
import signal
import subprocess
import sys
import time

import pytest

from ttt.base.outdir import OutputError, check_output, claim_output, remove_dead_temporaries

HOLD = """
import sys, time
from pathlib import Path
from ttt.base.outdir import claim_output
with claim_output(Path(sys.argv[1])):
    tmp = Path(sys.argv[1]).with_name('.' + Path(sys.argv[1]).name + '.tmp' + str(__import__('os').getpid()))
    tmp.mkdir()
    print('holding', flush=True)
    time.sleep(600)
"""


def _hold(out):
    """Another live run of ``out``: holds its lock and has a temporary directory."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_second_run_of_the_same_out_is_refused_and_touches_nothing(tmp_path):
    out = tmp_path / "cells" / "run1"
    holder = _hold(out)
    try:
        live_tmp = out.with_name(f".run1.tmp{holder.pid}")
        config = tmp_path / "c.yaml"
        config.write_text("cell: x\nmode: generate\nsnapshot_every: 5\n")
        done = subprocess.run([sys.executable, "-m", "ttt", "run-cell", "--config", str(config),
                               "--out", str(out)], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "NO_TORCH_COMPILE": "1"})
        assert done.returncode == 2
        assert done.stderr.strip() == (f"error: {out}: another run (pid {holder.pid}) is writing "
                                       "it; wait for it to end or choose another --out")
        assert live_tmp.is_dir()
        # Glob characters are literal: run[1] is another directory, run1's files are not its own.
        with claim_output(tmp_path / "cells" / "run[1]"):
            assert remove_dead_temporaries(tmp_path / "cells" / "run[1]") == []
        assert live_tmp.is_dir()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # kill -9 released the lock: the next run claims it and removes the dead run's temporary.
    with claim_output(out):
        assert remove_dead_temporaries(out) == [live_tmp]
    assert not live_tmp.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == []  # the lock file went with the run


def test_only_this_outputs_temporaries_are_removed(tmp_path):
    names = [".x.tmp12", ".x.tmpabc", ".xy.tmp3", ".x.tmp4.json", "x.tmp5", ".x.replay"]
    for name in names:
        (tmp_path / name).mkdir()
    with claim_output(tmp_path / "x"):
        removed = remove_dead_temporaries(tmp_path / "x")
    assert [p.name for p in removed] == [".x.tmp12"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


def test_bad_out_is_refused_up_front(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(OutputError, match=rf"{a_file} is a file, not a directory"):
        check_output(a_file / "sub" / "cell")
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="link: is a dangling symbolic link"):
        check_output(dangling)
    with pytest.raises(OutputError, match="link: is a dangling symbolic link"):
        check_output(dangling / "cell")
    with pytest.raises(FileExistsError, match="exists already"):
        check_output(tmp_path)
    with pytest.raises(OutputError, match="^/proc.*: cannot"):
        with claim_output(__import__("pathlib").Path("/proc/ttt-cell")):
            pass
    assert not (tmp_path / "nowhere").exists()


def test_lock_waits_for_nothing(tmp_path):
    """Claiming is immediate (LOCK_NB): a refused run never blocks the matrix."""
    out = tmp_path / "c"
    holder = _hold(out)
    try:
        start = time.monotonic()
        with pytest.raises(OutputError, match="another run"):
            with claim_output(out):
                pass
        assert time.monotonic() - start < 1.0
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


BUILD = """
import sys
from pathlib import Path
from ttt.moshi.tiny import build_tiny_checkpoint
build_tiny_checkpoint(Path(sys.argv[1]), 0)
"""


@pytest.mark.slow
def test_killed_model_cache_build_leaves_nothing_the_next_build_keeps(tmp_path):
    """Issue 25 item 19: kill -9 a real tiny-random build once its temporary folder holds
    weights; the next build removes that folder (it held 199 MB before) and completes."""
    target = tmp_path / "models" / "tiny-seed0"
    env = {**os.environ, "NO_TORCH_COMPILE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", BUILD, str(target)], env=env)
    tmp = target.with_name(f".tiny-seed0.tmp{proc.pid}")
    try:
        deadline = time.monotonic() + 240
        while not (tmp / "model.safetensors").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, "the build ended first"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert tmp.is_dir() and not target.exists()  # what the kill left
    # Two builds at once (cells starting together): one builds, the other waits and uses it.
    both = [subprocess.Popen([sys.executable, "-c", BUILD, str(target)], env=env) for _ in range(2)]
    assert [p.wait(timeout=600) for p in both] == [0, 0]
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny-seed0"]  # no temp, no lock
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "mimi.safetensors",
                                                        "model.safetensors", "tokenizer.model"]
