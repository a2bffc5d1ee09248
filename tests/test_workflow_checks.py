"""The workflow as a user meets it (issue 15): up-front checks before any job, a changed config
reruns exactly the cells it changes, a login node without CUDA prepares and submits, drivers stay
light. Dry runs (`snakemake -n`) keep most of these fast."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LAUNCHER = str(REPO / "profiles" / "local" / "submitit.yaml")


def snakemake(workdir: Path, *args):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "NO_TORCH_COMPILE": "1"}
    cmd = [str(BIN / "snakemake"), "--snakefile", str(REPO / "workflow" / "Snakefile"), "--directory",
           str(workdir), "--profile", str(REPO / "profiles" / "local"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def write_config(workdir: Path, **changes) -> dict:
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg.update(cache_dir=str(workdir / "cache"), launcher=LAUNCHER)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = cfg
        for p in parents:
            node = node[p]
        node[last] = value
    (workdir / "config").mkdir(exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    return cfg


def planned(done) -> dict[str, set[str]]:
    """{rule: {wildcard values}} of a dry run's jobs."""
    jobs: dict[str, set[str]] = {}
    for block in re.split(r"\n(?=rule |localrule )", done.stdout):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if m:
            w = re.search(r"wildcards: (.*)", block)
            jobs.setdefault(m.group(1), set()).add(w.group(1) if w else "")
    return jobs


# ---- item 5: checked before any job is submitted ----------------------------------------------

