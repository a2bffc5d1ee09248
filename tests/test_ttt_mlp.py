"""TTT-MLP hybrid (issue #8): against an independent token loop with autograd gradients, causality,
gradients to W_base and α, reset, batch independence, α = 0 is the model without the branch."""
import copy

import pytest
import torch

import ttt
from conftest import directional_derivatives, random_sequence, rel_err, tiny_lm
from ttt.moshi.surgery import ttt_disabled
from reference_ttt_mlp import reference_branch
from ttt.moshi.ttt_mlp import TTTMLPBranch

D, HEADS, M = 32, 4, 4


def branch(seed=0, dtype=torch.float32, **cfg):
    torch.manual_seed(seed)
    kw = dict(variant="ttt_mlp", chunk_size=M, lr=1.0, init_std=0.3, gate_alpha_init=0.7)
    b = TTTMLPBranch(D, HEADS, ttt.TTTConfig(**{**kw, **cfg}))
    with torch.no_grad():  # non-trivial norms, biases and lr gate
        for name in ("ttt_norm_weight", "ttt_norm_bias", "b1", "b2", "learnable_ttt_lr_bias",
                     "post_norm.weight", "post_norm.bias", "wq.bias", "wv.bias"):
            p = b.get_parameter(name)
            p.add_(0.2 * torch.randn_like(p))
    return b.to(dtype)


def xs(batch=2, T=11, seed=1):
    return torch.randn(batch, T, D, generator=torch.Generator().manual_seed(seed))


def stream(b, x, blocks):
    outs, t = [], 0
    with torch.no_grad(), b.streaming(x.shape[0]):
        for size in blocks:
            outs.append(b(x[:, t:t + size]))
            t += size
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("T", [3, 8, 11])  # inside one mini-batch, exact multiple, partial last
def test_parallel_and_streaming_match_independent_loop(T, report):
    b, x = branch(), xs(T=T)
    ref = reference_branch(b, x, M, lr=1.0)
    with torch.no_grad():
        par = b(x)
    assert rel_err(par, ref) <= 1e-5
    for blocks in ([1] * T, [2, T - 2] if T > 2 else [T], [T]):
        assert rel_err(stream(b, x, blocks), ref) <= 1e-5
    report("parallel vs reference", rel_err(par, ref))
    # TTT really acts: freezing the fast weights (lr 0) changes the output after the first token.
    frozen = branch(lr=0.0)
    with torch.no_grad():
        assert rel_err(frozen(x)[:, 1:], par[:, 1:]) > 1e-3


def test_causal():
    b, x = branch(), xs(T=10)
    x2 = x.clone()
    x2[:, 6] += 1.0
    with torch.no_grad():
        y, y2 = b(x), b(x2)
    assert torch.equal(y[:, :6], y2[:, :6])
    assert not torch.allclose(y[:, 6:], y2[:, 6:])


def test_gradients_reach_w_base_and_alpha():
    """Autograd through the inner loop vs central finite differences, in float64."""
    b, x = branch(dtype=torch.float64), xs(batch=1, T=9).double()
    probe = torch.randn(1, 9, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def loss():
        return (b(x) * probe).sum()

    loss().backward()
    g = torch.Generator().manual_seed(7)
    for name in ("W1", "b1", "W2", "b2", "gating_alpha", "learnable_ttt_lr_weight", "wk.weight"):
        analytic, numeric = directional_derivatives(loss, b.get_parameter(name), g, eps=1e-6)
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic)), (name, numeric, analytic)


def test_reset_restores_w_base_per_row():
    b, x = branch(), xs(batch=2, T=14)
    fresh = stream(b, x[:1, 7:], [7])
    with torch.no_grad(), b.streaming(2):
        b(x[:, :7])  # both rows adapt
        b._streaming_state.reset(torch.tensor([True, False]))
        assert torch.equal(b._streaming_state.start.W1[0], b.W1)
        assert not torch.equal(b._streaming_state.start.W1[1], b.W1)
        after = b(x[:, 7:])
    assert rel_err(after[:1], fresh) <= 1e-6       # row 0 starts over from W_base
    assert rel_err(after[1:], stream(b, x[1:], [14])[:, 7:]) <= 1e-6  # row 1 kept adapting


