"""The fast-weight stabiliser (``ttt.decay`` / ``ttt.reset_every``): every path that updates fast
weights (the parallel dual form, streamed blocks of any size, moshi's generation loop) against the
independent token loop (tests/reference_ttt.py), and bitwise the official update when off."""
import copy
from pathlib import Path

import pytest
import torch

import ttt
from conftest import randomize_ttt_params, random_sequence, rel_err, tiny_lm
from reference_ttt import build_reference

T = 41  # chunk 4: 10 updates; the last chunk (1 token) never updates
LAYERS = (1, 3)
# (decay, reset_every): decay alone, reset alone (a reset every 3 chunks), both
STABILISERS = [(0.6, None), (None, 3), (0.8, 2)]


def make_pair(seed: int = 0, **stab):
    cfg = ttt.TTTConfig(layers=LAYERS, chunk_size=4, lr=0.5, delta_clip_fro_norm=0.2, **stab)
    upstream = tiny_lm(seed)
    ours = randomize_ttt_params(ttt.apply_ttt(copy.deepcopy(upstream), cfg))
    return upstream, ours, cfg


def text_logits(lm, seq):
    with torch.no_grad():
        return lm.forward_text(seq)[1]


def stream_logits(lm, seq, blocks):
    outs, t = [], 0
    with torch.no_grad(), lm.streaming(seq.shape[0]):
        for size in blocks:
            outs.append(lm.forward_text(seq[:, :, t:t + size])[1])
            t += size
        state = {i: copy.deepcopy(layer._streaming_state) for i, layer in ttt.ttt_layers(lm).items()}
    assert t == seq.shape[-1]
    return torch.cat(outs, dim=2), state


def set_block(lm, block):
    for layer in ttt.ttt_layers(lm).values():
        layer.parallel_block = block


@pytest.mark.parametrize("decay,reset_every", STABILISERS)
@pytest.mark.parametrize("block", [4096, 8, 12])
def test_parallel_form_matches_token_loop(decay, reset_every, block, report):
    """Blocks of 2 and 3 chunks: resets every 2 or 3 chunks fall inside blocks and on their edges."""
    upstream, ours, cfg = make_pair(decay=decay, reset_every=reset_every)
    set_block(ours, block)
    ref = build_reference(upstream, ours, LAYERS, cfg)
    seq = random_sequence(2, T)
    got, want = text_logits(ours, seq), text_logits(ref, seq)
    report("max_rel_err_vs_token_loop", rel_err(got, want))
    assert rel_err(got, want) <= 1e-5
    # not vacuous: the stabiliser changes the output, and TTT still does
    _, plain, _ = make_pair()
    assert rel_err(text_logits(plain, seq), want) > 1e-3
    assert rel_err(text_logits(upstream, seq), want) > 1e-3


@pytest.mark.parametrize("decay,reset_every", STABILISERS)
@pytest.mark.parametrize("blocks", [[1] * T, [5, 3, 7, 2, 11, 13], [8, 16, 17], [41]])
def test_streaming_matches_token_loop_and_its_weights(decay, reset_every, blocks):
    """One token at a time (generation), blocks cut mid-chunk, whole-chunk blocks (the path that
    would otherwise take the block form), one block: outputs, ‖W‖ and ‖W − W⁽⁰⁾‖ after the stream."""
    upstream, ours, cfg = make_pair(decay=decay, reset_every=reset_every)
    ref = build_reference(upstream, ours, LAYERS, cfg)
    seq = random_sequence(2, T, seed=5)
    got, states = stream_logits(ours, seq, blocks)
    assert rel_err(got, text_logits(ref, seq)) <= 1e-5
    for i, layer in ref.ref_layers.items():
        state = states[i]
        assert state.updates.tolist() == [10, 10]
        for b in range(2):
            w_norm, w_drift = layer.w_norms[b][-1]  # the reference's last update is the 10th
            assert abs(state.w_norm[b].item() - w_norm) <= 1e-5 * w_norm
            assert abs(state.w_drift[b].item() - w_drift) <= 1e-4 * w_norm + 1e-6


def test_reset_every_returns_to_the_initial_weight_on_its_chunks():
    """The streamed per-chunk telemetry: ‖W − W⁽⁰⁾‖ is 0 after updates 3, 6, 9 and only there."""
    _, ours, _ = make_pair(reset_every=3)
    seq = random_sequence(1, T, seed=6)
    with torch.no_grad(), ours.streaming(1):
        ours.forward_text(seq)
        records = torch.cat(ttt.ttt_layers(ours)[1].chunk_log, dim=1)[0]
    from ttt.core.chunk_stats import CHUNK_FIELDS
    drift = records[:, CHUNK_FIELDS.index("w_drift")]
    assert [k + 1 for k, v in enumerate(drift.tolist()) if v == 0] == [3, 6, 9]


