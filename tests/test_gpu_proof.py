"""The CUDA-graph proof (gpu/cuda_graph_proof.py) as a test: TTT updates under moshi's CUDA graphs,
graph vs eager, no recompiles, plain LMGen refused. Needs a CUDA device (the device machine:
``python -m pytest -m gpu tests/test_gpu_proof.py``); skipped with the reason elsewhere."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parent.parent
PROOF = ROOT / "gpu" / "cuda_graph_proof.py"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA device: run on a GPU machine (gpu/README.md)")
def test_cuda_graph_proof_passes_every_check(tmp_path):
    out = Path(os.environ.get("TTT_GPU_PROOF_OUT") or tmp_path / "proof.json")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, str(PROOF), str(out)], capture_output=True, text=True,
                          timeout=1200, env=env, cwd=ROOT)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    result = json.loads(out.read_text())
    assert result["checks"] and all(result["checks"].values()), result["checks"]
    assert result["device"] == torch.cuda.get_device_name()
