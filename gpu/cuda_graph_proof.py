"""GPU proof that In-Place TTT really updates under moshi's CUDA graphs (run on a CUDA machine).

bf16 (and fp32) model, ``ttt.TTTLMGen`` with CUDA graphs, N·C steps:
  1. exactly N updates per TTT layer;
  2. fast weights equal an eager (no graph) token-by-token stream over the same inputs, and the
     one-block streaming form (same math as the parallel scan), within the stated tolerances;
  3. text logits seen during graphed generation equal a parallel ``forward_text`` pass;
  4. no torch.compile recompiles after warm-up;
  5. plain ``LMGen`` under CUDA graphs refuses to run a TTT model (it would never update);
  6. step time, TTT off (upstream LMGen) vs on, for the same small config.

Usage: python gpu/cuda_graph_proof.py OUT.json
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch
from moshi.models import loaders
from moshi.models.lm import LMGen

import ttt

SMALL = dict(loaders._lm_kwargs)
SMALL.update(dim=1024, num_heads=8, num_layers=8, context=3000, depformer_dim=512,
             depformer_dim_feedforward=1024, depformer_num_heads=8, depformer_num_layers=2)
CHUNK, N_CHUNKS = 16, 6
LAYERS = (1, 4, 7)


def build(cfg: ttt.TTTConfig | None, seed: int = 0, dtype=torch.bfloat16):
    torch.manual_seed(seed)
    lm = loaders.get_moshi_lm(None, lm_kwargs=SMALL, device="cuda", dtype=dtype).eval()
    if cfg is not None:
        ttt.apply_ttt(lm, cfg)
        g = torch.Generator(device="cuda").manual_seed(1)
        with torch.no_grad():
            for layer in ttt.ttt_layers(lm).values():
                if not hasattr(layer, "target_generator"):  # the TTT-MLP hybrid: fresh init
                    continue
                for p in layer.target_generator.parameters():
                    p.copy_(torch.randn(p.shape, device="cuda", generator=g).to(p) / p.shape[1] ** 0.5)
    return lm


class Recorder:
    """Wraps LMGen's graphed forward_text (outside the graph) to record what it is fed."""

    def __init__(self, graphed):
        self.graphed, self.inputs, self.disable = graphed, [], graphed.disable

    def __call__(self, *args):
        self.inputs.append(args[0].clone())
        return self.graphed(*args)


def user_tokens(steps: int) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(2)
    return torch.randint(0, 2048, (1, 8, steps), device="cuda", generator=g)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()


def proof(dtype, graphs: bool = True) -> dict:
    """``graphs=False`` runs the same session with NO_CUDA_GRAPH=1: moshi then calls forward_text
    eagerly, the layers update themselves and TTTLMGen must not drive (no double updates)."""
    if not graphs:
        os.environ["NO_CUDA_GRAPH"] = "1"
    try:
        return _proof(dtype)
    finally:
        os.environ.pop("NO_CUDA_GRAPH", None)


def _proof(dtype) -> dict:
    cfg = ttt.TTTConfig(layers=LAYERS, chunk_size=CHUNK, lr=1e-2, delta_clip_fro_norm=None)
    lm = build(cfg, dtype=dtype)
    steps = CHUNK * N_CHUNKS
    logits = []
    gen = ttt.TTTLMGen(lm, on_text_logits_hook=lambda x: logits.append(x.float().clone()))
    user = user_tokens(steps)
    out: dict = {}
    with gen.streaming(1):
        state = gen._streaming_state
        rec = Recorder(state.graphed_main)
        state.graphed_main = rec
        dyn = torch._dynamo.utils.counters
        for t in range(steps):
            gen.step(user[:, :, t:t + 1])
            if t == 9:
                graphs_after_warmup = dict(dyn["stats"])
        torch.cuda.synchronize()
        out["graph_captured"] = rec.graphed._graph is not None
        stats = ttt.ttt_state(lm)
        out["updates_per_layer"] = {i: int(s["updates"].item()) for i, s in stats.items()}
        out["w_drift_per_layer"] = {i: float(s["w_drift"].item()) for i, s in stats.items()}
        w_graph = {i: l._streaming_state.w.clone() for i, l in ttt.ttt_layers(lm).items()}
        out["dynamo_stats_after_warmup"] = graphs_after_warmup
        out["dynamo_stats_end"] = dict(dyn["stats"])
    seq = torch.cat(rec.inputs, dim=2)

    def stream_w(blocks):
        with torch.no_grad(), lm.streaming(1):
            t = 0
            for b in blocks:
                lm.forward_text(seq[:, :, t:t + b])
                t += b
            return {i: l._streaming_state.w.clone() for i, l in ttt.ttt_layers(lm).items()}

    w_eager1 = stream_w([1] * steps)
    w_block = stream_w([steps])
    out["w_max_rel_err_graph_vs_eager_token"] = max(rel(w_graph[i], w_eager1[i]) for i in w_graph)
    out["w_max_rel_err_graph_vs_one_block"] = max(rel(w_graph[i], w_block[i]) for i in w_graph)
    with torch.no_grad():
        par = lm.forward_text(seq)[1].float()
    out["text_logits_rel_err_graph_vs_parallel"] = rel(torch.cat(logits, dim=2), par)
    out["text_logits_rel_err_first_chunk"] = rel(torch.cat(logits, dim=2)[:, :, :CHUNK], par[:, :, :CHUNK])

    return out


