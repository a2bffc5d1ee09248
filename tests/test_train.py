"""The outer loop (ttt train) and the shipped positive control (the trained `tiny` default)."""
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import ttt
from conftest import directional_derivatives, tiny_lm
from ttt.control.gain import token_nll
from ttt.data.demo import write_control_conversation
from ttt.moshi.tiny import DEMO_WORDS, TINY_TRAINED
from ttt.moshi.surgery import ttt_disabled
from ttt.training.train import TrainConfig, lm_loss, load_train_config, train

HELD_OUT = Path(__file__).parent / "data" / "control_heldout_codes.pt"


# ---- the training step's gradient ---------------------------------------------------------

def test_training_loss_gradients_match_finite_differences():
    """lm_loss (moshi's masks, text + audio CE through the dual form) is differentiable end to
    end: autograd agrees with central differences for the TTT target weights, W^(0) and a
    weight the TTT path reads (linear_in) and one it does not (the depformer's)."""
    cfg = ttt.TTTConfig(layers=(1,), chunk_size=4, lr=0.3, delta_clip_fro_norm=None, init_std=0.5)
    lm = ttt.apply_ttt(tiny_lm(0, dtype=torch.float64, norm="rms_norm"), cfg).train()
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(1, 24, (1, 17, 13), generator=g)
    codes[:, 0] = torch.randint(1, 40, (1, 13), generator=g)
    gating = lm.transformer.layers[1].gating

    def loss():
        text, audio = lm_loss(lm, codes)
        return text + 0.5 * audio

    lm.zero_grad()
    loss().backward()
    params = {"W_target": gating.target_generator.W_target.weight,
              "conv": gating.target_generator.conv1d.conv.weight, "w_down": gating.w_down,
              "linear_in": gating.linear_in.weight, "depformer": lm.linears[0].weight}
    for name, p in params.items():
        analytic, numeric = directional_derivatives(loss, p, g, eps=1e-3)  # see test_config_checkpoint_grad
        assert abs(analytic - numeric) <= 2e-3 * max(abs(numeric), 1e-3), (name, analytic, numeric)


# ---- ttt train: config, loss goes down, resume ----------------------------------------------

@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory):
    """Two 3-s control conversations (one recurrent), their manifest and a shared cache."""
    root = tmp_path_factory.mktemp("train")
    lines = [write_control_conversation(root / "data" / f"c{i}.wav", duration=3.0,
                                        recurrent=bool(i), part_s=1.0, gap_s=0.5, seed=i,
                                        words=DEMO_WORDS) for i in range(2)]
    manifest = root / "data" / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root, manifest


def _config(root: Path, manifest: Path, **overrides) -> dict:
    base = dict(train=str(manifest), base="tiny-random", mode="scratch",
                lm_kwargs=dict(dim=16, num_heads=2, num_layers=2, context=8, card=2048,
                               text_card=64, depformer_dim=8, depformer_dim_feedforward=16,
                               depformer_num_layers=1, depformer_num_heads=1),
                ttt=dict(start_layer=1, layer_frequency=1, chunk_size=4, lr=0.01,
                         delta_clip_fro_norm=None, init_std=0.5),
                steps=12, batch_size=2, segment_frames=24, lr=0.01, log_every=1,
                checkpoint_every=4, cache_dir=str(root / "cache"))
    return {**base, **overrides}


def test_short_cpu_training_lowers_the_loss_and_writes_a_loadable_checkpoint(tiny_manifest):
    root, manifest = tiny_manifest
    summary = train(TrainConfig.from_dict(_config(root, manifest)), root / "run", log=lambda m: None)
    rows = list(map(dict, __import__("csv").DictReader(open(root / "run" / "train_log.csv"))))
    assert len(rows) == 12 and summary["steps"] == 12
    first, last = float(rows[0]["loss"]), float(rows[-1]["loss"])
    assert last < 0.8 * first, (first, last)
    # Figure-5 inner losses and ‖W‖ are logged for the TTT layer, gradient norm too.
    for key in ("l1_inner_w0", "l1_inner_before", "l1_inner_after", "l1_w_norm", "grad_norm"):
        assert np.isfinite(float(rows[-1][key])), key
    bundle = ttt.moshi.model.load_checkpoint(root / "run" / "checkpoint")
    assert sorted(ttt.ttt_layers(bundle.lm)) == [1] and bundle.ttt.lr == 0.01
    # The TTT-off twin runs the trained W^(0), not the initial down projection.
    gating = bundle.lm.transformer.layers[1].gating
    assert torch.equal(gating.linear_out.weight, gating.w_down)


