"""The launcher against a real single-node SLURM cluster (started by tests/slurm_lab.sh).

Skipped, with the reason, where the cluster cannot be started (not root, no Debian packages).
Run alone with `make test-slurm`.
"""
import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from ttt.eval.cell import run_cell
from ttt.launch.launcher import submit_and_wait
from conftest import make_cell

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slurm
TIMING = {"ms_per_step", "ms_per_step_p90", "rtf", "tokens_per_s", "peak_mem_bytes", "job_id",
          "ms_per_step_off", "ms_per_step_delta", "ms_per_step_ratio", "requeues"}


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("SLURM lab needs root (it installs and starts munge/slurmctld/slurmd/slurmdbd)")
    lab = tmp_path_factory.mktemp("slurm-lab")
    script = REPO / "tests" / "slurm_lab.sh"
    done = subprocess.run(["bash", str(script), "start", str(lab)], capture_output=True, text=True,
                          timeout=600)
    if done.returncode == 3:
        pytest.skip(f"SLURM lab unavailable: {done.stderr.strip()}")
    assert done.returncode == 0, done.stdout + done.stderr
    yield "ttt"
    subprocess.run(["bash", str(script), "stop", str(lab)], timeout=120)


def launcher_file(tmp_path, **over):
    cfg = {"executor": "slurm", "timeout_min": 10, "max_wait_min": 10, "poll_s": 0.5,
           "max_requeues": 3, "slurm": {"partition": "ttt", "cpus_per_task": 1, "mem_gb": 4}}
    cfg.update(over)
    path = tmp_path / "launcher.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def write_cell(tmp_path, cfg, name="cell.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def test_pipeline_on_slurm_matches_local(slurm, cache, tmp_path):
    tables = {}
    for executor in ("local", "slurm"):
        wd = tmp_path / executor
        shutil.copytree(REPO / "config", wd / "config")
        base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
        launcher = launcher_file(wd) if executor == "slurm" else REPO / "profiles/local/submitit.yaml"
        base.update(cache_dir=str(cache), launcher=str(launcher), families=["telemetry", "regression"],
                    telemetry={**base["telemetry"], "duration_s": 4},
                    regression={**base["regression"], "duration_s": 4})
        (wd / "config" / "config.yaml").write_text(yaml.safe_dump(base))
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
        done = subprocess.run([str(BIN / "snakemake"), "--snakefile", str(REPO / "workflow" / "Snakefile"),
                               "--directory", str(wd), "--profile", str(REPO / "profiles/local")],
                              capture_output=True, text=True, env=env, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        with open(wd / "results/tables/cells.csv") as f:
            tables[executor] = {r["cell"]: {k: v for k, v in r.items() if k not in TIMING}
                                for r in csv.DictReader(f)}
        statuses = [json.loads(p.read_text()) for p in (wd / "results/cells").glob("**/status.json")]
        assert {s["executor"] for s in statuses} == {executor}
    assert tables["slurm"] == tables["local"]
    assert len(tables["slurm"]) == 3


def _job_state(job_id):
    out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip()


def _wait(predicate, limit, what):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _submit_in_thread(cfg_path, out, status, launcher, logs):
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        submit_and_wait(cfg_path, out, status, yaml.safe_load(launcher.read_text()) | {}, logs)))
    thread.start()
    return thread, result


def _first_job_id(logs):
    def find():
        names = [p.name.split("_")[0] for p in logs.glob("*_submitted.pkl")]
        return names[0] if names else None
    return _wait(find, 60, "the job to be submitted")


def test_cancelled_job_fails_the_driver_quickly(slurm, cache, tmp_path):
    from ttt.launch.launcher import read_launcher
    # long enough to outlast slurm's KillWait (30 s): submitit lets the job run on through
    # scancel's SIGTERM, and a cell that finishes before the SIGKILL is a whole result ("ok")
    cfg = make_cell(cache, "cancel", [240.0], mode="transcribe", ttt={"enabled": False})
    cfg_path = write_cell(tmp_path, cfg)
    launcher = read_launcher(launcher_file(tmp_path))
    out, status, logs = tmp_path / "out", tmp_path / "status.json", tmp_path / "jobs"
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        submit_and_wait(cfg_path, out, status, launcher, logs)))
    thread.start()
    job_id = _first_job_id(logs)
    _wait(lambda: _job_state(job_id) == "RUNNING", 60, "the job to run")
    t0 = time.monotonic()
    subprocess.run(["scancel", job_id], check=True)
    thread.join(timeout=120)
    assert not thread.is_alive(), "driver still waiting 120 s after scancel"
    elapsed = time.monotonic() - t0
    saved = json.loads(status.read_text())
    assert saved["status"] == "failed" and saved["job_id"] == job_id
    assert saved["state"].startswith("CANCELLED") and f"Job {job_id}" in saved["error"], saved
    assert (out / "FAILED.txt").is_file()
    print(f"[measure] driver returned {elapsed:.1f} s after scancel")


