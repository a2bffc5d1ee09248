"""Submit one cell through submitit (SLURM on a cluster, a local process otherwise), wait with a
bounded wall time, and record how it ended.

The driver runs where Snakemake runs (a login node or a laptop); the cell runs in the job. A cell
that fails or times out is written down as such in ``status.json`` (with the job's traceback in
its log), so one bad cell never stops the matrix and its table row says why.
"""
from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Any, Mapping

import submitit

from ttt.base.files import read_yaml, write_text

# Keys of a launcher YAML (profiles/*/submitit.yaml). Unknown keys are errors.
LAUNCHER_KEYS = {
    "executor": "local | slurm",
    "timeout_min": "wall time of one job attempt (minutes)",
    "max_wait_min": "the driver gives up (cancels the job) after this long",
    "max_requeues": "preemptions / timeouts a Checkpointable cell may be requeued",
    "poll_s": "seconds between job state checks",
    "gpus_per_node": "local executor: GPUs each job sees (CUDA_VISIBLE_DEVICES 0..N-1; submitit's "
                     "local jobs see none at 0); on SLURM give it under slurm",
    "slurm": "mapping of submitit slurm_* parameters without the prefix "
             "(partition, account, gpus_per_node, cpus_per_task, mem_gb, qos, constraint, ...)",
}
GENERIC = {"mem_gb", "cpus_per_task", "gpus_per_node", "nodes", "tasks_per_node"}
DEFAULTS = {"executor": "local", "timeout_min": 60, "max_wait_min": 240, "max_requeues": 3,
            "poll_s": 1.0, "gpus_per_node": 0, "slurm": {}}


