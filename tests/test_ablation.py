"""Paper Fig. 3c ablations of the TTT target: no conv (X₀ of the same token), no W_target
(identity projection), neither. Checked against computations written here from the equations and
against the independent token loop, in the parallel and streaming forms, plus checkpoint loading."""
import copy

import pytest
import torch

import ttt
from conftest import randomize_ttt_params, random_sequence, rel_err, tiny_lm
from reference_ttt import build_reference
from ttt.core.inplace_math import chunk_target

ABLATIONS = {"full": {}, "no_conv": {"target_conv": False},
             "no_target": {"target_projection": False},
             "neither": {"target_conv": False, "target_projection": False}}


def _explicit_target(x0, conv, w_target, padding, target_conv, target_projection):
    """V̂ of one chunk token by token: v_t = W_target (Σ_j conv_j x_{t+offset_j}), zero outside
    the chunk; without the conv the inner sum is x_t, without W_target the outer product is I."""
    N, C, d = x0.shape
    k = conv.shape[-1]
    out = torch.zeros(N, C, d, dtype=torch.float64)
    for n in range(N):
        for t in range(C):
            if not target_conv:
                v = x0[n, t].double()
            else:
                v = torch.zeros(d, dtype=torch.float64)
                for j in range(k):
                    src = t + j if padding == "right" else t - (k - 1) // 2 + j
                    if 0 <= src < C:
                        tap = conv[:, :, j] if padding == "right" else torch.diag(conv[:, 0, j])
                        v = v + tap.double() @ x0[n, src].double()
            out[n, t] = w_target.double() @ v if target_projection else v
    return out


@pytest.mark.parametrize("padding,k", [("right", 2), ("center", 5)])
@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_chunk_target_is_exactly_the_ablated_equation(name, padding, k):
    g = torch.Generator().manual_seed(0)
    d, C = 6, 7
    x0 = torch.randn(3, C, d, generator=g)
    conv = torch.randn(d, d if padding == "right" else 1, k, generator=g)
    w_target = torch.randn(d, d, generator=g)
    switches = {"target_conv": True, "target_projection": True, **ABLATIONS[name]}
    got = chunk_target(x0, conv if switches["target_conv"] else None,
                       w_target if switches["target_projection"] else None, padding)
    want = _explicit_target(x0, conv, w_target, padding, **switches)
    assert (got.double() - want).abs().max().item() <= 1e-5 * want.abs().max().item()
    if name == "neither":
        assert torch.equal(got, x0)  # V̂ = X₀ exactly
    full = _explicit_target(x0, conv, w_target, padding, True, True)
    if name != "full":  # the switch really changes the target
        assert (full - want).abs().max().item() > 1e-2


@pytest.mark.parametrize("padding,k", [("right", 2), ("center", 3)])
@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablated_model_matches_token_loop_parallel_and_streaming(name, padding, k, report):
    cfg = ttt.TTTConfig(layers=(1, 3), chunk_size=6, lr=0.5, conv_kernel_size=k,
                        conv_padding=padding, delta_clip_fro_norm=0.5, **ABLATIONS[name])
    upstream = tiny_lm(0)
    ours = randomize_ttt_params(ttt.apply_ttt(copy.deepcopy(upstream), cfg))
    ref = build_reference(upstream, ours, (1, 3), cfg)
    seq = random_sequence(2, 30)
    with torch.no_grad():
        parallel, want = ours.forward_text(seq)[1], ref.forward_text(seq)[1]
        with ours.streaming(2):
            streamed = torch.cat([ours.forward_text(seq[:, :, t:t + 4])[1] for t in range(0, 30, 4)], 2)
        base = upstream.forward_text(seq)[1]
    report("parallel_vs_token_loop", rel_err(parallel, want))
    assert rel_err(parallel, want) <= 1e-5
    assert rel_err(streamed, parallel) <= 1e-5
    assert rel_err(base, want) > 1e-3  # TTT changed the output: the comparison is not vacuous