def test_reset_reaches_every_row_including_the_last():
    b, x = branch(), xs(batch=3, T=7)
    with torch.no_grad(), b.streaming(3):
        b(x)  # every row adapts and holds a partial mini-batch
        b._streaming_state.reset(torch.tensor([False, False, True]))
        s = b._streaming_state
        assert torch.equal(s.start.W1[2], b.W1) and torch.equal(s.cur.W1[2], b.W1)
        assert not torch.equal(s.cur.W1[1], b.W1)
        assert s.pos.tolist()[2] == 0 and s.fill[2] == 0 and s.fill[1] != 0
        s.reset(torch.ones(3, dtype=torch.bool))
        for name in ("W1", "b1", "W2", "b2"):
            w0 = b.get_parameter(name)
            assert all(torch.equal(getattr(s.cur, name)[r], w0) for r in range(3)), name
        assert s.pos.tolist() == [0, 0, 0] and s.fill == [0, 0, 0]


def test_batch_rows_independent():
    b, x = branch(), xs(batch=3, T=10)
    together = stream(b, x, [3, 7])
    for row in range(3):
        assert rel_err(together[row:row + 1], stream(b, x[row:row + 1], [10])) <= 1e-6


@pytest.mark.parametrize("how", ["override", "init"])
def test_alpha_zero_is_the_model_without_the_branch(how):
    upstream = tiny_lm(0)
    cfg = dict(variant="ttt_mlp", start_layer=1, layer_frequency=2, chunk_size=M, lr=1.0,
               init_std=0.3)
    cfg.update(gate_override=0.0) if how == "override" else cfg.update(gate_alpha_init=0.0)
    ours = ttt.apply_ttt(copy.deepcopy(upstream), ttt.TTTConfig(**cfg))
    seq = random_sequence(2, 20)
    with torch.no_grad():
        assert torch.equal(ours.forward_text(seq)[1], upstream.forward_text(seq)[1])
        loud = ttt.apply_ttt(copy.deepcopy(upstream), ttt.TTTConfig(**{**cfg, "gate_override": 1.0}))
        assert rel_err(loud.forward_text(seq)[1], upstream.forward_text(seq)[1]) > 1e-3


