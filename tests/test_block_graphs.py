"""The TTT block update as a CUDA graph (ttt/core/block_graphs.py) equals the eager update: a
7B-sized TTT layer (d 4096, hidden 11264, chunk 256, bf16, one row) streams 2,048-frame blocks,
a shorter block with a tail and blocks that start inside a chunk, over two sessions, once with
graphs off (``TTT_BLOCK_GRAPHS=0``) and once with them on; after every block the outputs, the fast
weights, the counters and the per-chunk records are compared, and the graphs must have replayed.
Needs a CUDA device (``python -m pytest -m gpu tests/test_block_graphs.py``)."""
import dataclasses
import gc
import warnings

import pytest
import torch
import torch.nn.functional as F
from moshi.modules.gating import ActivationGating

from ttt.base.config import TTTConfig
from ttt.core import block_graphs
from ttt.moshi.gating import TTTGating
from ttt.moshi.inplace_target import EmbeddingTap

D, HID, CHUNK = 4096, 11264, 256
# every=2: blocks alternate between recording every chunk and only the last one; the first
# block of a session takes the ℓ(W⁽⁰⁾)-for-free variant; 1,000 frames leave a tail of 232, so
# the blocks after it start inside a chunk (24 frames token-wise, then 2,024 as a block)
LENGTHS = [2048] * 5 + [1000] + [2048] * 3


def _layer(device: str) -> tuple[TTTGating, EmbeddingTap]:
    torch.manual_seed(0)
    upstream = ActivationGating(D, HID * 3 // 2, F.silu, device=device, dtype=torch.bfloat16).eval()
    cfg = dataclasses.replace(TTTConfig(start_layer=0, layer_frequency=6, chunk_size=CHUNK, lr=1e-3,
                                        delta_clip_fro_norm=1e-5), initial_loss_every=2)
    tap = EmbeddingTap()
    layer = TTTGating(upstream.linear_in, upstream.linear_out, upstream.activation, cfg, tap).eval()
    g = torch.Generator(device=device).manual_seed(2)
    with torch.no_grad():
        for p in layer.target_generator.parameters():
            p.copy_(torch.randn(p.shape, device=device, generator=g).to(p) / p.shape[1] ** 0.5)
    return layer, tap


def _block(layer, tap, x, x0, graphs: bool, monkeypatch) -> torch.Tensor:
    monkeypatch.setenv("TTT_BLOCK_GRAPHS", "1" if graphs else "0")
    tap.x0 = x0
    out = layer(x)
    log = torch.cat(layer.chunk_log, dim=1)
    layer.chunk_log.clear()
    return out, log


STATE = ("w", "w_apply", "w_norm", "w_drift", "gain_stats", "updates", "clip_events",
         "last_delta_norm", "inner_loss", "pos", "z_buf", "x0_buf")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA device: run on a GPU machine (gpu/README.md)")
def test_graphed_block_update_equals_eager_at_7b_size(monkeypatch):
    eager, tap_e = _layer("cuda")
    graphed, tap_g = _layer("cuda")
    g = torch.Generator(device="cuda").manual_seed(1)
    not_bitwise = set()

    def same(a, b, name, **tol):
        if not torch.equal(a, b):  # other kernels (a strided input, a cuBLAS choice): rounding only
            not_bitwise.add(name)
            torch.testing.assert_close(b, a, msg=lambda m: f"{name}: {m}", **tol)

    replays = []
    for session in range(2):
        with torch.no_grad(), eager.streaming(1), graphed.streaming(1):
            for i, T in enumerate(LENGTHS):
                x = torch.randn(1, T, D, device="cuda", generator=g).bfloat16()
                x0 = torch.randn(1, T, D, device="cuda", generator=g).bfloat16()
                want, want_log = _block(eager, tap_e, x, x0, False, monkeypatch)
                got, got_log = _block(graphed, tap_g, x, x0, True, monkeypatch)
                where = f"session {session}, block {i} ({T} frames)"
                same(want, got, f"output, {where}", rtol=2e-2, atol=2e-2 * float(want.abs().max()))
                assert got_log.shape == want_log.shape, where
                same(want_log, got_log, f"chunk records, {where}", rtol=1e-2,
                     atol=1e-3 * float(want_log.abs().max()))
                se, sg = eager._streaming_state, graphed._streaming_state
                for name in STATE:
                    a, b = getattr(se, name), getattr(sg, name)
                    same(a, b, f"{name}, {where}", rtol=1e-3, atol=1e-4 * float(a.abs().max()) + 1e-12)
                assert sg.fill == se.fill and sg.blocks == se.blocks, where
                assert sg.w_is_initial() == se.w_is_initial(), where
        replays.append(graphed._block_graphs.replays)
    assert eager.__dict__.get("_block_graphs") is None or eager._block_graphs.captures == 0
    # session 0: each of the 6 kinds of block (length, recorded chunks, ℓ(W⁽⁰⁾) free) runs
    # eagerly the first time and is captured then; blocks 3, 4 and 8 replay. Session 1 replays
    # every block (captured anew first where its state landed at other addresses)
    assert replays == [3, 3 + len(LENGTHS)], replays
    assert graphed._block_graphs.captures >= 6
    if not_bitwise:
        warnings.warn(f"graphed update equal within tolerance, not bitwise: {sorted(not_bitwise)[:6]}")
    print(f"replays per session {replays[0]}, {replays[1] - replays[0]}; captures "
          f"{graphed._block_graphs.captures}; bitwise: {not not_bitwise}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA device: run on a GPU machine (gpu/README.md)")
def test_graphs_are_captured_again_after_every_earlier_graph_died(monkeypatch):
    """A model rebuilt (bench_cells and the workflow's cells load one model after another): every
    graph of the first dies with it, and the next model's blocks are still captured and replayed.
    torch releases a private memory pool whose last graph died, and a capture into it then failed
    an internal assert of its allocator (H200, torch 2.11), leaving the graphs off."""
    monkeypatch.setenv("TTT_BLOCK_GRAPHS", "1")
    g = torch.Generator(device="cuda").manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed capture only warns: make it fail the test
        for model in range(3):
            layer, tap = _layer("cuda")
            with torch.no_grad(), layer.streaming(1):
                for _ in range(5):
                    tap.x0 = torch.randn(1, 2048, D, device="cuda", generator=g).bfloat16()
                    layer(torch.randn(1, 2048, D, device="cuda", generator=g).bfloat16())
            assert layer._block_graphs.replays >= 2, (model, layer._block_graphs.replays)
            del layer, tap
            gc.collect()
            torch.cuda.synchronize()
    assert block_graphs.enabled(torch.device("cuda"))


def test_graphs_stay_off_where_they_cannot_run(monkeypatch):
    """On a CPU, and with either switch off, the update never reaches a graph."""
    assert not block_graphs.enabled(torch.device("cpu"))
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        monkeypatch.setenv("TTT_BLOCK_GRAPHS", "1")
        assert block_graphs.enabled(cuda)
        for name, value in (("TTT_BLOCK_GRAPHS", "0"), ("NO_CUDA_GRAPH", "1")):
            monkeypatch.setenv(name, value)
            assert not block_graphs.enabled(cuda)
            monkeypatch.delenv(name)
