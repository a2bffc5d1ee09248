"""A TTT layer's new streaming session takes over the tensors of the previous one once that one is
gone, reset in place: the block update's CUDA graphs key on the state's addresses, so every input
of a cell (one session each) would otherwise capture its graphs anew. The reuse must leave the
session exactly as a freshly built one, and must never share tensors with a state still alive."""
import copy

import torch

import ttt
from conftest import random_sequence
from test_telemetry_chunks import _pair
from ttt.session.telemetry import chunk_rows, chunk_telemetry

CFG = ttt.TTTConfig(layers=(1, 3), chunk_size=6, lr=0.5, delta_clip_fro_norm=0.5)


def _session(lm, seq, blocks=(12, 7, 5)):
    """One streaming session over ``seq``: its text logits, the final states' tensors and records."""
    outs, rows = [], {}
    with torch.no_grad(), lm.streaming(seq.shape[0]):
        t = 0
        for size in blocks:
            outs.append(lm.forward_text(seq[:, :, t:t + size])[1])
            t += size
            for i, rec in chunk_telemetry(lm).items():
                rows.setdefault(i, []).extend(chunk_rows(rec[0].reshape(-1).tolist()))
        states = {i: layer._streaming_state for i, layer in ttt.ttt_layers(lm).items()}
        tensors = {i: {k: v.clone() for k, v in vars(s).items() if isinstance(v, torch.Tensor)}
                   for i, s in states.items()}
        # moshi's own exec_mask is not the block update's (it is not in the graphs' key)
        addresses = {i: {k: v.data_ptr() for k, v in vars(s).items()
                         if isinstance(v, torch.Tensor) and k != "exec_mask"} for i, s in states.items()}
    return torch.cat(outs, dim=2), tensors, rows, addresses


def test_a_later_session_is_a_fresh_one_at_the_same_addresses():
    _, lm = _pair(CFG)
    fresh = copy.deepcopy(lm)  # never streamed: its session is built from nothing
    x, y = random_sequence(1, 24, seed=5), random_sequence(1, 24, seed=6)
    _, _, _, first = _session(lm, y)  # moves the fast weights, counters and statistics
    # the freed memory is taken by other tensors of the same sizes before the next session
    squatters = [v.clone() for layer in ttt.ttt_layers(lm).values()
                 for v in layer.__dict__["_spare_state"][2].values()]
    out, tensors, rows, second = _session(lm, x)
    ref_out, ref_tensors, ref_rows, _ = _session(fresh, x)
    assert torch.equal(out, ref_out)
    assert rows == ref_rows and all(rows.values())
    for i in tensors:
        for name, value in ref_tensors[i].items():
            assert torch.equal(tensors[i][name], value), (i, name)
    assert second == first  # every tensor the block update touches stayed where it was
    del squatters


def test_a_state_still_held_keeps_its_own_tensors():
    _, lm = _pair(CFG)
    x = random_sequence(1, 24, seed=5)
    with torch.no_grad(), lm.streaming(1):
        lm.forward_text(x)
        held = {i: layer._streaming_state for i, layer in ttt.ttt_layers(lm).items()}
    before = {i: s.w.clone() for i, s in held.items()}
    out, _, _, _ = _session(lm, random_sequence(1, 24, seed=6))
    for i, s in held.items():
        assert torch.equal(s.w, before[i])  # the new session did not write into it
        assert not torch.equal(s.w, s.w0[None])