def graphed_vs_eager(cfg: ttt.TTTConfig) -> dict:
    """fp32, TTTLMGen under CUDA graphs vs an eager token-by-token stream of the same inputs:
    update counts, fast-weight state, and the attention-vs-TTT diagnostics (read through tensor
    references taken at capture, which each replay rewrites). For the TTT-MLP hybrid this also
    proves its mini-batch commits inside the graph (device-side selects, no host driver)."""
    from ttt.session.diagnostics import Diagnostics

    def fast_state(lm):
        out = {}
        for i, layer in ttt.ttt_layers(lm).items():
            s = layer._streaming_state
            out[i] = ([s.w.clone()] if hasattr(s, "w")
                      else [getattr(s.start, n).clone() for n in ("W1", "b1", "W2", "b2")])
        return out

    lm = build(cfg, dtype=torch.float32)
    steps = CHUNK * N_CHUNKS
    gen = ttt.TTTLMGen(lm)
    user = user_tokens(steps)
    out: dict = {}
    diag = Diagnostics(lm)
    with gen.streaming(1):
        rec = Recorder(gen._streaming_state.graphed_main)
        gen._streaming_state.graphed_main = rec
        for t in range(steps):
            gen.step(user[:, :, t:t + 1])
        torch.cuda.synchronize()
        out["graph_captured"] = rec.graphed._graph is not None
        out["updates_per_layer"] = {i: int(s["updates"].item()) for i, s in ttt.ttt_state(lm).items()}
        w_graph, d_graph = fast_state(lm), diag.record()
    diag.close()
    seq = torch.cat(rec.inputs, dim=2)
    diag = Diagnostics(lm)
    with torch.no_grad(), lm.streaming(1):
        for t in range(steps):
            lm.forward_text(seq[:, :, t:t + 1])
        w_eager, d_eager = fast_state(lm), diag.record()
        w0 = {i: rel(w_eager[i][0], (l.w_down if hasattr(l, "w_down") else l.W1).detach()[None])
              for i, l in ttt.ttt_layers(lm).items()}
    out["fast_weights_rel_err_graph_vs_eager"] = max(
        rel(a, b) for i in w_graph for a, b in zip(w_graph[i], w_eager[i]))
    out["fast_weights_moved_min_rel"] = min(w0.values())
    keys = ("attn_norm", "ttt_norm", "combined_norm", "ttt_attn_ratio", "cos_attn_ttt", "w_norm")
    out["diagnostics_graph"] = {i: {k: d_graph[i][k] for k in keys} for i in d_graph}
    out["diagnostics_max_rel_diff_graph_vs_eager"] = max(
        abs(d_graph[i][k] - d_eager[i][k]) / max(abs(d_eager[i][k]), 1e-12)
        for i in d_eager for k in keys)
    return out


def plain_lmgen_refused(lm) -> bool:
    """Plain LMGen would graph-capture the TTT layers with no host driver: must raise, not run."""
    plain = LMGen(lm)
    try:
        with plain.streaming(1):
            for t in range(3):
                plain.step(user_tokens(3)[:, :, t:t + 1])
    except RuntimeError as exc:
        return "TTTLMGen" in str(exc)
    return False


def peak_growth(lm, lengths=(256, 2048)) -> dict:
    """Peak memory of one parallel forward_text per length (bytes above the weights)."""
    out = {}
    for T in lengths:
        seq = torch.randint(0, 2048, (1, 17, T), device="cuda")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.no_grad():
            lm.forward_text(seq)
        torch.cuda.synchronize()
        out[T] = torch.cuda.max_memory_allocated() - base
    return out


def step_times(lm, gen_cls, steps=300, warmup=30) -> dict:
    gen = gen_cls(lm)
    user = user_tokens(steps + warmup)
    times = []
    with gen.streaming(1):
        for t in range(steps + warmup):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            gen.step(user[:, :, t:t + 1])
            torch.cuda.synchronize()
            if t >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"p50_ms": statistics.median(times), "p90_ms": times[int(0.9 * len(times))]}


