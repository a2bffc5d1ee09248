"""gpu/config-7b.yaml, the config gpu/run_7b_workflow.sh runs on the GPU machine: it must pass the
schema and preflight as shipped (device cuda, the GPU launcher) and plan exactly its nine
teacher-forced cells, with no job needing what that machine lacks (the ASR stage's
faster-whisper, the listening panel). A dry run over a tiny checkpoint directory standing in for
the 7B one (preflight reads headers only; nothing runs)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from ttt.moshi.tiny import build_tiny_checkpoint

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CELLS = {f"long_form/duration~{d}/ttt~{on}" for d in (30, 120) for on in ("on", "off")} | {
    f"{f}/ttt~{on}" for f in ("yarn/tokens~8192", "telemetry/tau~1e-05") for on in ("on", "off")
} | {"regression/ttt~off"}


def test_gpu_config_plans_its_cells_and_nothing_the_gpu_machine_lacks(tmp_path):
    model = build_tiny_checkpoint(tmp_path / "moshiko")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "NO_TORCH_COMPILE": "1"}
    done = subprocess.run(
        [str(BIN / "snakemake"), "-n", "--profile", "profiles/local", "--directory", str(tmp_path),
         "--snakefile", str(REPO / "workflow/Snakefile"), "--configfile",
         str(REPO / "config/config.yaml"), str(REPO / "gpu/config-7b.yaml"), "--config",
         f"model={model}", f"launcher={REPO}/gpu/launcher-local-gpu.yaml", "--scheduler", "greedy"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rules = set(re.findall(r"^(?:local)?rule (\w+):", done.stdout, re.M))
    assert not rules & {"asr", "asr_config", "panel_page"}, rules
    planned = set(re.findall(r"wildcards: cell=(\S+)", done.stdout))
    assert planned == CELLS
    cfg = yaml.safe_load((REPO / "gpu/config-7b.yaml").read_text())
    assert (cfg["device"], cfg["dtype"]) == ("cuda", "bfloat16")
    assert cfg["ttt"] == {"start_layer": 0, "layer_frequency": 6, "chunk_size": 256, "lr": 1.0e-3,
                          "delta_clip_fro_norm": 1.0e-5, "init_std": 0.02}  # production flags
