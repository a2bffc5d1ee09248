"""The per-block statistics of a streamed TTT block, vectorised over its chunks, give the numbers
of the plain per-column formulas bit for bit (the telemetry of a cell must not move when
its bookkeeping is reorganised)."""
import torch

from ttt.core.chunk_stats import add_gain_stats, squared_norms_after_chunks


def test_gain_and_norm_statistics_equal_the_per_column_formulas_bitwise():
    g = torch.Generator().manual_seed(1)
    B, n = 2, 9
    initial, before = torch.randn(B, n, generator=g), torch.randn(B, n, generator=g)
    counted = torch.rand(B, n, generator=g) > 0.3
    stats = torch.randn(B, 4, generator=g)
    running = add_gain_stats(want := stats.clone(), initial, before, counted)
    gain = (initial - before) * counted
    columns = [gain, initial.abs() * counted, ((gain > 0) & counted).float(), counted.float()]
    ref_running = stats[:, None] + torch.stack(columns, dim=2).cumsum(1)
    ref_total = stats + torch.stack([c.sum(1) for c in columns], dim=1)
    assert torch.equal(running, ref_running) and torch.equal(want, ref_total)

    c, delta = torch.rand(B, n, generator=g), torch.rand(B, n, generator=g)
    w_norm, w_drift = torch.rand(B, generator=g), torch.rand(B, generator=g)
    got = squared_norms_after_chunks(w_norm, w_drift, c, delta, initial, before)
    c64, sq64, b64 = c.double(), delta.double() ** 2, before.double()
    w_sq = w_norm.double()[:, None] ** 2 + (c64 * (c64 * sq64 - 2 * b64)).cumsum(1)
    drift_sq = w_drift.double()[:, None] ** 2 + (c64 * (c64 * sq64 + 2 * (initial.double() - b64))).cumsum(1)
    assert torch.equal(got[..., 0], w_sq) and torch.equal(got[..., 1], drift_sq)