def main() -> None:
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "config": {"lm": {k: SMALL[k] for k in ("dim", "num_layers", "num_heads")},
                      "ttt_layers": LAYERS, "chunk": CHUNK, "chunks": N_CHUNKS}}
    out["proof"] = proof(torch.bfloat16)
    out["proof_fp32"] = proof(torch.float32)
    out["proof_fp32_no_cuda_graph"] = proof(torch.float32, graphs=False)
    out["diagnostics_inplace_fp32"] = graphed_vs_eager(
        ttt.TTTConfig(layers=LAYERS, chunk_size=CHUNK, lr=1e-2, delta_clip_fro_norm=None))
    out["proof_hybrid_fp32"] = graphed_vs_eager(
        ttt.TTTConfig(variant="ttt_mlp", layers=LAYERS, chunk_size=CHUNK, lr=1.0, gate_alpha_init=0.5))
    lm_off = build(None)
    out["step_time_ttt_off_upstream"] = step_times(lm_off, LMGen)
    mem_off = peak_growth(lm_off)
    del lm_off
    cfg = ttt.TTTConfig(layers=LAYERS, chunk_size=CHUNK, lr=1e-2, delta_clip_fro_norm=1e-5)
    lm_on = build(cfg)
    out["step_time_ttt_on"] = step_times(lm_on, ttt.TTTLMGen)
    mem_on = peak_growth(lm_on)
    w_bytes = SMALL["dim"] * ttt.ttt_layers(lm_on)[LAYERS[0]].w_down.shape[1] * 4
    out["memory"] = {"peak_bytes_ttt_off": mem_off, "peak_bytes_ttt_on": mem_on,
                     "fast_weight_bytes_per_layer": w_bytes,
                     "extra_growth_256_to_2048_bytes": (mem_on[2048] - mem_on[256])
                     - (mem_off[2048] - mem_off[256]),
                     "chunks_at_2048": 2048 // CHUNK}
    out["step_time_ratio_on_over_off"] = (out["step_time_ttt_on"]["p50_ms"]
                                          / out["step_time_ttt_off_upstream"]["p50_ms"])
    p = out["proof"]
    p["plain_lmgen_refused"] = plain_lmgen_refused(lm_on)
    p32 = out["proof_fp32"]
    png = out["proof_fp32_no_cuda_graph"]
    hy, di = out["proof_hybrid_fp32"], out["diagnostics_inplace_fp32"]
    # bf16 tolerances sit at the bf16 noise floor: upstream moshi's own first-chunk logits (no TTT
    # involved yet) differ by ~1e-2 between graphed single steps and one parallel pass.
    checks = {
        "exactly N updates": all(v == N_CHUNKS for v in p["updates_per_layer"].values())
        and all(v == N_CHUNKS for v in p32["updates_per_layer"].values()),
        "weights moved": all(v > 0 for v in p["w_drift_per_layer"].values()),
        "bf16 graph == eager per token (5e-3)": p["w_max_rel_err_graph_vs_eager_token"] <= 5e-3,
        "bf16 graph == one-block form (1e-2)": p["w_max_rel_err_graph_vs_one_block"] <= 1e-2,
        "bf16 logits == parallel (5e-2)": p["text_logits_rel_err_graph_vs_parallel"] <= 5e-2,
        "fp32 graph == eager per token (1e-5)": p32["w_max_rel_err_graph_vs_eager_token"] <= 1e-5,
        "fp32 graph == one-block form (1e-5)": p32["w_max_rel_err_graph_vs_one_block"] <= 1e-5,
        "fp32 logits == parallel (1e-4)": p32["text_logits_rel_err_graph_vs_parallel"] <= 1e-4,
        "no recompiles after warm-up": p["dynamo_stats_after_warmup"] == p["dynamo_stats_end"],
        # 128 chunks × 3 layers of per-chunk weights would be ~400 W; allow a few working copies.
        "memory growth with length not per chunk": out["memory"]["extra_growth_256_to_2048_bytes"]
        <= 8 * out["memory"]["fast_weight_bytes_per_layer"],
        "plain LMGen refused": p["plain_lmgen_refused"],
        "graph captured": p["graph_captured"],
        "NO_CUDA_GRAPH=1: no graph, exactly N updates": not png["graph_captured"]
        and all(v == N_CHUNKS for v in png["updates_per_layer"].values()),
        "NO_CUDA_GRAPH=1: == eager per token (1e-5)": png["w_max_rel_err_graph_vs_eager_token"] <= 1e-5,
        "hybrid: graph captured, exactly N mini-batches": hy["graph_captured"]
        and all(v == N_CHUNKS for v in hy["updates_per_layer"].values()),
        "hybrid: W_state graph == eager (1e-4)": hy["fast_weights_rel_err_graph_vs_eager"] <= 1e-4
        and hy["fast_weights_moved_min_rel"] > 0,
        "hybrid: diagnostics under graphs == eager (1e-3)":
        hy["diagnostics_max_rel_diff_graph_vs_eager"] <= 1e-3,
        "in-place: diagnostics under graphs == eager (1e-3)":
        di["diagnostics_max_rel_diff_graph_vs_eager"] <= 1e-3
        and all(v == N_CHUNKS for v in di["updates_per_layer"].values()),
    }
    out["checks"] = checks
    text = json.dumps(out, indent=2, default=str)
    print(text)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            f.write(text + "\n")
    if not all(checks.values()):
        raise SystemExit(f"FAILED: {[k for k, v in checks.items() if not v]}")


if __name__ == "__main__":
    main()
