"""Issue 25 item 5: a code edit reruns the cells it changes. Every cell config records the digest
of the ttt source a cell runs and moshi's version (ttt/base/code_identity.py), so after an edit
`snakemake -n` plans the cells again (it planned nothing: results of the old code were reused
silently); `code_digest: pin` keeps them on purpose; a table edit (ttt/report) reruns no cell.

The workflow runs the ttt package beside it, so the repository's workflow and package are copied
and the copy is edited."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ttt.base import code_identity as code
from test_workflow_checks import fake_completed_cells, planned

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def copy_of_repo(root: Path) -> Path:
    repo = root / "repo"
    for part in ("ttt", "workflow", "profiles"):
        shutil.copytree(REPO / part, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
    return repo


def snakemake(repo: Path, workdir: Path, *args):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "NO_TORCH_COMPILE": "1"}
    env.pop("PYTHONPATH", None)  # the copy's ttt, as the workflow puts it first on the path
    return subprocess.run([str(BIN / "snakemake"), "--snakefile", str(repo / "workflow/Snakefile"),
                           "--directory", str(workdir), "--profile", str(repo / "profiles/local"),
                           *args], capture_output=True, text=True, env=env, timeout=300)


def test_digest_follows_the_code_a_cell_runs(tmp_path):
    package = tmp_path / "ttt"
    shutil.copytree(REPO / "ttt", package, ignore=shutil.ignore_patterns("__pycache__"))
    first = code.code_digest(package)
    assert len(first) == 16 and first == code.code_digest(REPO / "ttt")  # content, not place
    (package / "report" / "tables.py").write_text("# a table edit\n", "utf-8")
    (package / "assets" / "tiny-control" / "README.md").write_text("model digest's\n")
    assert code.code_digest.__wrapped__(package) == first
    with open(package / "eval" / "teacher_forced.py", "a") as f:
        f.write("\nEDITED = True\n")
    assert code.code_digest.__wrapped__(package) != first
    (package / "new_module.py").write_text("")
    assert len({code.code_digest.__wrapped__(package), first}) == 2


def test_pin_keeps_what_each_cell_records(tmp_path):
    cell = tmp_path / "cell.yaml"
    assert code.planned_digest("auto", cell, "a" * 16) == "a" * 16
    assert code.planned_digest("pin", cell, "a" * 16) == "a" * 16  # not written yet: current
    cell.write_text(yaml.safe_dump({"cell": "c", "code_digest": "b" * 16}))
    assert code.planned_digest("pin", cell, "a" * 16) == "b" * 16
    assert code.planned_digest("auto", cell, "a" * 16) == "a" * 16
    cell.write_text(yaml.safe_dump({"cell": "c"}))  # written before digests existed
    assert code.planned_digest("pin", cell, "a" * 16) is None
    assert code.planned_digest("c" * 16, cell, "a" * 16) == "c" * 16


@pytest.mark.slow
def test_a_code_edit_plans_the_cells_again_and_pin_keeps_them(tmp_path):
    repo, work = copy_of_repo(tmp_path), tmp_path / "work"
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    cfg.update(families=["regression", "telemetry"], cache_dir=str(work / "cache"), panel=None,
               launcher=str(repo / "profiles/local/submitit.yaml"))
    (work / "config").mkdir(parents=True)
    (work / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    done = snakemake(repo, work, "--until", "cell_config", "prepare_config")
    assert done.returncode == 0, done.stderr[-3000:]
    fake_completed_cells(work)
    cells = {"cell=regression/ttt~off", "cell=telemetry/tau~1e-05/ttt~on", "cell=telemetry/tau~1e-05/ttt~off"}
    written = yaml.safe_load((work / "results/cells/regression/ttt~off/cell.yaml").read_text())
    assert len(written["code_digest"]) == 16
    assert planned(snakemake(repo, work, "-n")).get("run_cell", set()) == set()  # up to date

    # a table's code: no cell reruns
    with open(repo / "ttt/report/tables.py", "a") as f:
        f.write("\n# an edit of the tables\n")
    assert planned(snakemake(repo, work, "-n")).get("run_cell", set()) == set()

    # code a cell runs: every cell is planned again ...
    with open(repo / "ttt/eval/teacher_forced.py", "a") as f:
        f.write("\nEDITED = True\n")
    assert planned(snakemake(repo, work, "-n"))["run_cell"] == cells
    # ... unless its results are kept on purpose
    assert planned(snakemake(repo, work, "-n", "--config", "code_digest=pin")).get("run_cell", set()) == set()
