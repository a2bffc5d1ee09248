"""In-Place TTT core: equivalence with upstream moshi and with an independent token-by-token loop."""
import copy
import dataclasses

import pytest
import torch
from hypothesis import given, settings, strategies as st

import ttt
from conftest import randomize_ttt_params, random_sequence, rel_err, tiny_lm
from reference_ttt import build_reference

T = 40


def make_pair(cfg: ttt.TTTConfig, seed: int = 0, **lm_overrides):
    """(upstream model, our TTT model with random target weights) sharing all other weights."""
    upstream = tiny_lm(seed, **lm_overrides)
    ours = randomize_ttt_params(ttt.apply_ttt(copy.deepcopy(upstream), cfg))
    return upstream, ours


def text_logits(lm, seq):
    with torch.no_grad():
        return lm.forward_text(seq)[1]


def stream_logits(lm, seq, blocks):
    """forward_text in streaming mode over consecutive blocks of the given sizes."""
    outs, t = [], 0
    with torch.no_grad(), lm.streaming(seq.shape[0]):
        for size in blocks:
            outs.append(lm.forward_text(seq[:, :, t:t + size])[1])
            t += size
    assert t == seq.shape[-1]
    return torch.cat(outs, dim=2)


# ---- TTT off ---------------------------------------------------------------------------------

def test_disabled_is_bitwise_upstream():
    upstream = tiny_lm(0)
    ours = ttt.apply_ttt(tiny_lm(0), ttt.TTTConfig(enabled=False))
    assert not ttt.ttt_layers(ours)
    codes = random_sequence(2, T)
    with torch.no_grad():
        a, b = upstream(codes), ours(codes)
    assert torch.equal(a.text_logits.nan_to_num(), b.text_logits.nan_to_num())
    assert torch.equal(a.logits.nan_to_num(), b.logits.nan_to_num())
    assert torch.equal(stream_logits(upstream, codes, [1] * T), stream_logits(ours, codes, [1] * T))


def test_ttt_disabled_context_gives_upstream_then_restores_ttt():
    upstream = tiny_lm(0)
    _, ours = make_pair(ttt.TTTConfig(layers=(0, 2), chunk_size=4, lr=1.0))
    seq = random_sequence(1, T)
    with_ttt = text_logits(ours, seq)
    from ttt.moshi.surgery import ttt_disabled
    with ttt_disabled(ours):
        assert torch.equal(text_logits(ours, seq), text_logits(upstream, seq))
        assert torch.equal(stream_logits(ours, seq, [3] * 13 + [1]), stream_logits(upstream, seq, [3] * 13 + [1]))
    assert torch.equal(text_logits(ours, seq), with_ttt)


def test_remove_ttt_restores_upstream_bitwise():
    upstream = tiny_lm(0)
    ours = ttt.apply_ttt(tiny_lm(0), ttt.TTTConfig(layers=(0, 2), chunk_size=4, lr=1.0))
    seq = random_sequence(1, T)
    assert not torch.equal(text_logits(ours, seq), text_logits(upstream, seq))
    ttt.remove_ttt(ours)
    assert not ttt.ttt_layers(ours) and not hasattr(ours, "ttt_tap")
    assert ours.state_dict().keys() == upstream.state_dict().keys()
    assert torch.equal(text_logits(ours, seq), text_logits(upstream, seq))
    assert torch.equal(stream_logits(ours, seq, [1] * T), stream_logits(upstream, seq, [1] * T))
    ttt.apply_ttt(ours, ttt.TTTConfig(layers=(1,)))  # and it can be applied again


# ---- parallel form vs the independent loop ---------------------------------------------------

CASES = [
    # (conv_padding, kernel, clip tau, chunk)
    ("right", 2, None, 8),
    ("right", 2, 0.05, 8),
    ("center", 5, None, 8),
    ("center", 5, 0.05, 8),
    ("right", 2, None, 1),
    ("center", 3, 0.05, 7),    # 7 does not divide T
    ("right", 3, None, 64),    # chunk longer than the sequence
]


