"""The Snakemake DAG on a reduced embedded-default matrix, through submitit's local executor."""
import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def snakemake(workdir: Path, *args, check=True):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "NO_TORCH_COMPILE": "1"}
    cmd = [str(BIN / "snakemake"), "--snakefile", str(REPO / "workflow" / "Snakefile"), "--directory",
           str(workdir), "--profile", str(REPO / "profiles" / "local"), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, cache):
    wd = tmp_path_factory.mktemp("pipeline")
    shutil.copytree(REPO / "config", wd / "config")
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    base.update(
        cache_dir=str(cache), launcher=str(REPO / "profiles" / "local" / "submitit.yaml"),
        families=["lr_grid", "regression", "telemetry", "ablation"],
        ablation={"variants": ["full", "no_conv", "no_target", "neither"], "duration_s": 4,
                  "seed": 6, "window_s": 2},
        lr_grid={**base["lr_grid"], "lrs": [1.0e-3, 1.0e30], "chunks": [8], "duration_s": 4},
        telemetry={**base["telemetry"], "duration_s": 4},
        # A family whose input lacks its audio: its cell must fail alone, with the reason (a
        # manifest that does not exist at all stops the run before any job: test_workflow_checks)
        regression={**base["regression"], "duration_s": 4, "manifest": str(wd / "broken.jsonl")})
    (wd / "broken.jsonl").write_text('{"path": "missing.wav", "duration": 4.0}\n')
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(base))
    done = snakemake(wd, check=False)
    # Every cell ran and every table is written; the failed cell makes the run exit non-zero, last.
    assert done.returncode != 0 and "1 of 11 cell(s) failed or timed out" in done.stderr, \
        done.stderr[-3000:]
    return wd


def read(path):
    with open(path) as f:
        return {r["cell"]: r for r in csv.DictReader(f)}