def test_ablations_have_no_unused_parameters_and_differ_from_full():
    seq = random_sequence(1, 30)
    outs, keys = {}, {}
    for name, switches in ABLATIONS.items():
        lm = ttt.apply_ttt(tiny_lm(0), ttt.TTTConfig(layers=(1,), chunk_size=6, lr=0.5,
                                                     delta_clip_fro_norm=None, **switches))
        gating = ttt.ttt_layers(lm)[1]
        with torch.no_grad():  # the same non-trivial weights wherever the part exists
            g = torch.Generator().manual_seed(1)
            conv, wt = torch.randn(32, 32, 2, generator=g) / 8, torch.randn(32, 32, generator=g) / 6
            if gating.target_generator.conv_weight is not None:
                gating.target_generator.conv_weight.copy_(conv)
            if gating.target_generator.projection is not None:
                gating.target_generator.projection.copy_(wt)
            outs[name] = lm.forward_text(seq)[1]
        keys[name] = {k.split("target_generator.")[1] for k in lm.state_dict() if "target_generator" in k}
    assert keys == {"full": {"conv1d.conv.weight", "W_target.weight"}, "no_conv": {"W_target.weight"},
                    "no_target": {"conv1d.conv.weight"}, "neither": set()}
    for name in ("no_conv", "no_target", "neither"):
        assert rel_err(outs[name], outs["full"]) > 1e-3, name


def test_full_checkpoint_loads_into_an_ablated_model_and_ablated_one_into_full_fails(tmp_path):
    """Evaluating a trained full model with a part switched off drops that part's weights; a
    checkpoint trained without a part cannot silently load into a model that needs it."""
    from ttt.moshi.model import CheckpointError, _check_keys

    full_cfg = ttt.TTTConfig(layers=(1, 3), chunk_size=6, lr=0.5)
    full = randomize_ttt_params(ttt.apply_ttt(tiny_lm(0), full_cfg))
    sd = full.state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    cfg = ttt.TTTConfig(layers=(1, 3), chunk_size=6, lr=0.5, target_conv=False)
    ablated = ttt.apply_ttt(tiny_lm(7), cfg)
    _check_keys(tmp_path / "model.safetensors", ablated, shapes)  # no error
    result = ablated.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(ttt.ttt_layers(ablated)[1].target_generator.projection,
                       sd["transformer.layers.1.gating.target_generator.W_target.weight"])
    ref = build_reference(tiny_lm(0), ablated, (1, 3), cfg)
    seq = random_sequence(1, 25)
    with torch.no_grad():
        assert rel_err(ablated.forward_text(seq)[1], ref.forward_text(seq)[1]) <= 1e-5
    ablated_shapes = {k: tuple(v.shape) for k, v in ablated.state_dict().items()}
    with pytest.raises(CheckpointError, match="missing key.*conv1d"):
        _check_keys(tmp_path / "model.safetensors", full, ablated_shapes)


@pytest.mark.parametrize("field", ["target_conv", "target_projection"])
def test_switches_are_validated_and_round_trip(field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        ttt.TTTConfig(**{field: "no"})
    cfg = ttt.TTTConfig.from_dict({field: False})
    assert getattr(cfg, field) is False
    assert ttt.TTTConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("padding,k", [("right", 2), ("right", 3), ("center", 3)])
@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_cached_target_weights_give_the_two_step_target(name, padding, k, dtype, tol):
    """The block and parallel paths take (conv, projection) from the layer's cache, where a 'right'
    conv with W_target is one composed [d, k·d] matrix W_target·[conv taps] (k GEMMs per token,
    no separate projection). Against the float64 equation, it is as close as the two-step
    conv-then-project path in the same dtype."""
    cfg = ttt.TTTConfig(layers=(1,), chunk_size=9, conv_kernel_size=k, conv_padding=padding,
                        **ABLATIONS[name])
    gating = ttt.ttt_layers(randomize_ttt_params(ttt.apply_ttt(tiny_lm(0), cfg)))[1]
    tg = gating.target_generator
    x0 = torch.randn(4, 9, gating.dims[0], generator=torch.Generator().manual_seed(2))
    switches = {"target_conv": True, "target_projection": True, **ABLATIONS[name]}
    conv = tg.conv_weight if tg.conv_weight is not None else torch.zeros(1, 1, k)
    want = _explicit_target(x0, conv, tg.projection, padding, **switches)
    with torch.no_grad():
        cached = gating._target_weights(dtype)
        composed = chunk_target(x0.to(dtype), *cached, padding, dtype=dtype)
        two_step = chunk_target(x0.to(dtype), tg.conv_weight, tg.projection, padding, dtype=dtype)
    assert composed.dtype == dtype
    err_two_step = rel_err(two_step, want)
    assert err_two_step <= tol
    assert rel_err(composed, want) <= max(2 * err_two_step, tol / 10)
    if name == "full" and padding == "right":
        assert cached[1] is None and cached[0].shape == (x0.shape[-1], k * x0.shape[-1])