@pytest.mark.parametrize("padding,kernel,tau,chunk", CASES)
def test_parallel_matches_token_loop(padding, kernel, tau, chunk, report):
    cfg = ttt.TTTConfig(layers=(1, 3), chunk_size=chunk, lr=0.5, conv_kernel_size=kernel,
                        conv_padding=padding, delta_clip_fro_norm=tau)
    upstream, ours = make_pair(cfg)
    ref = build_reference(upstream, ours, (1, 3), cfg)
    seq = random_sequence(2, T)
    got, want, base = text_logits(ours, seq), text_logits(ref, seq), text_logits(upstream, seq)
    err = rel_err(got, want)
    report("max_rel_err_vs_token_loop", err)
    assert err <= 1e-5
    if chunk < T:  # the comparison is not vacuous: TTT really changed the output
        assert rel_err(base, want) > 1e-3
    if tau is not None:
        clipped = [c for layer in ref.ref_layers.values() for row in layer.clipped for c in row]
        assert any(clipped), "tau too large for this case to exercise clipping"


def test_lm_forward_matches_token_loop(report):
    """Through lm(codes) (delays, depformer): text and audio logits."""
    cfg = ttt.TTTConfig(layers=(0, 2), chunk_size=6, lr=0.5, delta_clip_fro_norm=0.1)
    upstream, ours = make_pair(cfg)
    ref = build_reference(upstream, ours, (0, 2), cfg)
    codes = random_sequence(1, 30)
    with torch.no_grad():
        a, b = ours(codes), ref(codes)
    report("text", rel_err(a.text_logits, b.text_logits))
    report("audio", rel_err(a.logits, b.logits))
    assert rel_err(a.text_logits, b.text_logits) <= 1e-5
    assert rel_err(a.logits, b.logits) <= 1e-5


def test_first_chunk_identical_to_ttt_off_and_causal():
    cfg = ttt.TTTConfig(layers=(0, 1, 2, 3), chunk_size=8, lr=1.0, delta_clip_fro_norm=None)
    upstream, ours = make_pair(cfg)
    seq = random_sequence(1, T)
    on, off = text_logits(ours, seq), text_logits(upstream, seq)
    assert torch.equal(on[:, :, :8], off[:, :, :8])
    assert not torch.allclose(on[:, :, 8:], off[:, :, 8:])
    # Causality: changing tokens from t on leaves logits before t unchanged, also across chunks.
    for t in (5, 8, 13, 24):
        other = seq.clone()
        other[:, :, t:] = random_sequence(1, T - t, seed=9)
        changed = text_logits(ours, other)
        assert torch.equal(changed[:, :, :t], on[:, :, :t]), t
        assert not torch.allclose(changed[:, :, t:], on[:, :, t:])


# ---- streaming ---------------------------------------------------------------------------------

def test_streaming_one_token_matches_parallel(report):
    cfg = ttt.TTTConfig(layers=(1, 3), chunk_size=8, lr=0.5, conv_padding="center",
                        conv_kernel_size=5, delta_clip_fro_norm=0.05)
    _, ours = make_pair(cfg)
    seq = random_sequence(2, T)
    err = rel_err(stream_logits(ours, seq, [1] * T), text_logits(ours, seq))
    report("max_rel_err_stream1_vs_parallel", err)
    assert err <= 1e-5


@settings(max_examples=15, deadline=None)
@given(blocks=st.lists(st.integers(1, 13), min_size=1, max_size=40))
def test_streaming_random_blocks_match_parallel(blocks):
    total = min(sum(blocks), 48)
    sizes, acc = [], 0
    for b in blocks:
        if acc >= total:
            break
        sizes.append(min(b, total - acc))
        acc += sizes[-1]
    cfg = ttt.TTTConfig(layers=(0, 3), chunk_size=6, lr=0.5, delta_clip_fro_norm=0.1)
    _, ours = _cached_pair(cfg)
    seq = random_sequence(1, total, seed=5)
    assert rel_err(stream_logits(ours, seq, sizes), text_logits(ours, seq)) <= 1e-5


_PAIRS: dict = {}


def _cached_pair(cfg):
    if cfg not in _PAIRS:
        _PAIRS[cfg] = make_pair(cfg)
    return _PAIRS[cfg]


