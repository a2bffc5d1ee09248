import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from ttt.moshi.tiny import TINY_LM_KWARGS, tiny_lm  # noqa: E402,F401

CARD = TINY_LM_KWARGS["card"]


def random_sequence(batch: int, length: int, seed: int = 1, card: int = CARD) -> torch.Tensor:
    """Token ids [B, 17, T] valid for every stream of the tiny model (input of forward_text)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, card, (batch, 17, length), generator=g)


def randomize_ttt_params(lm, seed: int = 3, conv_scale: float = 0.5, target_scale: float = 0.5):
    """Give the target generator non-trivial weights so TTT changes the output visibly."""
    from ttt import ttt_layers
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in ttt_layers(lm).values():
            tg = layer.target_generator
            w = tg.conv_weight  # None when an ablation switched the part off
            if w is not None:
                w.copy_(torch.randn(w.shape, generator=g).to(w) * conv_scale / w.shape[1] ** 0.5)
            wt = tg.projection
            if wt is not None:
                wt.copy_(torch.randn(wt.shape, generator=g).to(wt) * target_scale / wt.shape[1] ** 0.5)
    return lm


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b| over finite entries (moshi fills invalid logits with NaN)."""
    a, b = a.double(), b.double()
    ok = torch.isfinite(a) & torch.isfinite(b)
    assert torch.equal(torch.isfinite(a), torch.isfinite(b)), "NaN patterns differ"
    return ((a - b).abs()[ok].max() / b.abs()[ok].max()).item()


def directional_derivatives(loss, p: torch.Tensor, generator: torch.Generator, eps: float):
    """(autograd, central finite difference) of ``loss()`` along one random direction of ``p``;
    ``p.grad`` must already hold the gradient of ``loss()``."""
    assert p.grad is not None and p.grad.abs().max() > 0
    direction = torch.randn(p.shape, dtype=p.dtype, generator=generator)
    with torch.no_grad():
        p.add_(eps * direction)
        up = loss().item()
        p.sub_(2 * eps * direction)
        down = loss().item()
        p.add_(eps * direction)
    return (p.grad * direction).sum().item(), (up - down) / (2 * eps)


@pytest.fixture
def report(request):
    """Print a measured number so it shows in the pytest summary (-rP) and the CI log."""
    def _report(name, value):
        print(f"[measure] {request.node.name}: {name} = {value:.3e}")
    return _report


# TTT settings for cells on the embedded default: every other layer, small chunks, mild updates.
CELL_TTT = {"start_layer": 1, "layer_frequency": 2, "chunk_size": 8, "lr": 0.01,
            "delta_clip_fro_norm": 1.0, "init_std": 0.5}


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """One cache (tiny checkpoint, demo data, Mimi codes) shared by every cell test."""
    return tmp_path_factory.mktemp("cache")


def make_cell(cache, name, durations, **overrides):
    from ttt.eval.cell import CellConfig
    base = dict(cell=name, model="tiny-random", data={"demo": {"durations": durations, "seed": 3}},
                ttt=CELL_TTT, window_s=2.0, cache_dir=str(cache))
    return CellConfig.from_dict({**base, **overrides})


def apt_install_or_skip(packages, installed, what: str) -> None:
    """Install Debian ``packages`` when ``installed()`` is false (root with apt-get only, as in CI),
    else skip the test naming them. For the speech tests: Festival and its voices are real
    components, not pip packages."""
    import shutil
    import subprocess
    if installed():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"Debian {what} missing and not root to install them: apt-get install "
                    + " ".join(packages))
    done = subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install "
                          "-y -qq --no-install-recommends " + " ".join(packages),
                          shell=True, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not installed():
        pytest.skip(f"cannot install {what}: {(done.stderr or done.stdout)[-300:]}")
