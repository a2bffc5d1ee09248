"""YaRN: frequencies vs an independent HF-formula implementation, streaming past the original
window, composition with TTT."""
import copy
import math

import numpy as np
import pytest
import torch

import ttt
from ttt.moshi.yarn import yarn_inv_freq
from conftest import randomize_ttt_params, random_sequence, rel_err, tiny_lm


def hf_yarn_reference(head_dim, base, scale, original, beta_fast=32.0, beta_slow=1.0):
    """HF transformers' _compute_yarn_parameters, rewritten here in numpy float64."""
    def corr(rot):
        return head_dim * math.log(original / (rot * 2 * math.pi)) / (2 * math.log(base))
    low = max(math.floor(corr(beta_fast)), 0)
    high = min(math.ceil(corr(beta_slow)), head_dim - 1)
    if low == high:
        high += 0.001
    pos_freqs = base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (scale * pos_freqs)
    ramp = np.clip((np.arange(head_dim // 2) - low) / (high - low), 0, 1)
    extrapolation_factor = 1 - ramp
    inv_freq = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor
    attention = 0.1 * math.log(scale) + 1.0 if scale > 1 else 1.0
    return inv_freq, attention


@pytest.mark.parametrize("head_dim,base,scale,original", [
    (128, 10000.0, 2.7, 3000), (128, 10000.0, 5.5, 3000), (128, 10000.0, 10.9, 3000),
    (64, 10000.0, 4.0, 2048), (8, 10000.0, 4.0, 32), (128, 500000.0, 8.0, 8192), (32, 10.0, 16.0, 64),
])
def test_frequencies_and_attention_factor_match_hf_yarn(head_dim, base, scale, original):
    cfg = ttt.YarnConfig(scale=scale, original_context=original)
    want, attention = hf_yarn_reference(head_dim, base, scale, original)
    got = yarn_inv_freq(head_dim, base, cfg).double().numpy()
    assert np.max(np.abs(got - want) / want) <= 1e-6
    assert cfg.attention_factor == pytest.approx(attention, rel=1e-12)


def test_scale_one_equals_upstream(report):
    upstream = tiny_lm(0)
    ours = ttt.apply_yarn(tiny_lm(0), ttt.YarnConfig(scale=1.0, original_context=256))
    seq = random_sequence(2, 60)
    with torch.no_grad():
        err = rel_err(ours.forward_text(seq)[1], upstream.forward_text(seq)[1])
    report("max_rel_err_scale1_vs_upstream", err)
    assert err <= 1e-6


class IndependentRope(torch.nn.Module):
    """Complex-number rope in float64 with given frequencies and q/k factor (test-only)."""

    def __init__(self, inv_freq, factor):
        super().__init__()
        self.inv_freq, self.factor = torch.as_tensor(inv_freq, dtype=torch.float64), factor

    def forward(self, q, k, offset, time_before_heads=False):
        B, H, T, D = q.shape
        pos = offset.double().view(-1, 1) + torch.arange(T, dtype=torch.float64)
        rot = torch.polar(torch.ones(1, dtype=torch.float64), pos[:, None, :, None] * self.inv_freq)

        def turn(x):
            c = torch.view_as_complex(x.double().reshape(B, H, T, D // 2, 2).contiguous())
            return (torch.view_as_real(c * rot).reshape(B, H, T, D) * self.factor).to(x.dtype)
        return turn(q), turn(k)


def test_tiny_streaming_past_original_window_equals_independent_rope(report):
    cfg = ttt.YarnConfig(scale=4.0, original_context=32)
    ours = ttt.apply_yarn(tiny_lm(0, context=32), cfg)
    ref = tiny_lm(0, context=32)
    inv_freq, factor = hf_yarn_reference(32 // 4, 10000.0, 4.0, 32)
    rope = IndependentRope(inv_freq, factor)
    for layer in ref.transformer.layers:
        layer.self_attn.rope = rope
        layer.self_attn.context = 128
    seq = random_sequence(1, 120)
    with torch.no_grad(), ours.streaming(1):
        caps = {layer.self_attn._streaming_state.kv_cache.capacity for layer in ours.transformer.layers}
        streamed = torch.cat([ours.forward_text(seq[:, :, t:t + 1])[1] for t in range(120)], dim=2)
    assert caps == {128}
    with torch.no_grad():
        want = ref.forward_text(seq)[1]
    err = rel_err(streamed, want)
    report("max_rel_err_stream_vs_independent_rope", err)
    assert err <= 1e-5
    # Not vacuous: the plain rope with the original 32-token window gives other logits.
    with torch.no_grad():
        assert rel_err(tiny_lm(0, context=32).forward_text(seq)[1], want) > 1e-3


@pytest.mark.parametrize("order", ["ttt_then_yarn", "yarn_then_ttt"])
@pytest.mark.parametrize("factor", [8, 16])
def test_ttt_on_yarn_first_chunk_equals_ttt_off(order, factor, report):
    original = 16
    length = factor * original
    chunk = length // 2
    ycfg = ttt.YarnConfig(scale=float(factor), original_context=original)
    tcfg = ttt.TTTConfig(layers=(1, 3), chunk_size=chunk, lr=0.5, delta_clip_fro_norm=None)
    off = ttt.apply_yarn(tiny_lm(0, context=original), ycfg)
    on = tiny_lm(0, context=original)
    if order == "ttt_then_yarn":
        on = ttt.apply_yarn(randomize_ttt_params(ttt.apply_ttt(on, tcfg)), ycfg)
    else:
        on = randomize_ttt_params(ttt.apply_ttt(ttt.apply_yarn(on, ycfg), tcfg))
    seq = random_sequence(1, length)
    with torch.no_grad():
        a, b = on.forward_text(seq)[1], off.forward_text(seq)[1]
    err = rel_err(a[:, :, :chunk], b[:, :, :chunk])
    report(f"first_chunk_rel_err_T{length}", err)
    assert err < 1e-4
    assert rel_err(a[:, :, chunk:], b[:, :, chunk:]) > 1e-3  # TTT really acts after the chunk


@pytest.mark.parametrize("kwargs,field", [
    (dict(scale=0.5), "scale"), (dict(beta_fast=1.0, beta_slow=1.0), "beta_fast"),
    (dict(scale=2.0, original_context=100, context=50), "context"), (dict(ramp="ntk"), "ramp"),
    (dict(original_context=0), "original_context"), (dict(beta_slow=0), "beta_slow"),
])
def test_bad_yarn_configs(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        ttt.YarnConfig(**kwargs)


def test_from_seeds_and_resolved_context():
    cfg = ttt.YarnConfig.from_seeds({"scale": 5.5, "original_max_seq_len": 3000, "beta_fast": 32,
                                     "beta_slow": 1, "mscale": 1, "mscale_all_dim": 0})
    assert cfg.ramp == "seeds" and cfg.resolved_context == 16500 and cfg.attention_factor == 1.0
    with pytest.raises(ValueError, match="mscale"):
        ttt.YarnConfig.from_seeds({"scale": 2, "mscale": 0.7})
    assert ttt.YarnConfig(scale=2.0, context=8192).resolved_context == 8192


def test_seeds_ramp_differs_from_standard_and_is_documented_choice():
    std = yarn_inv_freq(128, 10000.0, ttt.YarnConfig(scale=5.5))
    seeds = yarn_inv_freq(128, 10000.0, ttt.YarnConfig(scale=5.5, ramp="seeds"))
    base = yarn_inv_freq(128, 10000.0, ttt.YarnConfig(scale=1.0))
    changed_std = int((~torch.isclose(std, base, rtol=1e-6)).sum())
    changed_seeds = int((~torch.isclose(seeds, base, rtol=1e-6)).sum())
    assert changed_seeds < changed_std


def test_yarn_only_touches_main_transformer():
    lm = ttt.apply_yarn(tiny_lm(0), ttt.YarnConfig(scale=2.0, original_context=256))
    assert all(layer.self_attn.rope is lm.transformer.rope for layer in lm.transformer.layers)
    assert all(layer.self_attn.context == 512 for layer in lm.transformer.layers)
    depformer = tiny_lm(0).depformer
    assert [l.self_attn.context for l in lm.depformer.layers] == [l.self_attn.context for l in depformer.layers]
    with pytest.raises(RuntimeError, match="already"):
        ttt.apply_yarn(lm, ttt.YarnConfig(scale=2.0, original_context=256))
    copy.deepcopy(lm)