def test_lmgen_on_cpu_matches_parallel(report):
    """moshi's generation loop (TTTLMGen) feeds forward_text one step at a time; the text logits it
    sees equal a parallel pass over the very inputs it fed."""
    cfg = ttt.TTTConfig(layers=(1, 2), chunk_size=5, lr=0.5, delta_clip_fro_norm=0.1)
    _, ours = make_pair(cfg)
    fed, seen = [], []
    original = ours.forward_text

    def recording_forward_text(seq, *args):
        fed.append(seq.clone())
        return original(seq, *args)

    ours.forward_text = recording_forward_text
    gen = ttt.TTTLMGen(ours, on_text_logits_hook=lambda lg: seen.append(lg.clone()))
    user = random_sequence(1, 23, seed=7)[:, 9:]
    torch.manual_seed(0)
    with gen.streaming(1):
        for t in range(user.shape[-1]):
            gen.step(user[:, :, t:t + 1])
    del ours.forward_text
    stats = ttt.ttt_state(ours)
    got = torch.cat(seen, dim=2)
    want = text_logits(ours, torch.cat(fed, dim=2))
    report("max_rel_err_lmgen_vs_parallel", rel_err(got, want))
    assert rel_err(got, want) <= 1e-5
    assert {i: s for i, s in stats.items()} == {1: {}, 2: {}}  # state gone after streaming


# ---- reset and batching -----------------------------------------------------------------------

def test_reset_gives_fresh_model_and_masked_reset_touches_only_masked_rows():
    cfg = ttt.TTTConfig(layers=(0, 2), chunk_size=6, lr=0.5, delta_clip_fro_norm=0.1)
    _, ours = make_pair(cfg)
    doc_a, doc_b = random_sequence(2, 21, seed=11), random_sequence(2, 17, seed=12)
    fresh_b = text_logits(ours, doc_b)
    with torch.no_grad(), ours.streaming(2):
        ours.forward_text(doc_a)
        ours.reset_streaming()
        after_reset = torch.cat([ours.forward_text(doc_b[:, :, t:t + 1])[1] for t in range(17)], 2)
    assert rel_err(after_reset, fresh_b) <= 1e-5
    # Row 0 restarts mid-chunk (21 % 6 = 3), row 1 continues: each equals its sequence alone.
    cont = torch.cat([doc_a[1:], doc_b[1:]], dim=2)
    with torch.no_grad(), ours.streaming(2):
        ours.forward_text(doc_a)
        ours.reset_streaming(torch.tensor([True, False]))
        out = torch.cat([ours.forward_text(doc_b[:, :, t:t + 4])[1] for t in range(0, 17, 4)], 2)
    assert rel_err(out[:1], fresh_b[:1]) <= 1e-5
    assert rel_err(out[1:], text_logits(ours, cont)[:, :, 21:]) <= 1e-5


def test_batch_row_equals_sequence_alone():
    cfg = ttt.TTTConfig(layers=(1,), chunk_size=4, lr=0.5, delta_clip_fro_norm=0.1)
    _, ours = make_pair(cfg)
    seq = random_sequence(3, 25, seed=4)
    batched = text_logits(ours, seq)
    streamed = stream_logits(ours, seq, [3] * 8 + [1])
    for b in range(3):
        alone = text_logits(ours, seq[b:b + 1])
        assert rel_err(batched[b:b + 1], alone) <= 1e-5
        assert rel_err(streamed[b:b + 1], alone) <= 1e-5


# ---- telemetry -------------------------------------------------------------------------------

