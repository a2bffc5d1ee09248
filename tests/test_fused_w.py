"""The fused pass over W after an update (ttt/core/fused_w.py): the model-dtype copy bitwise, the
two norms equal to the unfused path within fp32 summation order. On CUDA it runs the Triton
kernel; on a CPU it runs under Triton's interpreter in a process of its own when Triton is
installed (torch's CPU wheels do not bring it: skipped then); the interpreter's downcast
truncates, so there the copy is checked to within one unit in the last place."""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from ttt.core.chunk_stats import weight_distance

CHECK = r"""
import sys, torch
from ttt.core.fused_w import fused_copy_and_norms
from ttt.core.chunk_stats import weight_distance
device = sys.argv[1]
torch.manual_seed(0)
for B, d, hid, dtype in [(1, 48, 200, torch.bfloat16), (2, 33, 517, torch.float16),
                         (1, 16, 64, None)] + ([(1, 4096, 11264, torch.bfloat16)] if device == "cuda" else []):
    w0 = torch.randn(d, hid, device=device)
    w = (w0 + 1e-3 * torch.randn(B, d, hid, device=device)).contiguous()
    out = torch.empty(B, d, hid, device=device, dtype=dtype) if dtype else None
    norm, drift = torch.zeros(B, device=device), torch.zeros(B, device=device)
    fused_copy_and_norms(w, w0, out, norm, drift)
    if out is not None and device == "cuda":
        assert torch.equal(out, w.to(dtype)), (B, d, hid)
    elif out is not None:  # the interpreter's downcast truncates (the GPU's rounds to nearest)
        ulp = torch.finfo(dtype).eps * w.abs() + torch.finfo(dtype).tiny  # subnormals
        assert ((out.float() - w).abs() <= ulp).all(), (B, d, hid)
    ref_norm = w.double().flatten(1).norm(dim=1)
    ref_drift = (w.double() - w0.double()).flatten(1).norm(dim=1)
    assert torch.allclose(norm.double(), ref_norm, rtol=2e-6, atol=0), (norm, ref_norm)
    assert torch.allclose(drift.double(), ref_drift, rtol=2e-5, atol=0), (drift, ref_drift)
    # as close to float64 as the unfused path it replaces
    old = weight_distance(w, w0).double()
    assert (drift.double() - ref_drift).abs().max() <= 4 * (old - ref_drift).abs().max() + 1e-6 * ref_drift.max()
print("ok")
"""


def _run(device: str, env: dict) -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""), **env}
    proc = subprocess.run([sys.executable, "-c", CHECK, device], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton not installed")
def test_fused_pass_under_the_triton_interpreter():
    _run("cpu", {"TRITON_INTERPRET": "1"})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_pass_on_cuda():
    _run("cuda", {})


def test_unfused_path_is_the_old_one():
    """Off CUDA the state's update epilogue is the unfused path, bitwise."""
    from ttt.core.fused_w import apply_copy_and_norms
    torch.manual_seed(1)
    w0 = torch.randn(24, 70)
    w = w0 + 1e-2 * torch.randn(2, 24, 70)
    out, norm, drift = torch.empty(2, 24, 70, dtype=torch.bfloat16), torch.zeros(2), torch.zeros(2)
    apply_copy_and_norms(w, w0, out, norm, drift)
    assert torch.equal(out, w.to(torch.bfloat16))
    assert torch.equal(norm, torch.linalg.vector_norm(w, dim=(-2, -1)))
    assert torch.equal(drift, weight_distance(w, w0))