def test_lmgen_matches_token_loop():
    """moshi's generation loop with the host-driven chunk updates (TTTLMGen): the text logits it
    saw equal the token loop's over the very inputs it fed."""
    upstream, ours, cfg = make_pair(decay=0.7, reset_every=3)
    fed, seen = [], []
    original = ours.forward_text

    def recording_forward_text(seq, *args):
        fed.append(seq.clone())
        return original(seq, *args)

    ours.forward_text = recording_forward_text
    gen = ttt.TTTLMGen(ours, on_text_logits_hook=lambda lg: seen.append(lg.clone()))
    user = random_sequence(1, 40, seed=7)[:, 9:]
    torch.manual_seed(0)
    with gen.streaming(1):
        for t in range(user.shape[-1]):
            gen.step(user[:, :, t:t + 1])
    del ours.forward_text
    ref = build_reference(upstream, ours, LAYERS, cfg)
    assert len(fed) > 12  # three chunks or more: the decay and a reset both acted
    assert rel_err(torch.cat(seen, dim=2), text_logits(ref, torch.cat(fed, dim=2))) <= 1e-5


@pytest.mark.parametrize("off", [{}, {"decay": None, "reset_every": None}, {"decay": 1.0}, {"decay": 1}])
def test_off_is_bitwise_the_official_update(off):
    _, plain, _ = make_pair()
    _, ours, _ = make_pair(**off)
    seq = random_sequence(2, T, seed=8)
    assert torch.equal(text_logits(ours, seq), text_logits(plain, seq))
    for blocks in ([8, 33], [5, 3, 33]):
        assert torch.equal(stream_logits(ours, seq, blocks)[0], stream_logits(plain, seq, blocks)[0])


@pytest.mark.parametrize("key,value,message", [
    ("decay", 0, "decay: must be null (off) or a number in (0, 1], got 0"),
    ("decay", 1.5, "decay: must be null (off) or a number in (0, 1], got 1.5"),
    ("decay", float("nan"), "decay: must be null (off) or a number in (0, 1], got nan"),
    ("decay", True, "decay: must be null (off) or a number in (0, 1], got True"),
    ("reset_every", 0, "reset_every: must be null (off) or an integer >= 1 (chunks), got 0"),
    ("reset_every", 2.5, "reset_every: must be null (off) or an integer >= 1 (chunks), got 2.5"),
])
def test_bad_values_name_the_key(key, value, message):
    with pytest.raises(ValueError) as info:
        ttt.TTTConfig.from_dict({key: value})
    assert str(info.value) == message


def test_matrix_preflight_names_the_key_and_the_hybrid_ignores_it():
    """The matrix config's top-level ``ttt`` block feeds every TTT-on cell, the TTT-MLP hybrid's
    too: a bad value is named before any job, a good one leaves the hybrid's cells valid (its
    update has no stabiliser, as it has no conv or clip)."""
    import yaml
    from ttt.launch.matrix import build_matrix
    from ttt.launch.preflight import PreflightError, check_matrix

    config = yaml.safe_load((Path(__file__).parent.parent / "config" / "config.yaml").read_text())
    config.setdefault("base", None)
    bad = {**config, "ttt": {**config["ttt"], "reset_every": 0}}
    with pytest.raises(PreflightError, match=r"^config ttt.reset_every: must be null \(off\) or an "
                                               r"integer >= 1 \(chunks\), got 0 \(cell "):
        check_matrix(bad, build_matrix(bad))
    good = {**config, "ttt": {**config["ttt"], "decay": 0.95, "reset_every": 40}}
    check_matrix(good, build_matrix(good))
    assert ttt.TTTConfig(variant="ttt_mlp", decay=0.5).stabilised


def test_cli_bad_decay_is_one_line_exit_2(tmp_path):
    import os
    import subprocess
    import sys

    path = tmp_path / "cell.yaml"
    path.write_text("cell: c\nmode: teacher_forced\nttt: {decay: 2}\n")
    done = subprocess.run([sys.executable, "-m", "ttt", "run-cell", "--config", str(path), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_TORCH_COMPILE": "1"})
    assert done.returncode == 2
    assert done.stderr.strip() == (f"error: {path}: decay: must be null (off) or a number in "
                                   "(0, 1], got 2")