def test_clip_counter_and_telemetry_match_reference():
    cfg0 = ttt.TTTConfig(layers=(1, 3), chunk_size=5, lr=0.5, delta_clip_fro_norm=None)
    upstream, ours = make_pair(cfg0)
    seq = random_sequence(2, 31, seed=8)
    ref = build_reference(upstream, ours, (1, 3), cfg0)
    text_logits(ref, seq)
    norms = sorted(n for layer in ref.ref_layers.values() for row in layer.delta_norms for n in row)
    tau = norms[len(norms) // 2]  # about half the chunks exceed it
    cfg = ttt.TTTConfig(**{**cfg0.to_dict(), "layers": (1, 3), "delta_clip_fro_norm": tau})
    ours.ttt_config = cfg
    for layer in ttt.ttt_layers(ours).values():
        layer.cfg = cfg
    ref = build_reference(upstream, ours, (1, 3), cfg)
    text_logits(ref, seq)
    with torch.no_grad(), ours.streaming(2):
        ours.forward_text(seq)
        stats = ttt.ttt_state(ours)
        w_by_layer = {i: layer._streaming_state.w.clone() for i, layer in ttt.ttt_layers(ours).items()}
    total_clips = 0
    for i, layer in ref.ref_layers.items():
        want_clips = torch.tensor([sum(row) for row in layer.clipped])
        want_updates = torch.tensor([len(row) for row in layer.delta_norms])
        assert torch.equal(stats[i]["updates"], want_updates)  # 31 tokens, chunk 5: 6 updates
        assert torch.equal(stats[i]["clip_events"], want_clips)
        total_clips += int(want_clips.sum())
        assert torch.allclose(stats[i]["w_norm"], torch.linalg.vector_norm(w_by_layer[i], dim=(1, 2)))
        assert torch.all(stats[i]["w_drift"] > 0)
        assert torch.all(stats[i]["w_drift"] <= cfg.lr * tau * stats[i]["updates"] + 1e-6)
    assert 0 < total_clips < len(norms)


def test_telemetry_counters_equal_reference_exactly():
    """N·C tokens streamed → exactly N updates, clip events == chunks with ‖ΔW‖_F > τ."""
    cfg = ttt.TTTConfig(layers=(2,), chunk_size=4, lr=0.5, delta_clip_fro_norm=0.2)
    upstream, ours = make_pair(cfg)
    seq = random_sequence(1, 4 * 6 + 1, seed=2)  # the extra token makes the parallel pass use all 6
    ref = build_reference(upstream, ours, (2,), cfg)
    text_logits(ref, seq)
    with torch.no_grad(), ours.streaming(1):
        ours.forward_text(seq[:, :, :24])
        s = ttt.ttt_state(ours)[2]
    layer = ref.ref_layers[2]
    assert s["updates"].item() == 6 == len(layer.delta_norms[0])
    assert s["clip_events"].item() == sum(layer.clipped[0])
    assert abs(s["last_delta_norm"].item() - layer.delta_norms[0][-1]) <= 1e-5 * layer.delta_norms[0][-1]


# ---- memory ------------------------------------------------------------------------------------

def _shapes_created(fn):
    """Shapes of every new tensor an aten op allocates while fn runs (a dispatch-level census)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    shapes = []

    class Census(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if any(r.alias_info is not None for r in func._schema.returns):
                return out  # a view or in-place op: no new storage
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    shapes.append(tuple(t.shape))
            return out

    with Census():
        fn()
    return shapes


def test_parallel_form_forms_no_fast_weight_matrices():
    """Inference memory must not grow with the number of chunks: the parallel form over 32
    chunks creates no d×hid tensor at all (one block), and one state per block otherwise."""
    cfg = ttt.TTTConfig(layers=(1,), chunk_size=2, lr=0.5, delta_clip_fro_norm=0.1)
    _, ours = make_pair(cfg)
    layer = ttt.ttt_layers(ours)[1]
    d, hid = layer.w_down.shape
    seq = random_sequence(1, 64)
    is_weight = lambda shape: shape[-2:] in ((d, hid), (hid, d))  # noqa: E731
    assert not [s for s in _shapes_created(lambda: text_logits(ours, seq)) if is_weight(s)]
    layer.parallel_block = 16  # 4 blocks of 8 chunks
    try:
        blocked = text_logits(ours, seq)
        n_weights = sum(map(is_weight, _shapes_created(lambda: text_logits(ours, seq))))
    finally:
        layer.parallel_block = type(layer).parallel_block
    assert 0 < n_weights <= 4 * 3  # a few per block boundary, never per chunk (32 chunks)
    assert rel_err(blocked, text_logits(ours, seq)) <= 1e-5


@pytest.mark.parametrize("block", [1, 8, 24])
def test_blocked_dual_form_matches_token_loop(block):
    cfg = ttt.TTTConfig(layers=(1, 3), chunk_size=4, lr=0.5, delta_clip_fro_norm=0.05)
    upstream, ours = make_pair(cfg)
    for layer in ttt.ttt_layers(ours).values():
        layer.parallel_block = block
    ref = build_reference(upstream, ours, (1, 3), cfg)
    seq = random_sequence(2, T)
    assert rel_err(text_logits(ours, seq), text_logits(ref, seq)) <= 1e-5


def test_embedding_hook_tap_equals_transformer_input_tap():
    """Unconditioned models take X₀ from the transformer input; conditioned ones rebuild it from
    the embedding tables. Both must give the same X₀ bit for bit."""
    cfg = ttt.TTTConfig(layers=(1, 3), chunk_size=5, lr=0.5, delta_clip_fro_norm=0.1)
    _, ours = make_pair(cfg)
    seq = random_sequence(2, 23)
    default = text_logits(ours, seq)
    seen = {}
    hook = ours.transformer.register_forward_pre_hook(lambda m, a: seen.setdefault("input", a[0]))
    tap = ours.ttt_tap
    for handle in tap.handles:
        handle.remove()
    tap.handles.clear()
    tap.attach(ours, from_embeddings=True)
    rebuilt = text_logits(ours, seq)
    hook.remove()
    assert len(tap.handles) == 17  # 16 audio tables + text
    assert torch.equal(tap.x0, seen["input"])
    assert torch.equal(rebuilt, default)


def test_cached_weights_follow_parameter_updates():
    cfg = ttt.TTTConfig(layers=(1,), chunk_size=4, lr=0.5)
    _, ours = make_pair(cfg)
    seq = random_sequence(1, 20)
    before = text_logits(ours, seq)
    with torch.no_grad():
        ttt.ttt_layers(ours)[1].w_down.mul_(1.5)  # in place, as an optimizer or load would
    after = text_logits(ours, seq)
    assert not torch.allclose(before, after)
    with torch.no_grad():
        ttt.ttt_layers(ours)[1].target_generator.conv1d.conv.weight.mul_(-1.0)
    flipped = text_logits(ours, seq)
    assert not torch.allclose(flipped, after)
    ours.load_state_dict({**ours.state_dict()})
    assert torch.equal(text_logits(ours, seq), flipped)


def test_figure5_inner_losses():
    """ℓ(W) = −⟨W, ΔW⟩: on the first chunk W^(i) = W^(0); the update lowers the loss by exactly
    lr·‖ΔW‖²_F without clipping; later chunks start from W^(i) ≠ W^(0)."""
    cfg = ttt.TTTConfig(layers=(2,), chunk_size=4, lr=0.5, delta_clip_fro_norm=None)
    _, ours = make_pair(cfg)
    seq = random_sequence(1, 12, seed=6)
    with torch.no_grad(), ours.streaming(1):
        ours.forward_text(seq[:, :, :4])
        first = ttt.ttt_state(ours)[2]
        ours.forward_text(seq[:, :, 4:8])
        second = ttt.ttt_state(ours)[2]
    for s in (first, second):
        drop = (s["inner_loss_before"] - s["inner_loss_after"]).item()
        assert drop == pytest.approx(cfg.lr * s["last_delta_norm"].item() ** 2, rel=1e-4)
    assert first["inner_loss_initial"].item() == pytest.approx(first["inner_loss_before"].item(), rel=1e-6)
    assert second["inner_loss_initial"].item() != pytest.approx(second["inner_loss_before"].item(), rel=1e-3)


def test_reset_never_touches_the_trained_initial_weight_and_it_is_saved():
    """The seeds' reset wiped a trained w_down and never saved it: here W^(0) is a parameter that
    streaming, updates and resets only read, and it is in the state dict."""
    cfg = ttt.TTTConfig(layers=(1,), chunk_size=4, lr=0.5)
    _, ours = make_pair(cfg)
    layer = ttt.ttt_layers(ours)[1]
    with torch.no_grad():
        layer.w_down.add_(0.01)  # as if trained
    trained = layer.w_down.detach().clone()
    with torch.no_grad(), ours.streaming(1):
        ours.forward_text(random_sequence(1, 13))
        assert not torch.equal(layer._streaming_state.w[0], trained)
        ours.reset_streaming()
        assert torch.equal(layer._streaming_state.w[0], trained)
    assert torch.equal(layer.w_down, trained)
    assert torch.equal(ours.state_dict()["transformer.layers.1.gating.w_down"], trained)


@pytest.mark.parametrize("variant", ["inplace", "ttt_mlp"])
def test_new_modules_follow_the_model_train_eval_mode(variant):
    """apply_ttt on an eval model must not leave the TTT modules in training mode (the In-Place
    gate then ran uncompiled: found by the 7B profile)."""
    cfg = ttt.TTTConfig(variant=variant, layers=(1,), chunk_size=4)
    assert all(not m.training for m in ttt.apply_ttt(tiny_lm(0).eval(), cfg).modules())
    assert all(m.training for m in ttt.apply_ttt(tiny_lm(0).train(), cfg).modules())


def test_clip_events_count_only_rows_that_updated():
    """Rows out of step after a masked reset: a row whose chunk is not full neither updates nor
    counts a clip event, although its (unapplied) delta would clip."""
    cfg = ttt.TTTConfig(layers=(1,), chunk_size=6, lr=0.5, delta_clip_fro_norm=1e-9)
    _, ours = make_pair(cfg)
    seq = random_sequence(2, 8, seed=21)
    with torch.no_grad(), ours.streaming(2):
        ours.forward_text(seq[:, :, :4])
        ours.reset_streaming(torch.tensor([True, False]))  # row 0 restarts its chunk
        ours.forward_text(seq[:, :, 4:6])                  # row 1 reaches 6 tokens, row 0 has 2
        stats = ttt.ttt_state(ours)[1]
    assert stats["updates"].tolist() == [0, 1]
    assert stats["clip_events"].tolist() == [0, 1]


# ---- the official options: target_source 'hidden_states', conv_init 'zero' ---------------------

@pytest.mark.parametrize("padding,kernel,tau", [("right", 2, None), ("center", 5, 0.05)])
def test_hidden_states_target_matches_token_loop(padding, kernel, tau, report):
    """V̂ from the MLP's own normed input (the official default): parallel form and lm(codes)
    against the independent loop, which feeds its layer input to the target."""
    cfg = ttt.TTTConfig(layers=(1, 3), chunk_size=8, lr=0.5, conv_kernel_size=kernel,
                        conv_padding=padding, delta_clip_fro_norm=tau, target_source="hidden_states")
    upstream, ours = make_pair(cfg)
    assert not ours.ttt_tap.handles  # no embedding hooks: the target reads the layer input
    ref = build_reference(upstream, ours, (1, 3), cfg)
    seq = random_sequence(2, T)
    got, want = text_logits(ours, seq), text_logits(ref, seq)
    report("max_rel_err_vs_token_loop", rel_err(got, want))
    assert rel_err(got, want) <= 1e-5
    # Not vacuous: the source matters (X₀ gives other logits) and TTT changed the output.
    embeddings = build_reference(upstream, ours, (1, 3),
                                 dataclasses.replace(cfg, target_source="embeddings"))
    assert rel_err(text_logits(embeddings, seq), want) > 1e-3
    assert rel_err(text_logits(upstream, seq), want) > 1e-3
    if tau is not None:
        assert any(c for layer in ref.ref_layers.values() for row in layer.clipped for c in row)


@settings(max_examples=8, deadline=None)
@given(blocks=st.lists(st.integers(1, 13), min_size=1, max_size=40))
def test_hidden_states_streaming_random_blocks_match_parallel(blocks):
    total = min(sum(blocks), 40)
    sizes, acc = [], 0
    for b in blocks:
        if acc >= total:
            break
        sizes.append(min(b, total - acc))
        acc += sizes[-1]
    cfg = ttt.TTTConfig(layers=(0, 3), chunk_size=6, lr=0.5, delta_clip_fro_norm=0.1,
                        target_source="hidden_states")
    _, ours = _cached_pair(cfg)
    seq = random_sequence(1, total, seed=5)
    assert rel_err(stream_logits(ours, seq, sizes), text_logits(ours, seq)) <= 1e-5


def test_hidden_states_lmgen_matches_parallel():
    """TTTLMGen (the CUDA-graph driver's host loop) with the hidden-states target."""
    cfg = ttt.TTTConfig(layers=(1, 2), chunk_size=5, lr=0.5, delta_clip_fro_norm=0.1,
                        target_source="hidden_states")
    _, ours = make_pair(cfg)
    fed, seen = [], []
    original = ours.forward_text
    ours.forward_text = lambda seq, *a: (fed.append(seq.clone()), original(seq, *a))[1]
    gen = ttt.TTTLMGen(ours, on_text_logits_hook=lambda lg: seen.append(lg.clone()))
    user = random_sequence(1, 23, seed=7)[:, 9:]
    torch.manual_seed(0)
    with gen.streaming(1):
        for t in range(user.shape[-1]):
            gen.step(user[:, :, t:t + 1])
        updates = ttt.ttt_state(ours)[1]["updates"].item()
    del ours.forward_text
    assert updates >= 2
    assert rel_err(torch.cat(seen, dim=2), text_logits(ours, torch.cat(fed, dim=2))) <= 1e-5


@pytest.mark.parametrize("padding,kernel,source", [("right", 2, "embeddings"),
                                                    ("center", 5, "hidden_states")])
def test_zero_conv_init_is_the_official_no_op(padding, kernel, source):
    """conv_init 'zero' (official): the conv starts at zero and W_target stays diagonal
    N(0, init_std²), so V̂ = 0 and TTT changes nothing (= upstream and = the token loop) until
    trained; the identity init of the same model does change the output."""
    cfg = ttt.TTTConfig(layers=(1, 3), chunk_size=4, lr=1.0, conv_kernel_size=kernel,
                        conv_padding=padding, delta_clip_fro_norm=None, conv_init="zero",
                        target_source=source, init_std=0.5)
    upstream = tiny_lm(0)
    ours = ttt.apply_ttt(copy.deepcopy(upstream), cfg)
    for layer in ttt.ttt_layers(ours).values():
        tg = layer.target_generator
        assert not tg.conv_weight.any()
        off_diagonal = tg.projection - torch.diag(torch.diagonal(tg.projection))
        assert tg.projection.diagonal().abs().min() > 0 and not off_diagonal.any()
    seq = random_sequence(1, T)
    ref = build_reference(upstream, ours, (1, 3), cfg)
    got = text_logits(ours, seq)
    assert rel_err(got, text_logits(ref, seq)) <= 1e-6
    assert torch.equal(got.nan_to_num(), text_logits(upstream, seq).nan_to_num())
    assert rel_err(stream_logits(ours, seq, [3] * 13 + [1]), got) <= 1e-6
    identity = ttt.apply_ttt(copy.deepcopy(upstream), dataclasses.replace(cfg, conv_init="identity"))
    assert rel_err(text_logits(identity, seq), got) > 1e-4


@pytest.mark.parametrize("source", ["embeddings", "hidden_states"])
def test_figure5_losses_and_next_chunk_gain_match_token_loop(source):
    """The streamed telemetry's ℓ(W⁽⁰⁾), ℓ(W⁽ⁱ⁾), ℓ(W⁽ⁱ⁺¹⁾) and the next-chunk gain
    ℓ(W⁽⁰⁾) − ℓ(W⁽ⁱ⁾) of every chunk equal the token loop's explicit −Σ_t (W z_t)·v̂_t."""
    cfg = ttt.TTTConfig(layers=(1, 3), chunk_size=6, lr=0.5, delta_clip_fro_norm=0.2,
                        target_source=source)
    upstream, ours = make_pair(cfg)
    seq = random_sequence(1, 31, seed=4)
    ref = build_reference(upstream, ours, (1, 3), cfg)
    text_logits(ref, seq)
    got = {1: [], 3: []}
    with torch.no_grad(), ours.streaming(1):
        for t in range(0, 30, 6):  # 5 chunks, each followed by a token (the loop applies them)
            ours.forward_text(seq[:, :, t:t + 6])
            for i, s in ttt.ttt_state(ours).items():
                got[i].append([s[k].item() for k in ("inner_loss_initial", "inner_loss_before",
                                                     "inner_loss_after", "inner_gain")])
    for i in (1, 3):
        want = ref.ref_layers[i].inner_losses[0]
        assert len(want) == 5
        for (l0, lb, la, gain), (r0, rb, ra) in zip(got[i], want):
            scale = abs(r0) + abs(rb)
            assert abs(l0 - r0) <= 1e-5 * scale and abs(lb - rb) <= 1e-5 * scale
            assert abs(la - ra) <= 1e-5 * scale
            assert abs(gain - (r0 - rb)) <= 1e-5 * scale
        assert any(abs(r0 - rb) > 1e-3 * abs(r0) for r0, rb, _ in want[1:])  # not vacuous


def test_whole_chunk_block_leaves_the_state_of_the_chunk_scan():
    """A streamed block of whole chunks + a tail (dual form from the state) leaves every field of
    the TTT state as the token-by-token scan does, so later blocks, telemetry and snapshots are
    unaffected by the block size; the outputs agree too."""
    cfg = ttt.TTTConfig(layers=(1, 3), chunk_size=5, lr=0.5, delta_clip_fro_norm=0.3)
    _, ours = make_pair(cfg)
    seq = random_sequence(2, 21, seed=9)
    runs = {}
    for name, blocks in (("block", [3 * 5 + 2, 1, 3]), ("tokens", [1] * 21)):
        outs, t = [], 0
        with torch.no_grad(), ours.streaming(2):
            for size in blocks:
                outs.append(ours.forward_text(seq[:, :, t:t + size])[1])
                t += size
                if name == "block" and t == 17:
                    mid = {i: {k: v.clone() for k, v in vars(layer._streaming_state).items()
                               if isinstance(v, torch.Tensor)}
                           for i, layer in ttt.ttt_layers(ours).items()}
                if name == "tokens" and t == 17:
                    ref_mid = {i: {k: v.clone() for k, v in vars(layer._streaming_state).items()
                                   if isinstance(v, torch.Tensor)}
                               for i, layer in ttt.ttt_layers(ours).items()}
                    fills = {i: list(layer._streaming_state.fill)
                             for i, layer in ttt.ttt_layers(ours).items()}
        runs[name] = torch.cat(outs, dim=2)
    assert rel_err(runs["block"], runs["tokens"]) <= 1e-5
    for i, ref in ref_mid.items():
        got = mid[i]
        assert fills[i] == [2, 2]
        assert torch.equal(got["updates"], ref["updates"]) and ref["updates"].tolist() == [3, 3]
        assert torch.equal(got["clip_events"], ref["clip_events"])
        assert torch.equal(got["pos"], ref["pos"])
        for key in ("w", "w_apply", "last_delta_norm", "inner_loss", "gain_stats"):
            assert rel_err(got[key], ref[key]) <= 1e-5, key
        for key in ("z_buf", "x0_buf"):  # the tail's two tokens wait in the chunk buffers
            assert rel_err(got[key][:, :2], ref[key][:, :2]) <= 1e-5, key


@pytest.mark.parametrize("blocks", [[30], [1] * 30, [7, 11, 12]])
def test_next_chunk_gain_counters_match_token_loop_at_any_cadence(blocks):
    """The device-side next-chunk gain counters (every chunk i ≥ 1, whatever block sizes stream
    the input: whole-chunk dual form, token by token, or mixed) equal the token loop's sums,
    with ℓ(W⁽⁰⁾) on every block (the default skips some: test_initial_loss_cadence.py)."""
    cfg = ttt.TTTConfig(layers=(1, 3), chunk_size=6, lr=0.5, delta_clip_fro_norm=0.2,
                        initial_loss_every=1)
    upstream, ours = _cached_pair(cfg)
    seq = random_sequence(1, 31, seed=4)
    ref = build_reference(upstream, ours, (1, 3), cfg)
    text_logits(ref, seq)
    with torch.no_grad(), ours.streaming(1):
        t = 0
        for size in blocks:
            ours.forward_text(seq[:, :, t:t + size])
            t += size
        state = ttt.ttt_state(ours)
    for i in (1, 3):
        chunks = ref.ref_layers[i].inner_losses[0][1:]  # chunk 0 has no gain
        gains = [r0 - rb for r0, rb, _ in chunks]
        s = state[i]
        scale = sum(abs(r0) for r0, _, _ in chunks)
        assert s["gain_chunks"].item() == len(chunks) == 4
        assert abs(s["gain_sum"].item() - sum(gains)) <= 1e-5 * scale
        assert abs(s["gain_initial_abs_sum"].item() - scale) <= 1e-5 * scale
        assert s["gain_positive"].item() == sum(g > 0 for g in gains)
