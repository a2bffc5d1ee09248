"""``ttt.initial_loss_every``: ℓ(W⁽⁰⁾) (and the per-chunk rows it makes possible) on every N-th
whole-chunk block. Blocks off the cadence record their last chunk alone, equal to that chunk's
record under the default; outputs and fast weights do not depend on the cadence."""
import pytest
import torch

import ttt
from conftest import random_sequence
from test_telemetry_chunks import _pair
from ttt.session.telemetry import chunk_rows, chunk_telemetry

SAME = ("updates", "clip_events", "w_norm", "w_drift", "w_rel_change", "last_delta_norm",
        "inner_loss_initial", "inner_loss_before", "inner_loss_after")


def _stream(every, seq, blocks):
    cfg = ttt.TTTConfig(layers=(1, 3), chunk_size=6, lr=0.5, delta_clip_fro_norm=0.5,
                        initial_loss_every=every)
    _, lm = _pair(cfg)
    rows, outs = {}, []
    with torch.no_grad(), lm.streaming(seq.shape[0]):
        t = 0
        for size in blocks:
            outs.append(lm.forward_text(seq[:, :, t:t + size])[1])
            t += size
            for i, rec in chunk_telemetry(lm).items():
                for b in range(seq.shape[0]):
                    rows.setdefault((i, b), []).extend(chunk_rows(rec[b].reshape(-1).tolist()))
        w = {i: layer._streaming_state.w.clone() for i, layer in ttt.ttt_layers(lm).items()}
    return rows, torch.cat(outs, dim=2), w


@pytest.mark.parametrize("every,recorded", [(0, [2, 4, 5]), (2, [1, 2, 4, 5]), (3, [1, 2, 4, 5])])
def test_off_cadence_blocks_record_their_last_chunk_as_the_default_does(every, recorded):
    seq = random_sequence(2, 31, seed=4)
    blocks = [12, 12, 6, 1]  # 2, 2 and 1 whole chunks (batch 2: no block reuses its own output)
    ref_rows, ref_out, ref_w = _stream(1, seq, blocks)
    rows, out, w = _stream(every, seq, blocks)
    assert torch.equal(out, ref_out)
    assert all(torch.equal(w[i], ref_w[i]) for i in w)
    for key, got in rows.items():
        want = {r["updates"]: r for r in ref_rows[key]}
        assert [r["updates"] for r in ref_rows[key]] == [1, 2, 3, 4, 5]
        assert [r["updates"] for r in got] == recorded
        for r in got:
            for column in SAME:
                assert r[column] == pytest.approx(want[r["updates"]][column], rel=1e-6, abs=1e-9), column
        # the gain statistics count the chunks that had ℓ(W⁽⁰⁾) (chunk 1 never counts)
        assert got[-1]["gain_chunks"] == sum(1 for u in recorded if u >= 2)
    assert any(r["clip_events"] for v in rows.values() for r in v)  # clipping is exercised


def test_bad_initial_loss_every_is_one_line():
    with pytest.raises(ValueError, match="initial_loss_every"):
        ttt.TTTConfig(initial_loss_every=-1)