def test_whole_model_streaming_equals_parallel_and_surgery_is_reversible():
    upstream = tiny_lm(0)
    cfg = ttt.TTTConfig(variant="ttt_mlp", start_layer=1, layer_frequency=2, chunk_size=M,
                        lr=1.0, init_std=0.3, gate_alpha_init=0.5)
    ours = ttt.apply_ttt(copy.deepcopy(upstream), cfg)
    assert sorted(ttt.ttt_layers(ours)) == [1, 3]
    seq = random_sequence(2, 23)
    with torch.no_grad():
        par = ours.forward_text(seq)[1]
        with ours.streaming(2):
            steps = torch.cat([ours.forward_text(seq[:, :, t:t + 1])[1] for t in range(23)], 2)
            state = ttt.ttt_state(ours)
        with ttt_disabled(ours):
            assert torch.equal(ours.forward_text(seq)[1], upstream.forward_text(seq)[1])
    assert rel_err(steps, par) <= 1e-5
    assert all(int(s["updates"][0]) == 23 // M for s in state.values())
    # Figure 5 on the last mini-batch: ℓ(W_base) against an independent evaluation.
    assert all(torch.isfinite(s["inner_loss_after"]).all() for s in state.values())
    ttt.remove_ttt(ours)
    assert type(ours.transformer.layers[1]).__name__ == "StreamingTransformerLayer"
    with torch.no_grad():
        assert torch.equal(ours.forward_text(seq)[1], upstream.forward_text(seq)[1])


def test_figure5_losses_match_an_independent_evaluation():
    b, x = branch(), xs(batch=1, T=8)
    with torch.no_grad(), b.streaming(1):
        b(x)
        s = b._streaming_state
        losses = s.inner_loss[0].tolist()
        xq, xk, target, eta = b.inputs(x)
        w_after = {n: getattr(s.start, n)[0] for n in ("W1", "b1", "W2", "b2")}
    # ℓ(W) on the second mini-batch (tokens 4..7), recomputed per token and head by hand.
    from reference_ttt_mlp import _ln, _mlp
    g, be = b.ttt_norm_weight.detach().double(), b.ttt_norm_bias.detach().double()

    def loss(W):
        total = 0.0
        for h in range(HEADS):
            for t in range(4, 8):
                pred = _ln(_mlp(xk[0, h, t].double(), W["W1"][h].double(), W["b1"][h, 0].double(),
                                W["W2"][h].double(), W["b2"][h, 0].double()), g[h], be[h])
                total += 0.5 * ((pred - target[0, h, t].double()) ** 2).sum().item()
        return total / (HEADS * 4)

    base = {n: getattr(b, n).detach() for n in ("W1", "b1", "W2", "b2")}
    assert abs(losses[0] - loss(base)) <= 1e-5 * abs(loss(base))
    assert abs(losses[2] - loss(w_after)) <= 1e-5 * abs(loss(w_after))
    assert losses[2] < losses[1]  # a gradient step with a small lr lowers the mini-batch loss


# ---- attention-vs-TTT diagnostics (both variants) ----------------------------------------------

def _layer_io(lm, index):
    """Independent capture: layer input/output, the self-attention update, the feed-forward input."""
    got = {}
    layer = lm.transformer.layers[index]
    hs = [layer.register_forward_hook(lambda m, a, o: got.update(inp=a[0], out=o)),
          layer.self_attn.register_forward_hook(lambda m, a, o: got.update(attn=o)),
          layer.norm2.register_forward_pre_hook(lambda m, a: got.update(ff_in=a[0]))]
    return got, hs


@pytest.mark.parametrize("variant", ["inplace", "ttt_mlp"])
def test_diagnostics_describe_the_layer(variant):
    import json
    from ttt.session.diagnostics import LOG_PREFIX, Diagnostics, diagnostics_line
    cfg = dict(variant=variant, start_layer=1, layer_frequency=2, chunk_size=M, lr=1.0,
               init_std=0.3, delta_clip_fro_norm=None)  # unclipped: W moves visibly
    lm = ttt.apply_ttt(tiny_lm(0), ttt.TTTConfig(**cfg))
    diag = Diagnostics(lm)
    got, hooks = _layer_io(lm, 1)
    seq = random_sequence(1, 12)
    with torch.no_grad(), lm.streaming(1):
        lm.forward_text(seq[:, :, :8])
        first = diag.record()
        lm.forward_text(seq[:, :, 8:])
        rec = diag.record()[1]
        w_norm = ttt.ttt_state(lm)[1]["w_norm"][0].item()  # what telemetry reports at this point
    for h in hooks:
        h.remove()
    x_attn = got["inp"] + got["attn"]
    if variant == "inplace":  # attn = attention update, ttt = feed-forward update, sum = layer's
        ttt_part, combined = got["out"] - x_attn, got["out"] - got["inp"]
        attn = got["attn"]
    else:  # hybrid, as the seeds logged it: stream after attention, branch, gated sum
        attn, combined = x_attn, got["ff_in"]
        ttt_part = (combined - x_attn) / torch.tanh(torch.tensor(0.1))
        assert rec["gate_tanh_mean"] == pytest.approx(torch.tanh(torch.tensor(0.1)).item(), rel=1e-6)
        assert rec["alpha_min"] == pytest.approx(0.1) and rec["alpha_std"] < 1e-6
    for name, ref in (("attn", attn), ("ttt", ttt_part), ("combined", combined)):
        assert rec[f"{name}_norm"] == pytest.approx(ref[0].norm().item(), rel=1e-4), name
        assert rec[f"{name}_norm_per_token"] == pytest.approx(ref[0].norm(dim=-1).mean().item(), rel=1e-4)
    assert rec["ttt_attn_ratio"] == pytest.approx(ttt_part.norm().item() / attn.norm().item(), rel=1e-4)
    cos = torch.nn.functional.cosine_similarity(attn.flatten(), ttt_part.flatten(), dim=0).item()
    assert rec["cos_attn_ttt"] == pytest.approx(cos, abs=1e-4)
    assert "attn_delta" not in first[1] and rec["attn_delta"] > 0 and rec["ttt_delta_rel"] > 0
    assert rec["w_norm"] == w_norm and w_norm != first[1]["w_norm"]  # W moved since the first record
    line = diagnostics_line({1: rec}, 12, cell="c")
    assert line.startswith(LOG_PREFIX)
    assert json.loads(line[len(LOG_PREFIX):])["layers"]["1"]["cos_attn_ttt"] == rec["cos_attn_ttt"]
    diag.close()
    assert not diag.handles


HYBRID_BASE = dict(variant="ttt_mlp", start_layer=1, layer_frequency=2, chunk_size=4, lr=1.0,
                   init_std=0.3, gate_alpha_init=0.5)
HYBRID_CHANGED = dict(start_layer=0, layer_frequency=3, chunk_size=3, lr=0.3, init_std=0.2,
                      mlp_heads=2, gate_alpha_init=0.9, gate_override=0.2)


@pytest.mark.parametrize("field", sorted(HYBRID_CHANGED))
def test_every_hybrid_config_field_from_yaml_changes_behaviour(field):
    """Each key, through YAML, reaches the TTT-MLP branch and changes the logits."""
    import yaml

    def logits(cfg_dict):
        cfg = ttt.TTTConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg_dict)))
        torch.manual_seed(123)
        lm = ttt.apply_ttt(tiny_lm(0), cfg)
        assert all(m.cfg is cfg for m in ttt.ttt_layers(lm).values())
        with torch.no_grad():
            return lm.forward_text(random_sequence(1, 24))[1]

    assert not torch.allclose(logits(HYBRID_BASE), logits({**HYBRID_BASE, field: HYBRID_CHANGED[field]}))