def read_launcher(path: str | os.PathLike | None) -> dict:
    if path is None:
        return dict(DEFAULTS)
    path = Path(path)
    raw = read_yaml(path, "launcher config") or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of launcher settings")
    unknown = sorted(set(raw) - set(LAUNCHER_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; valid keys are {sorted(LAUNCHER_KEYS)}")
    cfg = {**DEFAULTS, **raw}
    if cfg["executor"] not in ("local", "slurm"):
        raise ValueError(f"{path}: executor must be 'local' or 'slurm', got {cfg['executor']!r}")
    gpus = cfg["gpus_per_node"]
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise ValueError(f"{path}: gpus_per_node must be an integer >= 0, got {gpus!r}")
    return cfg


class CellJob(submitit.helpers.Checkpointable):
    """The job: run a cell. On preemption/timeout submitit requeues it with the same arguments;
    a streamed cell then resumes from its replay snapshot (``snapshot_every``)."""

    def __call__(self, cell_yaml: str, out: str) -> dict:
        from contextlib import nullcontext

        from moshi.utils.compile import no_compile

        from ttt.eval.cell import load_cell_config, run_cell

        cfg = load_cell_config(cell_yaml)
        with no_compile() if cfg.device == "cpu" else nullcontext():
            metrics = run_cell(cfg, out, log=lambda m: print(m, flush=True))
        return {"diverged": metrics["diverged"], "requeues": metrics.get("requeues", 0)}


def _executor(launcher: Mapping[str, Any], log_dir: Path, name: str):
    cluster = "slurm" if launcher["executor"] == "slurm" else "local"
    extra = {"slurm_max_num_timeout": launcher["max_requeues"]} if cluster == "slurm" else {}
    executor = submitit.AutoExecutor(folder=str(log_dir), cluster=cluster, **extra)
    params = {"timeout_min": launcher["timeout_min"], "name": name}
    if cluster == "local":  # submitit sets CUDA_VISIBLE_DEVICES to the first N GPUs ("" at 0)
        params["gpus_per_node"] = launcher.get("gpus_per_node", 0)
    if cluster == "slurm":  # submitit's generic names stay as they are, the rest get slurm_
        params.update({k if k in GENERIC else f"slurm_{k}": v
                       for k, v in (launcher.get("slurm") or {}).items()})
    executor.update_parameters(**params)
    return executor, cluster


def submit_and_wait(cell_yaml: Path, out: Path, status_path: Path, launcher: Mapping[str, Any],
                    log_dir: Path) -> dict:
    """Submit, wait (bounded), write ``status_path`` (atomic). Never raises for a failed cell."""
    log_dir.mkdir(parents=True, exist_ok=True)
    executor, cluster = _executor(launcher, log_dir, f"ttt-{out.parent.name}")
    job = executor.submit(CellJob(), str(cell_yaml), str(out))
    print(f"submitted {out.parent} as job {job.job_id} ({cluster}); log: {job.paths.stdout}", flush=True)
    return _wait_and_record(job, cluster, out, status_path, launcher)


def submit_array_and_wait(cells: list[tuple[Path, Path, Path]], launcher: Mapping[str, Any],
                          log_dir: Path) -> list[dict]:
    """Several cells as one job array (``map_array``); each gets its own status like a driver."""
    log_dir.mkdir(parents=True, exist_ok=True)
    executor, cluster = _executor(launcher, log_dir, "ttt-array")
    jobs = executor.map_array(CellJob(), [str(c) for c, _, _ in cells], [str(o) for _, o, _ in cells])
    print(f"submitted {len(jobs)} cells as array {jobs[0].job_id.split('_')[0]} ({cluster})", flush=True)
    return [_wait_and_record(job, cluster, out, status, launcher)
            for job, (_, out, status) in zip(jobs, cells)]


def _wait_and_record(job, cluster: str, out: Path, status_path: Path,
                     launcher: Mapping[str, Any]) -> dict:
    deadline = time.monotonic() + 60 * launcher["max_wait_min"]
    status: dict[str, Any] = {"job_id": str(job.job_id), "executor": cluster,
                              "log": str(job.paths.stdout)}
    while not _finished(job, cluster):
        if time.monotonic() > deadline:
            job.cancel()
            status.update(status="timeout", error=f"no result after {launcher['max_wait_min']} min; "
                          f"job {job.job_id} cancelled")
            _mark_failed(out, status)
            _write_status(status_path, status)
            return status
        time.sleep(launcher["poll_s"])
    try:
        result = job.result()
        status.update(status="diverged" if result["diverged"] else "ok",
                      requeues=result.get("requeues", 0))
    except Exception as exc:  # the job's own traceback is in its log; keep its last line here
        state = _slurm_end_state(job) if cluster == "slurm" else getattr(job, "state", "FAILED")
        timed_out = ("TIME" in str(state).upper() or "state: TIMEOUT" in str(exc)
                     or "timed-out too many times" in str(exc))
        status.update(status="timeout" if timed_out else "failed", state=str(state),
                      error=_root_error(str(exc))[:500])
        print(f"cell {out.parent} failed (job {job.job_id}, {state}):\n{exc}", flush=True)
        traceback.print_exc()
        _mark_failed(out, status)
    _write_status(status_path, status)
    return status


def _finished(job, cluster: str) -> bool:
    """submitit's view, checked against the queue on SLURM: right after a requeue the accounting
    can still show the interrupted attempt's end state while the job is pending again."""
    if not job.done():
        return False
    if cluster != "slurm":
        return True
    import subprocess
    queued = subprocess.run(["squeue", "-h", "-j", str(job.job_id), "-o", "%T"],
                            capture_output=True, text=True).stdout.strip()
    if queued:
        job.watcher.clear()  # submitit caches finished states: forget the stale one, poll again
        return False
    return True


def _slurm_end_state(job) -> str:
    """The state SLURM wrote into the job's stderr (CANCELLED, TIME LIMIT, ...), else submitit's."""
    import re
    try:
        text = job.stderr() or ""
    except Exception:  # noqa: BLE001 - a missing log must not hide the failure itself
        text = ""
    found = re.findall(r"\*\*\* JOB \S+ ON \S+ (CANCELLED|DUE TO TIME LIMIT|DUE TO PREEMPTION)[^*]*\*\*\*", text)
    if found:
        return found[-1]
    return str(getattr(job, "state", "UNKNOWN"))


def _root_error(text: str) -> str:
    """The job's own exception line (``SomeError: message``) out of submitit's failure report."""
    import re
    found = re.findall(r"^\s*((?:[\w.]+)(?:Error|Exception|Interrupt)\b.*)$", text, flags=re.M)
    if found:
        return found[-1].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "unknown failure"


def _mark_failed(out: Path, status: Mapping[str, Any]) -> None:
    """A failed cell still gets its directory (Snakemake's declared output), holding why."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "FAILED.txt").write_text(f"{status.get('status')}: {status.get('error')}\n"
                                    f"job {status.get('job_id')}, log {status.get('log')}\n")


def _write_status(path: Path, status: Mapping[str, Any]) -> None:
    write_text(path, json.dumps(dict(status), indent=2) + "\n")
