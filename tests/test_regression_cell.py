"""The regression cell (``check_upstream``): our model vs upstream moshi's loader on the same file,
the two never resident together, upstream's model never built with random weights."""
import pytest
import torch

from conftest import make_cell
from ttt.eval.cell import cell_items, run_cell
from ttt.eval.checks import _upstream_lm, upstream_regression
from ttt.data.codes import conversation_codes
from ttt.moshi.model import load_checkpoint, resolve_model


@pytest.mark.parametrize("model", ["tiny", "tiny-random"])
def test_regression_cell_is_bitwise_against_upstream(cache, tmp_path, model):
    """'tiny' is TTT-trained (moshi's loader refuses its TTT tensors: the LMModel path),
    'tiny-random' a plain checkpoint (get_moshi_lm itself)."""
    cfg = make_cell(cache, "reg", [4.0], model=model, ttt={"enabled": False}, check_upstream=True)
    metrics = run_cell(cfg, tmp_path / "cell", log=lambda m: None)
    reg = metrics["regression"]
    assert reg["bitwise_equal"] is True and reg["max_abs_diff"] == 0.0
    assert reg["steps"] == 50  # 4 s at 12.5 Hz, within one block
    assert ("TTT tensors left out" in reg["upstream_loader"]) == (model == "tiny")


def test_regression_sees_a_changed_weight_and_leaves_ours_untouched(cache):
    """The comparison still compares (our logits are taken before upstream's model exists), and
    our model comes out of the check bitwise as it went in."""
    cfg = make_cell(cache, "reg", [4.0], model="tiny", ttt={"enabled": False}, check_upstream=True)
    bundle = load_checkpoint(resolve_model("tiny", cache / "models"), ttt={"enabled": False})
    first = conversation_codes(bundle.mimi, bundle.tokenizer, cell_items(cfg, cache)[0],
                               cache / "codes", bundle.mimi_id)[:, :, :cfg.block]
    before = {k: v.clone() for k, v in bundle.lm.state_dict().items()}
    assert upstream_regression(cfg, bundle, first)["bitwise_equal"] is True
    after = bundle.lm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        bundle.lm.transformer.layers[0].gating.linear_out.weight.add_(1e-3)
    reg = upstream_regression(cfg, bundle, first)
    assert reg["bitwise_equal"] is False and reg["max_abs_diff"] > 0


def test_upstream_model_of_a_ttt_checkpoint_is_never_built_random(cache):
    """A random-weight LMModel draws from the global generator while it initialises; the model
    built on the meta device and assigned the file's tensors draws nothing (and equals the file)."""
    cfg = make_cell(cache, "reg", [4.0], model="tiny", ttt={"enabled": False}, check_upstream=True)
    sources = resolve_model("tiny", cache / "models")
    from ttt.moshi.model import _sources
    src = _sources(sources, None, cache / "models")
    torch.manual_seed(1)
    state = torch.random.get_rng_state()
    plain, loader = _upstream_lm(cfg, src)
    assert "TTT tensors left out" in loader
    assert torch.equal(torch.random.get_rng_state(), state)
    from safetensors.torch import load_file
    stored = load_file(str(src.lm_weights))
    for key, value in plain.state_dict().items():
        assert torch.equal(value, stored[key].to(value.dtype)), key


def test_token_cross_entropy_in_row_slices_is_the_one_call():
    """The teacher-forced loss in slices of rows (bounded memory) equals one call, bitwise."""
    import torch.nn.functional as F
    from ttt.eval import metrics
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 700, 50, generator=g).to(torch.bfloat16)
    target = torch.randint(0, 60, (2, 3, 700), generator=g)
    want = F.cross_entropy(logits.reshape(-1, 50).float(), target.reshape(-1).clamp_max(49),
                           reduction="none").view(target.shape)
    assert logits.reshape(-1, 50).shape[0] > 2 * metrics.CE_ROWS  # several slices and a tail
    assert torch.equal(metrics._token_ce(logits, target), want)