def test_snapshot_mid_mini_batch_restores_the_hybrid_state(tmp_path):
    """W_b, W_cur, the mini-batch buffers and counters travel; W_base (a parameter) does not."""
    from ttt.session.snapshot import load_snapshot, restore, save_snapshot, snapshot
    cfg = ttt.TTTConfig(variant="ttt_mlp", layers=(1, 2), chunk_size=M, lr=1.0, init_std=0.3)
    lm = ttt.apply_ttt(tiny_lm(0), cfg)
    seq = random_sequence(1, 15)
    with torch.no_grad():
        with lm.streaming(1):  # the same blocks without interruption
            lm.forward_text(seq[:, :, :6])
            whole = lm.forward_text(seq[:, :, 6:])[1]
        with lm.streaming(1):
            lm.forward_text(seq[:, :, :6])  # 6 = one and a half mini-batches
            snap = snapshot({"lm": lm})
        assert "base_params" not in str(snap)
        save_snapshot(tmp_path / "s.pt", snap)
        with lm.streaming(1):
            lm.forward_text(random_sequence(1, 9, seed=5))  # a different history...
            restore({"lm": lm}, load_snapshot(tmp_path / "s.pt"))  # ...replaced by the snapshot
            rest = lm.forward_text(seq[:, :, 6:])[1]
            updates = {i: int(s["updates"][0]) for i, s in ttt.ttt_state(lm).items()}
    assert torch.equal(rest, whole)
    assert updates == {1: 15 // M, 2: 15 // M}


def _seeds_layout(state: dict, layers) -> dict:
    """Our hybrid state dict rewritten in the seeds' layout: the wrapped moshi layer under
    ``original_layer`` (and again under ``seq_modeling_block.original_layer``), the branch under
    ``seq_modeling_block.ttt_layer.ttt``, the gate as ``forward_ssm_gating`` (+ a reverse gate)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[:2] != ["transformer", "layers"] or int(parts[2]) not in layers:
            out[key] = value
            continue
        head, name = ".".join(parts[:3]) + ".", ".".join(parts[3:])
        if name == "ttt_mlp.gating_alpha":
            out[head + "seq_modeling_block.forward_ssm_gating.gating_alpha"] = value
            out[head + "seq_modeling_block.backward_ssm_gating.gating_alpha"] = value.clone()
        elif name.startswith("ttt_mlp."):
            out[head + "seq_modeling_block.ttt_layer.ttt." + name[len("ttt_mlp."):]] = value
        else:
            out[head + "original_layer." + name] = value
            out[head + "seq_modeling_block.original_layer." + name] = value.clone()
    return out


def test_seeds_hybrid_checkpoint_loads(tmp_path):
    """A checkpoint directory in the seeds' hybrid layout loads through load_checkpoint (keys and
    shapes checked) and gives the logits of the model it was written from."""
    from safetensors.torch import save_file
    from ttt.moshi.model import load_checkpoint
    from ttt.moshi.tiny import build_tiny_checkpoint
    ckpt = build_tiny_checkpoint(tmp_path / "ckpt", seed=0)
    cfg = dict(variant="ttt_mlp", layers=[1, 3], chunk_size=M, lr=1.0, init_std=0.3)
    source = load_checkpoint(ckpt, ttt=cfg, seed=1).lm
    with torch.no_grad():
        for p in source.transformer.layers[1].ttt_mlp.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(_seeds_layout(state, (1, 3)), str(ckpt / "model.safetensors"))
    loaded = load_checkpoint(ckpt, ttt=cfg, seed=2).lm  # another fresh init: all from disk
    seq = random_sequence(1, 14)
    with torch.no_grad():
        assert torch.equal(loaded.forward_text(seq)[1], source.forward_text(seq)[1])
    from ttt.moshi.model import CheckpointError
    with pytest.raises(CheckpointError, match="unexpected key.*ttt_mlp"):
        load_checkpoint(ckpt, ttt={**cfg, "layers": [1]})  # layer 3 holds a branch too