def test_resume_continues_bitwise_and_refuses_another_config(tiny_manifest):
    root, manifest = tiny_manifest
    straight = _config(root, manifest, steps=8)
    train(TrainConfig.from_dict(straight), root / "straight", log=lambda m: None)
    train(TrainConfig.from_dict({**straight, "steps": 4}), root / "resumed", log=lambda m: None)
    messages = []
    train(TrainConfig.from_dict(straight), root / "resumed", log=messages.append)
    assert any("resumed" in m and "step 4" in m for m in messages)
    a = load_file(str(root / "straight" / "checkpoint" / "model.safetensors"))
    b = load_file(str(root / "resumed" / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match=r"different config.*'lr'"):
        train(TrainConfig.from_dict({**straight, "lr": 0.02}), root / "resumed", log=lambda m: None)


def test_bad_training_config_is_one_line_exit_2(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"train": "x.jsonl", "stepz": 3}))
    proc = subprocess.run([sys.executable, "-m", "ttt", "train", "--config", str(path), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "stepz" in proc.stderr
    with pytest.raises(ValueError, match="ttt.chunk_size"):
        TrainConfig.from_dict({"train": "x", "ttt": {"chunk_size": 0}})
    with pytest.raises(ValueError, match="fresh_unit: must be one of"):
        TrainConfig.from_dict({"train": "x", "fresh_rows": 100, "fresh_unit": "sentence"})
    with pytest.raises(ValueError, match="lm_kwargs: only with mode: scratch"):
        TrainConfig.from_dict({"train": "x", "mode": "ttt_only", "lm_kwargs": {"dim": 8}})
    assert load_train_config(TINY_TRAINED / "train.yaml").ttt_config().delta_clip_fro_norm is None


# ---- the shipped positive control -----------------------------------------------------------

def _trained_lm(**ttt_override):
    """The shipped weights, built from config.json + model.safetensors alone (no Mimi)."""
    from moshi.models import loaders
    from ttt.moshi.layouts import split_config
    lm_kwargs, ttt_config, _ = split_config(json.loads((TINY_TRAINED / "config.json").read_text()),
                                            TINY_TRAINED / "config.json")
    lm = loaders.get_moshi_lm(None, lm_kwargs=lm_kwargs, device="cpu", dtype=torch.float32)
    ttt.apply_ttt(lm, ttt.TTTConfig.from_seeds(ttt_config, **ttt_override))
    lm.load_state_dict(load_file(str(TINY_TRAINED / "model.safetensors")))
    return lm.eval()


def test_trained_control_remembers_beyond_its_context():
    """A held-out recurrent conversation (codes from the local random Mimi, the same content
    twice, 150 frames apart, context 32): TTT on predicts the text of the copy better than
    TTT off, and the production flags (lr 1e-3, τ 1e-5) leave it as off."""
    codes = torch.load(HELD_OUT).long()[None]
    lm = _trained_lm()
    context = lm.transformer.layers[0].self_attn.context
    assert codes.shape[-1] >= 3 * context
    on = token_nll(lm, codes)
    with ttt_disabled(lm):
        off = token_nll(lm, codes)
    copy = slice(150, 250)  # part A again (frames 0-100 the first time)
    gain = np.nanmean(off[0][copy]) - np.nanmean(on[0][copy])
    assert gain > 0.05, gain
    before = slice(0, context)  # nothing to remember yet: no such gain
    assert np.nanmean(off[0][before]) - np.nanmean(on[0][before]) < gain / 2
    prod = token_nll(_trained_lm(lr=1e-3, delta_clip_fro_norm=1e-5), codes)
    assert np.nanmax(np.abs(prod[0] - off[0])) < 1e-3
    # Trained, not random: far below the untrained model's text perplexity (~200 here).
    assert np.exp(np.nanmean(off[0])) < 5


def test_control_conversation_of_a_fractional_frame_count_ends(tmp_path):
    """A duration of a fractional frame count (yarn's tokens / 12.5 + 1 s is always x.5 frames)
    is written with its partial last frame as one whole frame. A remainder of half a frame or
    less once rounded to no frame and looped forever (25 s, 31.72 s)."""
    import signal

    def too_long(*_):
        raise TimeoutError("write_control_conversation did not end")

    old = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(30)
    try:
        for duration, frames in ((25.0, 313), (31.72, 397), (21.46, 269), (30.0, 375)):
            line = write_control_conversation(tmp_path / "c.wav", duration=duration, recurrent=True,
                                              part_s=8.0, gap_s=4.0, seed=0, words=DEMO_WORDS)
            assert round(line["duration"] * 12.5, 6) == frames, duration
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_default_long_form_input_recurs_beyond_the_context(tmp_path):
    """The default run's long_form cells read `demo: {recurrent: true}`: the first 8 s (audio and
    words) come back after each 4-s filler, i.e. beyond the trained default's 32-frame context."""
    import soundfile as sf

    from ttt.base.config import CellConfig
    from ttt.data.demo import RECUR_GAP_S, RECUR_PART_S, write_demo_manifest
    from ttt.data.conversations import read_manifest

    rec = read_manifest(write_demo_manifest(tmp_path, [30.0], 1, DEMO_WORDS, recurrent=True))[0]
    plain = read_manifest(write_demo_manifest(tmp_path, [30.0], 1, DEMO_WORDS))[0]
    audio, rate = sf.read(rec.path)
    part, period = int(RECUR_PART_S * rate), int((RECUR_PART_S + RECUR_GAP_S) * rate)
    assert period / rate > 32 / 12.5                          # beyond the attention context
    assert np.array_equal(audio[:part], audio[period:period + part])
    assert not np.array_equal(audio[part:period], audio[period + part:2 * period])  # fresh fillers
    plain_audio, _ = sf.read(plain.path)
    assert not np.array_equal(plain_audio[:part], plain_audio[period:period + part])
    words = [w for w, (a, _), _ in rec.alignments if a < RECUR_PART_S]
    assert words == [w for w, (a, _), _ in rec.alignments if period / rate <= a < period / rate + RECUR_PART_S]
    with pytest.raises(ValueError, match="data.demo.recurrent"):
        CellConfig(cell="x", data={"demo": {"durations": [8.0], "recurrent": "yes"}})


@pytest.mark.slow
def test_second_training_on_one_out_is_refused_while_the_first_runs(tiny_manifest, tmp_path):
    """Issue 25 item 12: two real `ttt train` processes on one --out; the second exits 2 with
    one line and leaves the first run's directory alone (before: both ran, one model lost)."""
    root, manifest = tiny_manifest
    out = tmp_path / "run"
    configs = []
    for lr in (0.01, 0.02):
        path = tmp_path / f"lr{lr}.yaml"
        path.write_text(yaml.safe_dump(_config(root, manifest, steps=1_000_000, lr=lr)))
        configs.append(path)
    env = {**__import__("os").environ, "NO_TORCH_COMPILE": "1", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "ttt", "train", "--config", str(configs[0]),
                              "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=env)
    lock = tmp_path / ".run.lock"
    try:
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()
            time.sleep(0.1)
        done = subprocess.run([sys.executable, "-m", "ttt", "train", "--config", str(configs[1]),
                               "--out", str(out)], capture_output=True, text=True, env=env,
                              timeout=300)
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()
    assert done.returncode == 2, done.stderr
    assert done.stderr == (f"error: {out}: another run (pid {first.pid}) is writing it; wait for "
                           "it to end or choose another --out\n")
    assert done.stdout == ""


def test_prefetched_batches_are_the_one_thread_stream():
    """The worker draws the batches and the generator states the one-thread loop would (each
    state right after its batch: what a checkpoint saves), and a builder's error reaches the
    training loop, on the batch where it happened."""
    from ttt.training.batches import Prefetched

    def make(g):
        n = int(torch.randint(1, 5, (1,), generator=g))  # a varying number of draws per batch
        return torch.randint(1000, (n,), generator=g)

    serial_g = torch.Generator().manual_seed(7)
    serial = [(make(serial_g), serial_g.get_state()) for _ in range(6)]
    batches = Prefetched(make, torch.Generator().manual_seed(7), ahead=2)
    try:
        for batch, state in serial:
            got, got_state = batches.next()
            assert torch.equal(got, batch) and torch.equal(got_state, state)
    finally:
        batches.close()
    calls = []

    def failing(g):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("no more rows")
        return make(g)

    batches = Prefetched(failing, torch.Generator().manual_seed(7))
    batches.next(), batches.next()
    with pytest.raises(RuntimeError, match="no more rows"):
        batches.next()
    batches.close()
