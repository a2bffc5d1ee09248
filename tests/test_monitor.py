"""The stream monitor every cell mode shares (ttt.session.monitor): where its telemetry rows
fall, that they hold the fast-weight state read directly, and when it calls a stream diverged."""
import math

import torch

import ttt
from conftest import random_sequence, randomize_ttt_params, tiny_lm
from ttt.eval.metrics import teacher_forced_nll
from ttt.session.monitor import MonitoredInput, MonitorSettings, StreamMonitor
from ttt.session.telemetry import parse_telemetry_line

CHUNK, T = 4, 18


def _lm(**ttt_overrides):
    settings = dict(layers=(1, 3), chunk_size=CHUNK, lr=0.5, delta_clip_fro_norm=None, init_std=0.5)
    cfg = ttt.TTTConfig(**{**settings, **ttt_overrides})
    return randomize_ttt_params(ttt.apply_ttt(tiny_lm(0), cfg))


def _monitor(lm, lines, row_fields=None, **settings):
    watched = MonitoredInput(T, log=lines.append, row_fields=row_fields or {},
                             log_fields={"cell": "c", "item": 0})
    return StreamMonitor(lm, MonitorSettings(**{"chunk": CHUNK, "log_every": 1000,
                                                "frame_rate": 12.5, **settings}), watched)


def test_rows_fall_on_updates_and_hold_the_state_read_directly():
    codes = random_sequence(1, T)
    # The reference: the state read at each block's end by a plain callback, no monitor. Every
    # block logs all its chunks (not the default cadence: test_initial_loss_cadence.py).
    lm = _lm(initial_loss_every=1)
    direct = {}

    def read(end, _loss):
        direct[end] = {i: {k: float(v[0]) for k, v in s.items()} for i, s in ttt.ttt_state(lm).items()}
    teacher_forced_nll(lm, codes, block=8, on_block=read)
    lm, lines = _lm(initial_loss_every=1), []
    blocks = _monitor(lm, lines, row_fields={"item": 0})
    teacher_forced_nll(lm, codes, block=8, on_block=blocks.observe)
    # A row per chunk update (the layer's own log), and the last, partial block's state.
    assert sorted((r["step"], r["layer"]) for r in blocks.sinks.telemetry) == [
        (s, layer) for s in (4, 8, 12, 16, 18) for layer in (1, 3)]
    for row in blocks.sinks.telemetry:
        assert row["item"] == 0 and row["updates"] == min(row["step"], 16) // CHUNK
        want = direct.get(row["step"], {}).get(row["layer"], {})
        for key in set(want) & set(row):  # at a block's end: the state read directly
            assert math.isclose(row[key], want[key], rel_tol=1e-6, abs_tol=1e-9), key
    assert blocks.block_steps == [8, 8, 2] and len(blocks.sinks.block_ms) == 3 and not blocks.diverged
    # One step at a time (as generation observes): a row at every update, none for the tail.
    lm, lines = _lm(), []
    steps = _monitor(lm, lines, record_last=False, per_chunk=False)
    teacher_forced_nll(lm, codes, block=1, on_block=steps.observe)
    assert sorted({r["step"] for r in steps.sinks.telemetry}) == [4, 8, 12, 16]
    assert [r["updates"] for r in steps.sinks.telemetry if r["layer"] == 1] == [1.0, 2.0, 3.0, 4.0]
    assert all("chunk_fill" in r for r in steps.sinks.telemetry)  # the state's own keys
    # The progress line at the last step carries the state and the caller's fields.
    record = parse_telemetry_line(lines[-1])
    assert lines[-2].startswith(f"step {T}/{T}")
    assert record["cell"] == "c" and record["step"] == T and set(record["layers"]) == {"1", "3"}


def test_a_non_finite_loss_is_divergence_and_is_logged():
    lm, lines = _lm(), []
    monitor = _monitor(lm, lines)
    assert monitor.observe(1, torch.ones(1, 9, 1)) is False
    assert monitor.observe(2, torch.tensor([[[1.0], [math.nan]]])) is True
    assert lines and lines[0].startswith("step 2/18")


def test_clip_saturation_stops_the_stream_after_four_updates():
    codes = random_sequence(1, T)
    lm, lines = _lm(delta_clip_fro_norm=1e-9), []  # every update clipped
    monitor = _monitor(lm, lines, clip_saturation=0.9)
    teacher_forced_nll(lm, codes, block=CHUNK, on_block=monitor.observe)
    assert monitor.diverged and monitor.sinks.telemetry[-1]["step"] == 4 * CHUNK
    lm, lines = _lm(), []  # clipping off: the same stream runs to its end
    monitor = _monitor(lm, lines, clip_saturation=0.9)
    teacher_forced_nll(lm, codes, block=CHUNK, on_block=monitor.observe)
    assert not monitor.diverged and monitor.sinks.telemetry[-1]["step"] == T