def test_preemption_requeues_and_resumes_identically(slurm, cache, tmp_path):
    from ttt.launch.launcher import read_launcher
    cfg = make_cell(cache, "preempt", [40.0], mode="transcribe", snapshot_every=25)
    reference = run_cell(cfg, tmp_path / "uninterrupted", log=lambda m: None)
    cfg_path = write_cell(tmp_path, cfg)
    launcher = read_launcher(launcher_file(tmp_path))
    out, status, logs = tmp_path / "preempted" / "cell", tmp_path / "preempted" / "status.json", tmp_path / "jobs"
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        submit_and_wait(cfg_path, out, status, launcher, logs)))
    thread.start()
    job_id = _first_job_id(logs)
    replay = out.with_name(f".{out.name}.replay") / "item0.safetensors"
    _wait(lambda: replay.is_file(), 180, "the first snapshot")
    t0 = time.monotonic()
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    _wait(lambda: _job_state(job_id) in ("PENDING", "REQUEUED", "CONFIGURING")
          or not _job_state(job_id), 60, "the requeue")
    _wait(lambda: _job_state(job_id) == "RUNNING" or not thread.is_alive(), 120, "running again")
    latency = time.monotonic() - t0
    thread.join(timeout=600)
    assert not thread.is_alive()
    assert result["status"] == "ok", result
    got = json.loads((out / "metrics.json").read_text())
    assert got["requeues"] == 1
    assert (out / "transcript.jsonl").read_text() == (tmp_path / "uninterrupted" / "transcript.jsonl").read_text()
    assert (out / "telemetry.csv").read_text() == (tmp_path / "uninterrupted" / "telemetry.csv").read_text()
    assert got["wer"] == reference["wer"] and got["ttt_telemetry"] == reference["ttt_telemetry"]
    print(f"[measure] requeue → running again after {latency:.1f} s")


def test_several_drivers_at_once_do_not_collide(slurm, cache, tmp_path):
    from ttt.launch.launcher import read_launcher
    launcher = read_launcher(launcher_file(tmp_path))
    threads, results = [], []
    for i in range(3):
        cfg = make_cell(cache, f"par{i}", [4.0], seed=i, ttt={"enabled": False})
        cfg_path = write_cell(tmp_path, cfg, f"cell{i}.yaml")
        res = {}
        t = threading.Thread(target=lambda c=cfg_path, i=i, r=res: r.update(submit_and_wait(
            c, tmp_path / f"c{i}" / "cell", tmp_path / f"c{i}" / "status.json", launcher,
            tmp_path / f"c{i}" / "jobs")))
        t.start()
        threads.append(t)
        results.append(res)
    for t in threads:
        t.join(timeout=600)
    assert [r["status"] for r in results] == ["ok"] * 3
    assert len({r["job_id"] for r in results}) == 3
    for i in range(3):
        assert json.loads((tmp_path / f"c{i}" / "cell" / "metrics.json").read_text())["cell"] == f"par{i}"


def test_time_limit_requeues_up_to_the_maximum_then_reports_timeout(slurm, cache, tmp_path):
    """1-minute jobs signalled 20 s before their limit: the cell (≈ 2 min of work) is requeued
    once (max_requeues 1), runs out of time again and is reported as timed out — never as a
    success, never hanging. (Resuming from the snapshot is the preemption test's subject.)"""
    from ttt.launch.launcher import read_launcher
    cfg = make_cell(cache, "slow", [120.0], mode="generate", ttt={"enabled": False}, snapshot_every=50)
    cfg_path = write_cell(tmp_path, cfg)
    launcher = read_launcher(launcher_file(tmp_path, timeout_min=1, max_requeues=1,
                                           slurm={"partition": "ttt", "cpus_per_task": 1,
                                                  "mem_gb": 4, "signal_delay_s": 20}))
    out, status = tmp_path / "slow" / "cell", tmp_path / "slow" / "status.json"
    t0 = time.monotonic()
    result = submit_and_wait(cfg_path, out, status, launcher, tmp_path / "jobs")
    elapsed = time.monotonic() - t0
    assert result["status"] == "timeout", result
    assert json.loads(status.read_text())["status"] == "timeout"
    log = (tmp_path / "jobs" / f"{result['job_id']}_0_log.out").read_text()
    assert "Requeued job" in log and "timed-out too many times" in log
    assert (out / "FAILED.txt").is_file()
    print(f"[measure] timed out after {elapsed:.0f} s")


def test_job_array_of_cells_without_collisions(slurm, cache, tmp_path):
    from ttt.launch.launcher import read_launcher, submit_array_and_wait
    launcher = read_launcher(launcher_file(tmp_path))
    cells = []
    for i in range(3):
        cfg = make_cell(cache, f"arr{i}", [4.0], seed=10 + i, ttt={"enabled": False})
        cells.append((write_cell(tmp_path, cfg, f"arr{i}.yaml"), tmp_path / f"a{i}" / "cell",
                      tmp_path / f"a{i}" / "status.json"))
    results = submit_array_and_wait(cells, launcher, tmp_path / "jobs")
    assert [r["status"] for r in results] == ["ok"] * 3
    ids = [r["job_id"] for r in results]
    assert len(set(ids)) == 3 and len({i.split("_")[0] for i in ids}) == 1  # one array
    for i in range(3):
        assert json.loads((tmp_path / f"a{i}" / "cell" / "metrics.json").read_text())["cell"] == f"arr{i}"
        assert json.loads((tmp_path / f"a{i}" / "status.json").read_text())["job_id"] == ids[i]