BAD = {
    "ttt.chunk_size": ({"ttt__chunk_size": 0}, "config ttt.chunk_size: must be an integer >= 1"),
    "unknown ttt key": ({"ttt__learning_rate": 0.1}, "config ttt: unknown key(s) ['learning_rate']"),
    "NaN window": ({"short_form__window_s": float("nan")}, "config short_form.window_s: must be a finite"),
    "inf duration": ({"long_form__durations_s": [30, float("inf")]},
                     "config long_form.durations_s[1]: must be a finite"),
    "device": ({"device": "tpu9"}, "config device: must be cpu, cuda or cuda:N, got 'tpu9'"),
    "manifest": ({"regression__manifest": "/nowhere/m.jsonl"},
                 "config regression.manifest: /nowhere/m.jsonl: not found"),
    "launcher": ({"launcher": "/nowhere/submitit.yaml"}, "config launcher: /nowhere/submitit.yaml"),
    "clip_saturation": ({"lr_grid__clip_saturation": 5},
                        "config lr_grid.clip_saturation: must be null (off) or in (0, 1]"),
    "yarn tokens": ({"yarn__tokens": [16, 64]}, "config yarn.tokens: 16 is shorter than yarn.original_context"),
    "gate_override variant": ({"gate_override__ttt__variant": "nope"},
                              "config gate_override.ttt.variant: must be one of"),
    "hybrid on the trained In-Place default": (
        {"gate_override__model": None},
        "config gate_override.ttt.variant: ttt_mlp cannot load model tiny: its trained TTT layers are inplace"),
    "unedited model": ({"model": "/path/to/checkpoint"}, "config model: /path/to/checkpoint: no such checkpoint directory"),
    "panel of teacher-forced cells": ({"panel__family": "long_form"},
                                      "config panel.family: long_form runs mode 'teacher_forced'"),
    "panel length": ({"panel__duration_s": 99}, "config panel.duration_s: 99 is not one of short_form's"),
    # issue 25 item 2: a TTT that selects no layer would run as TTT off (exit 0, "ttt": false)
    "start_layer past the trained default": (
        {"ttt__start_layer": 99},
        "config ttt.start_layer: 99 selects no layer of a model with 4 layers (0-3); `enabled: false` "
        "runs without TTT; model tiny's trained TTT layers [1, 3] would go unused"),
    "layers out of range": ({"ttt__layers": [9]},
                            "config ttt.layers: [9] out of range for a model with 4 layers"),
    "negative compare threshold": ({"compare_thresholds": {"wer": -0.1}},
                                   "config compare_thresholds: compare threshold 'wer': must be a "
                                   "finite number >= 0 or null, got -0.1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_value_stops_the_run_with_one_line(tmp_path, case):
    changes, expected = BAD[case]
    write_config(tmp_path, **changes)
    done = snakemake(tmp_path)  # a real run, not a dry run: nothing may start
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("error:")]
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert len(errors) == 1 and expected in errors[0], errors or done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache").exists()


def test_full_config_as_shipped_is_refused_up_front(tmp_path):
    """config/full.yaml's `model: /path/to/checkpoint` placeholder: one line, no job."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    done = subprocess.run([str(BIN / "snakemake"), "-n", "--profile", "profiles/slurm", "--directory",
                           str(tmp_path), "--snakefile", str(REPO / "workflow" / "Snakefile"), "--configfile",
                           str(REPO / "config/config.yaml"), str(REPO / "config/full.yaml"),
                           "--config", f"launcher={REPO}/profiles/slurm/submitit.yaml"],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    assert "error: config model: /path/to/checkpoint: no such checkpoint directory" in done.stderr
    assert "run_cell" not in done.stdout


def test_panel_null_plans_no_panel_job(tmp_path):
    """`panel: null` (the schema's "no panel") plans the run without the listening panel, from a
    config file or from `--config panel=null` (a string to Snakemake) alike."""
    write_config(tmp_path, families=["short_form"])
    assert "panel_page" in planned(snakemake(tmp_path, "-n"))  # the default's panel pairs short_form
    for panel, extra in (({"panel": None}, ()), ({}, ("--config", "panel=null"))):
        write_config(tmp_path, families=["short_form"], **panel)
        done = snakemake(tmp_path, "-n", *extra)
        assert done.returncode == 0, done.stderr[-3000:]
        jobs = planned(done)
        assert "panel_page" not in jobs and "panel_collect" not in jobs, extra
        assert jobs["run_cell"] == {"cell=short_form/duration~8/ttt~on", "cell=short_form/duration~8/ttt~off"}


def test_config_null_on_the_command_line_is_null(tmp_path):
    """`--config compare_with=null` means no comparison, as in a config file: not a folder
    named "null" to compare with."""
    write_config(tmp_path, families=["regression"])
    done = snakemake(tmp_path, "-n", "--config", "compare_with=null")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compare" not in planned(done)


def test_default_recurrent_families_hold_a_full_copy_in_several_windows(tmp_path):
    """The default run's long_form and yarn cells read the positive control's recurrent input
    (README "The embedded default"), the only input on which its TTT has something to remember:
    each cell holds a whole copy of the first RECUR_PART_S seconds and ≥ 3 perplexity windows
    (a CI over one window is a single value); yarn's contexts stay YaRN extensions (scale > 1)."""
    from ttt.data.conversations import FRAME_RATE
    from ttt.data.demo import RECUR_GAP_S, RECUR_PART_S

    cfg = write_config(tmp_path, families=["long_form", "yarn"])
    done = snakemake(tmp_path, "--until", "cell_config")
    assert done.returncode == 0, done.stderr[-3000:]
    cells = [yaml.safe_load(p.read_text()) for p in (tmp_path / "results/cells").glob("**/cell.yaml")]
    per_family = {f: sum(c["family"] == f for c in cells) for f in ("long_form", "yarn")}
    stabilised = bool(cfg["long_form"].get("stabiliser"))
    assert per_family == {"long_form": (2 + stabilised) * len(cfg["long_form"]["durations_s"]),
                          "yarn": 2 * len(cfg["yarn"]["tokens"])}
    for c in cells:
        demo = c["data"]["demo"]
        assert demo.get("recurrent") is True, c["cell"]
        (duration,) = set(demo["durations"])
        assert duration >= 2 * RECUR_PART_S + RECUR_GAP_S, c["cell"]  # A | filler | A again
        if c["family"] == "long_form":  # the effect verdicts resample conversations
            assert len(demo["durations"]) == cfg["long_form"]["conversations"] >= 3, c["cell"]
        window = round(c["window_s"] * FRAME_RATE)
        assert int(duration * FRAME_RATE) // window >= 3, c["cell"]
        if c["family"] == "yarn":
            assert c["yarn"]["scale"] > 1 and c["yarn"]["context"] > c["yarn"]["original_context"]


# ---- item 4: a changed config is never ignored ------------------------------------------------

SMALL = {"families": ["lr_grid", "telemetry", "ablation"], "ablation__variants": ["full"],
         "lr_grid__lrs": [1.0e-3], "lr_grid__chunks": [8], "lr_grid__duration_s": 4}


def fake_completed_cells(workdir: Path) -> None:
    """Cell and preparation outputs as a finished run leaves them (newer than their configs):
    the staleness logic is Snakemake's planning, no cell has to compute for it."""
    for spec in (workdir / "results/prepare").glob("*/prepare.yaml"):
        (spec.parent / "prepared.json").write_text('{"items": [], "frames": []}\n')
    for cfg in (workdir / "results/cells").glob("**/cell.yaml"):
        (cfg.parent / "cell").mkdir(exist_ok=True)
        os.utime(cfg.parent / "cell")
        (cfg.parent / "status.json").write_text('{"status": "ok"}\n')


def configs_written(workdir: Path) -> None:
    done = snakemake(workdir, "--until", "cell_config", "prepare_config")
    assert done.returncode == 0, done.stderr[-3000:]
    fake_completed_cells(workdir)


def test_changed_config_reruns_exactly_the_cells_it_changes(tmp_path):
    write_config(tmp_path, **SMALL)
    configs_written(tmp_path)
    cells = {"cell=lr_grid/lr~0.001/chunk~8/ttt~on", "cell=lr_grid/ttt~off",
             "cell=telemetry/tau~1e-05/ttt~on", "cell=telemetry/tau~1e-05/ttt~off",
             "cell=ablation/ablation~full/ttt~on", "cell=ablation/ttt~off"}
    assert planned(snakemake(tmp_path, "-n")).get("run_cell", set()) == set()  # up to date

    # ttt.lr: the TTT-on cells that take the top-level lr (lr_grid and telemetry set their own)
    write_config(tmp_path, **SMALL, ttt__lr=0.002)
    assert planned(snakemake(tmp_path, "-n"))["run_cell"] == {"cell=ablation/ablation~full/ttt~on"}
    configs_written(tmp_path)
    assert planned(snakemake(tmp_path, "-n")).get("run_cell", set()) == set()

    # a family key: that family's cells only
    write_config(tmp_path, **SMALL, ttt__lr=0.002, telemetry__window_s=3)
    assert planned(snakemake(tmp_path, "-n"))["run_cell"] == {
        "cell=telemetry/tau~1e-05/ttt~on", "cell=telemetry/tau~1e-05/ttt~off"}
    configs_written(tmp_path)

    # the model: every cell, and the data preparation (its Mimi may differ)
    write_config(tmp_path, **SMALL, ttt__lr=0.002, telemetry__window_s=3, model="tiny-random:1")
    jobs = planned(snakemake(tmp_path, "-n"))
    assert jobs["run_cell"] == cells and len(jobs["prepare"]) == 3
    configs_written(tmp_path)
    assert planned(snakemake(tmp_path, "-n")).get("run_cell", set()) == set()
    written = yaml.safe_load((tmp_path / "results/cells/lr_grid/ttt~off/cell.yaml").read_text())
    assert written["model"] == "tiny-random:1" and len(written["model_digest"]) == 16


def test_same_path_new_checkpoint_content_reruns_cells(tmp_path):
    """Model identity is the files' content, not the path: a checkpoint rewritten in place reruns
    every cell; each file's digest is remembered beside it by (size, mtime, inode)."""
    from ttt.moshi.tiny import build_tiny_checkpoint
    from ttt.launch.preflight import model_identity

    ckpt = build_tiny_checkpoint(tmp_path / "ckpt")
    write_config(tmp_path, **SMALL, model=str(ckpt))
    configs_written(tmp_path)
    assert planned(snakemake(tmp_path, "-n")).get("run_cell", set()) == set()
    first = model_identity(str(ckpt), None, tmp_path / "cache" / "models")
    assert len(list(ckpt.glob(".*.sha256.json"))) == 4  # config, LM, tokenizer, Mimi
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(config, indent=2))  # same keys, new bytes
    assert model_identity(str(ckpt), None, tmp_path / "cache" / "models") != first
    assert len(planned(snakemake(tmp_path, "-n"))["run_cell"]) == 6


# ---- item 3: the login node never loads the LM ------------------------------------------------

def test_driver_loads_neither_torch_nor_moshi_and_stays_small(tmp_path, report):
    """`python -m ttt submit` (one per cell in flight on a login node) through a real local
    submitit job; the job fails (device cuda here, no CUDA) with one line in its status."""
    cell = tmp_path / "cell.yaml"
    cell.write_text(yaml.safe_dump({"cell": "rss", "device": "cuda", "cache_dir": str(tmp_path)}))
    # VmHWM: this process's own peak (ru_maxrss would carry pytest's, inherited through exec).
    probe = ("import re, runpy, sys\n"
             "sys.argv = ['ttt'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('ttt', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
             "print('RSS_MB', int(hwm) / 1024)\n"
             "print('HEAVY', sorted(m for m in ('torch', 'moshi', 'numpy') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", probe, "submit", "--config", str(cell), "--out",
                           str(tmp_path / "out"), "--status", str(tmp_path / "status.json"),
                           "--launcher", LAUNCHER, "--log-dir", str(tmp_path / "jobs")],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "NO_TORCH_COMPILE": "1"})
    rss = float(re.search(r"RSS_MB (\S+)", done.stdout).group(1))
    report("driver peak RSS (MB)", rss)
    assert "HEAVY []" in done.stdout, done.stdout
    assert rss <= 100, rss
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "failed"
    assert status["error"].startswith("ValueError: device: 'cuda' but CUDA is not available")


