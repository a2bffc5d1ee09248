"""gpu/detached.sh: a run started detached outlives its starter, and wait reports how it ended."""
import os
import subprocess
import time
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "gpu" / "detached.sh"


def _sh(*args):
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_detached_run_outlives_its_session_and_wait_reports_its_end(tmp_path):
    log, flag = tmp_path / "run.log", tmp_path / "flag"
    started = _sh("start", log, "bash", "-c", f"echo begun in session $(ps -o sid= -p $$); while [ ! -e {flag} ]; do sleep 0.2; done; echo over")
    assert started.returncode == 0, started.stderr
    try:
        still = _sh("wait", log, 1)
        assert still.returncode == 3 and "begun" in still.stdout and "still running" in still.stdout
        session = int(still.stdout.split("begun in session")[1].split()[0])
        assert session != os.getsid(0)  # its own session: the device kills the caller's when a call ends
    finally:
        flag.touch()
    done = _sh("wait", log, 30)
    assert done.returncode == 0 and "over" in done.stdout and "status 0" in done.stdout


def test_wait_fails_for_a_failed_run_and_start_refuses_a_used_log(tmp_path):
    log = tmp_path / "run.log"
    assert _sh("start", log, "bash", "-c", "echo broken >&2; exit 7").returncode == 0
    deadline = time.time() + 30
    while not (tmp_path / "run.log.rc").exists() and time.time() < deadline:
        time.sleep(0.1)
    failed = _sh("wait", log, 5)
    assert failed.returncode == 1 and "broken" in failed.stdout and "status 7" in failed.stdout
    again = _sh("start", log, "true")
    assert again.returncode == 2 and "one run per log" in again.stderr
    assert _sh("wait", tmp_path / "nothing.log", 1).returncode == 2
