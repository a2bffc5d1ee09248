"""GPUs seen by local cell jobs: submitit's local executor hides every GPU unless asked
(CUDA_VISIBLE_DEVICES=""), so a workflow on `device: cuda` with the local launcher failed every
cell. The launcher's `gpus_per_node` makes them visible; preflight refuses cuda without it."""
import functools
import os

import pytest
import yaml

from ttt.launch.launcher import _executor, read_launcher
from ttt.launch.preflight import PreflightError, check_launcher


# what the job's process sees (os.getenv pickles by reference: it runs in the job)
visible_devices = functools.partial(os.getenv, "CUDA_VISIBLE_DEVICES", "<unset>")


def launcher_file(tmp_path, **keys):
    path = tmp_path / "launcher.yaml"
    path.write_text(yaml.safe_dump({"executor": "local", "timeout_min": 2, **keys}))
    return path


@pytest.mark.parametrize("gpus, expected", [(None, ""), (1, "0"), (2, "0,1")])
def test_local_job_sees_the_gpus_the_launcher_asks_for(tmp_path, gpus, expected):
    keys = {} if gpus is None else {"gpus_per_node": gpus}
    launcher = read_launcher(launcher_file(tmp_path, **keys))
    executor, cluster = _executor(launcher, tmp_path / "jobs", "gpus")
    assert cluster == "local"
    job = executor.submit(visible_devices)  # a real local submitit job (a process of its own)
    assert job.result() == expected


def test_cuda_on_local_jobs_without_gpus_is_refused_up_front(tmp_path):
    path = launcher_file(tmp_path)
    with pytest.raises(PreflightError, match=r"config launcher: .*launcher\.yaml: device cuda with "
                                             r"the local executor needs gpus_per_node >= 1"):
        check_launcher(path, "cuda")
    check_launcher(path, "cpu")
    check_launcher(launcher_file(tmp_path, gpus_per_node=1), "cuda:0")
    with pytest.raises(PreflightError, match="gpus_per_node must be an integer >= 0, got -1"):
        check_launcher(launcher_file(tmp_path, gpus_per_node=-1), "cpu")