def test_run_cell_with_cuda_absent_is_one_line(tmp_path):
    cell = tmp_path / "cell.yaml"
    cell.write_text(yaml.safe_dump({"cell": "x", "device": "cuda", "cache_dir": str(tmp_path)}))
    done = subprocess.run([sys.executable, "-m", "ttt", "run-cell", "--config", str(cell), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "CUDA is not available" in done.stderr


def test_login_node_without_cuda_prepares_and_submits(tmp_path):
    """`device: cuda` on a host without CUDA (this one): preparation runs on the CPU with Mimi alone,
    the drivers submit, the cells fail in their jobs with one line, every table is written, and
    the run exits non-zero at the end."""
    launcher = tmp_path / "gpu-launcher.yaml"  # local jobs see GPU 0 (none here): preflight lets it by
    launcher.write_text(Path(LAUNCHER).read_text() + "gpus_per_node: 1\n")
    write_config(tmp_path, families=["telemetry"], device="cuda", telemetry__duration_s=3,
                 launcher=str(launcher))
    done = snakemake(tmp_path)
    assert done.returncode != 0 and "cells_complete" in done.stderr, done.stderr[-3000:]
    assert "2 of 2 cell(s) failed or timed out" in done.stderr
    (prepared,) = (tmp_path / "results/prepare").glob("*/prepared.json")
    marker = json.loads(prepared.read_text())
    assert marker["device"] == "cpu" and marker["frames"] == [38]
    log = prepared.with_name("prepare.log").read_text()
    assert "preparing on the CPU" in log
    for cell in ("telemetry/tau~1e-05/ttt~on", "telemetry/tau~1e-05/ttt~off"):
        status = json.loads((tmp_path / "results/cells" / cell / "status.json").read_text())
        assert status["status"] == "failed" and "CUDA is not available" in status["error"]
    for table in ("cells.csv", "telemetry.csv", "verdicts.csv"):
        assert (tmp_path / "results/tables" / table).is_file()
    again = planned(snakemake(tmp_path, "-n"))
    assert set(again) <= {"cells_complete", "all"}, again  # only the failing check is left