def test_reduced_matrix_tables(workdir):
    cells = read(workdir / "results/tables/cells.csv")
    assert {c for c in cells if not c.startswith("ablation/")} == {"lr_grid/lr~0.001/chunk~8/ttt~on", "lr_grid/lr~1e+30/chunk~8/ttt~on",
                          "lr_grid/ttt~off", "regression/ttt~off", "telemetry/tau~1e-05/ttt~on",
                          "telemetry/tau~1e-05/ttt~off"}
    ok = cells["lr_grid/lr~0.001/chunk~8/ttt~on"]
    assert ok["status"] == "ok" and ok["twin"] == "lr_grid/ttt~off"
    # what each row was computed from: model identity and the resolved TTT settings
    assert ok["model"] == "tiny" and len(ok["model_digest"]) == 16 and "tiny-control-" in ok["model_path"]
    assert (ok["ttt_lr"], ok["ttt_chunk_size"], ok["ttt_variant"]) == ("0.001", "8", "inplace")
    assert cells["lr_grid/ttt~off"]["ttt_lr"] == "" and cells["lr_grid/ttt~off"]["model_digest"] == ok["model_digest"]
    assert float(ok["perplexity_text_off"]) == float(cells["lr_grid/ttt~off"]["perplexity_text"])
    assert ok["best_lr_for_chunk"] == "True" and ok["updates"] == str(2 * ((50 - 1) // 8))
    boom = cells["lr_grid/lr~1e+30/chunk~8/ttt~on"]  # lr 1e30 without clipping: a result, not a failure
    assert boom["status"] == "diverged" and boom["diverged"] == "True"
    assert ok["divergence_boundary_lr"] == "1e+30"
    clip = cells["telemetry/tau~1e-05/ttt~on"]
    assert clip["clip_events"] == clip["updates"] != "0"  # forced clipping: every chunk clips
    bad = cells["regression/ttt~off"]
    assert bad["status"] == "failed" and "missing.wav: audio file not found" in bad["error"]
    assert set(read(workdir / "results/tables/lr_grid.csv")) == {
        c for c in cells if c.startswith("lr_grid/")}
    for plot in ("lr_grid", "long_form", "yarn", "figure5"):
        assert (workdir / "results/plots" / f"{plot}.png").stat().st_size > 1000
    metrics = workdir / "results/cells/lr_grid/lr~0.001/chunk~8/ttt~on/cell/metrics.json"
    assert metrics.is_file()


def test_ablation_family_twins_and_verdicts(workdir):
    """Paper Fig. 3c on the tiny default: each variant against the one TTT-off twin. Its target
    conv and W_target are trained, so dropping either changes the updates."""
    import json
    abl = read(workdir / "results/tables/ablation.csv")
    on = {f"ablation/ablation~{v}/ttt~on" for v in ("full", "no_conv", "no_target", "neither")}
    assert set(abl) == on | {"ablation/ttt~off"}
    for cell in on:
        row = abl[cell]
        assert row["status"] == "ok" and row["twin"] == "ablation/ttt~off"
        assert float(row["perplexity_text_delta"]) == float(row["perplexity_text"]) - float(
            abl["ablation/ttt~off"]["perplexity_text"])
        resolved = json.loads((workdir / "results/cells" / cell / "cell/metrics.json").read_text())[
            "config"]["resolved_ttt"]
        variant = cell.split("~")[1].split("/")[0]
        assert (resolved["target_conv"], resolved["target_projection"]) == {
            "full": (True, True), "no_conv": (False, True), "no_target": (True, False),
            "neither": (False, False)}[variant]
    ppl = {c.split("~")[1].split("/")[0]: float(abl[c]["perplexity_text"]) for c in on}
    assert ppl["no_conv"] != ppl["full"] and ppl["no_target"] != ppl["full"]
    assert ppl["neither"] != ppl["no_target"]
    assert float(abl["ablation/ablation~no_target/ttt~on"]["perplexity_text_vs_full"]) == \
        ppl["no_target"] - ppl["full"]
    verdicts = read_by(workdir / "results/tables/verdicts.csv", "signal")
    assert verdicts["run.completed"]["verdict"] == "fail"  # the regression cell's missing manifest
    assert "missing.wav" in verdicts["run.completed"]["explanation"]
    for signal in ("observability.telemetry_layers", "observability.counters_monotonic",
                   "observability.log_line", "correctness.embedding_plumbing", "stability.finite"):
        assert verdicts[signal]["verdict"] == "pass", verdicts[signal]
    assert (workdir / "results/tables/verdicts.rst").read_text().startswith("Verdicts")


def test_strict_run_fails_after_writing_the_verdicts(workdir):
    done = snakemake(workdir, "--config", "strict=true", check=False)
    text = done.stdout + done.stderr
    assert done.returncode != 0 and "strict_verdicts" in text, text[-2000:]
    assert "FAIL run.completed" in text
    assert (workdir / "results/tables/verdicts.csv").is_file()
    assert not (workdir / "results/tables/verdicts.strict").exists()
    done = snakemake(workdir, check=False)  # not strict: the failing gate is a result; only the
    text = done.stdout + done.stderr         # failed cell fails the run, after the verdicts
    assert "strict_verdicts" not in text and "rule cells_complete" in text
    assert (workdir / "results/tables/verdicts.csv").is_file()


def test_complete_run_plans_nothing_but_the_failed_cell_check(workdir):
    """After a complete run only the end-of-run check of the failed cell is planned: no cell,
    table or verdict reruns (the verdicts rule used to, at every invocation)."""
    done = snakemake(workdir, "-n")
    jobs = set(re.findall(r"^(?:local)?rule (\w+):", done.stdout, flags=re.M))
    assert jobs == {"cells_complete", "all"}, done.stdout[-3000:]


def read_by(path, key):
    with open(path) as f:
        return {r[key]: r for r in csv.DictReader(f)}


def test_rerun_of_one_cell_reruns_only_that_cell(workdir):
    """`snakemake results/cells/<cell>/status.json` reruns that cell alone; the next plain run
    only refreshes the tables."""
    cell = "results/cells/telemetry/tau~1e-05/ttt~off"
    target = workdir / cell
    (target / "status.json").unlink()
    shutil.rmtree(target / "cell")
    dry = snakemake(workdir, "-n", f"{cell}/status.json")
    assert (dry.stdout + dry.stderr).count("rule run_cell:") == 1
    snakemake(workdir, f"{cell}/status.json")
    after = snakemake(workdir, "-n")
    text = after.stdout + after.stderr
    assert text.count("rule run_cell:") == 0 and "rule aggregate:" in text
    snakemake(workdir, check=False)  # the regression cell still fails the run at the end
    assert read(workdir / "results/tables/cells.csv")["telemetry/tau~1e-05/ttt~off"]["status"] == "ok"


def test_schema_error_names_the_key_before_any_job(tmp_path):
    shutil.copytree(REPO / "config", tmp_path / "config")
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["lr_grid"]["chunks"] = ["big"]
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    done = snakemake(tmp_path, check=False)
    assert done.returncode != 0
    text = done.stdout + done.stderr
    assert "config lr_grid.chunks[0]: must be an integer, got 'big'" in text
    assert not (tmp_path / "results").exists()


def test_slurm_profile_dry_run_lists_the_full_matrix(tmp_path):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    done = subprocess.run([str(BIN / "snakemake"), "-n", "--profile", "profiles/slurm",
                           "--directory", str(tmp_path), "--snakefile", str(REPO / "workflow" / "Snakefile"),
                           "--configfile", str(REPO / "config/config.yaml"), str(REPO / "config/full.yaml"),
                           # the site values: a model that resolves (full.yaml's placeholder is
                           # refused up front) and the launcher file (relative to --directory)
                           "--config", "model=tiny", f"launcher={REPO}/profiles/slurm/submitit.yaml"],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-3000:]
    for path in ("long_form/duration~3600/ttt~on", "yarn/tokens~32768/ttt~off",
                 "lr_grid/lr~0.01/chunk~512/ttt~on", "short_form/duration~120/ttt~on"):
        assert f"results/cells/{path}/status.json" in text, path


def test_a_narrower_matrix_tables_its_cells_only(workdir):
    """Issue 25 item 1: the regression cell's folder (failed) stays on disk when the matrix no
    longer names it; the tables, verdicts and the run's status are the narrower matrix's, and the
    folder is listed as an orphan. Runs last: it leaves the workdir on the narrower matrix."""
    done = snakemake(workdir, "--config", "families=[lr_grid,telemetry,ablation]", check=False)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-3000:]
    assert "rule run_cell:" not in text  # nothing reran but the tables
    cells = read(workdir / "results/tables/cells.csv")
    assert len(cells) == 10 and not any(c.startswith("regression/") for c in cells)
    assert list(read(workdir / "results/tables/orphans.csv")) == ["regression/ttt~off"]
    assert (workdir / "results/cells/regression/ttt~off/status.json").is_file()  # kept, not tabled
    judged = {r["cell"] for r in csv.DictReader(open(workdir / "results/tables/verdicts_cells.csv"))}
    assert "regression/ttt~off" not in judged and set(cells) <= judged
    assert "10 cells ok or diverged" in (workdir / "results/tables/cells.complete").read_text()
