"""Config validation and round trip, seeds' checkpoint layout, training-mode gradients."""
import copy
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import ttt
from conftest import (directional_derivatives, randomize_ttt_params, random_sequence, rel_err,
                      tiny_lm)
from reference_ttt import build_reference

BASE = dict(enabled=True, variant="inplace", layers=None, start_layer=1, layer_frequency=2,
            chunk_size=6, lr=1.0, conv_kernel_size=3, conv_padding="right",
            delta_clip_fro_norm=0.5, target_source="hidden_states", conv_init="zero", init_std=0.5)

# One changed value per In-Place field (the TTT-MLP hybrid's fields: tests/test_ttt_mlp.py).
CHANGED = dict(enabled=False, layers=[0], start_layer=0, layer_frequency=3, chunk_size=4, lr=0.3,
               conv_kernel_size=5, conv_padding="center", delta_clip_fro_norm=0.01, init_std=0.2,
               target_conv=False, target_projection=False, target_source="embeddings",
               conv_init="identity")


@pytest.mark.parametrize("bad,field", [
    (dict(chunk_size=0), "chunk_size"), (dict(lr=-1.0), "lr"), (dict(lr=float("nan")), "lr"),
    (dict(conv_padding="left"), "conv_padding"), (dict(variant="mlp"), "variant"),
    (dict(conv_padding="center", conv_kernel_size=2), "conv_kernel_size"),
    (dict(layers=(1, 1)), "layers"), (dict(layer_frequency=0), "layer_frequency"),
    (dict(target_source="output"), "target_source"), (dict(conv_init="eye"), "conv_init"), (dict(enabled="yes"), "enabled"),
    (dict(delta_clip_fro_norm="1e-5"), "delta_clip_fro_norm"), (dict(start_layer=-1), "start_layer"),
    (dict(mlp_heads=0), "mlp_heads"), (dict(gate_override="on"), "gate_override"),
    (dict(gate_alpha_init=None), "gate_alpha_init"),
])
def test_bad_config_names_the_field(bad, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        ttt.TTTConfig(**bad)


def test_unknown_keys_and_out_of_range_layers_are_errors():
    with pytest.raises(ValueError, match="unknown key.*delta_clip"):
        ttt.TTTConfig.from_dict({"delta_clip": 1.0})
    with pytest.raises(ValueError, match="^layers:.*out of range"):
        ttt.apply_ttt(tiny_lm(0), ttt.TTTConfig(layers=(7,)))


def test_layer_selection_rule():
    cfg = ttt.TTTConfig(start_layer=2, layer_frequency=3)
    assert cfg.layer_indices(12) == [2, 5, 8, 11]
    assert ttt.TTTConfig(layers=(10, 20, 30)).layer_indices(32) == [10, 20, 30]
    assert ttt.TTTConfig(enabled=False).layer_indices(32) == []
    lm = ttt.apply_ttt(tiny_lm(0), ttt.TTTConfig(start_layer=1, layer_frequency=2))
    assert sorted(ttt.ttt_layers(lm)) == [1, 3]
    assert not any("TTT" in type(m).__name__ for m in lm.depformer.modules())


def test_clip_off_values():
    assert ttt.TTTConfig(delta_clip_fro_norm=None).clip is None
    assert ttt.TTTConfig(delta_clip_fro_norm=0).clip is None
    assert ttt.TTTConfig(delta_clip_fro_norm=-1.0).clip is None
    assert ttt.TTTConfig(delta_clip_fro_norm=1e-5).clip == 1e-5


def _logits_for(cfg_dict):
    cfg = ttt.TTTConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg_dict)))
    torch.manual_seed(123)  # same W_target draw for every config
    lm = ttt.apply_ttt(tiny_lm(0), cfg)
    g = torch.Generator().manual_seed(7)
    for layer in ttt.ttt_layers(lm).values():
        assert layer.cfg is cfg  # the object from YAML reaches the module unchanged
        conv = layer.target_generator.conv_weight  # all taps active, so k matters
        if conv is not None:  # None: switched off by target_conv
            with torch.no_grad():  # added to the init, so conv_init matters too
                conv.add_(torch.randn(conv.shape, generator=g) / conv.shape[1] ** 0.5)
    with torch.no_grad():
        return lm.forward_text(random_sequence(1, 30))[1]


@pytest.mark.parametrize("field", sorted(CHANGED))
def test_every_config_field_from_yaml_changes_behaviour(field):
    """The seeds lost delta_clip_fro_norm between YAML and module; here every field must bite."""
    base = _logits_for(BASE)
    changed = _logits_for({**BASE, field: CHANGED[field]})
    assert not torch.allclose(base, changed), f"{field} from YAML had no effect"


def test_legacy_target_key_reads_as_target_source():
    """Checkpoints written before the rename carry ``target: input_embed`` (the official name)."""
    assert ttt.TTTConfig.from_dict({"target": "input_embed"}).target_source == "embeddings"
    assert ttt.TTTConfig.from_dict({"target": "hidden_states"}).target_source == "hidden_states"
    with pytest.raises(ValueError, match="^target_source:"):
        ttt.TTTConfig.from_dict({"target": "output"})


def test_from_seeds_reads_their_keys():
    cfg = ttt.TTTConfig.from_seeds({"enabled": True, "layer_frequency": 6, "start_layer": 5,
                                    "chunk_size": 256, "learning_rate": 3e-4,
                                    "conv_kernel_size": 2, "delta_clip_fro_norm": 100.0})
    assert (cfg.lr, cfg.chunk_size, cfg.start_layer, cfg.layer_frequency) == (3e-4, 256, 5, 6)
    assert cfg.clip == 100.0 and cfg.conv_padding == "right"
    with pytest.raises(ValueError, match="unknown key.*lr_typo"):
        ttt.TTTConfig.from_seeds({"lr_typo": 1})


def test_seeds_checkpoint_loads_strictly_and_matches_reference(tmp_path):
    """Write a checkpoint in the seeds' layout by hand (their key names, w_down_pretrained,
    config.json with ttt_config), load it into a fresh model, compare with the token loop."""
    d, hid = 32, 88
    g = torch.Generator().manual_seed(5)
    upstream = tiny_lm(0)
    sd = {k: v.clone() for k, v in upstream.state_dict().items()}
    for i in (1, 3):
        p = f"transformer.layers.{i}.gating."
        sd[p + "w_down"] = sd[p + "linear_out.weight"].float() + 0.01 * torch.randn(d, hid, generator=g)
        sd[p + "w_down_pretrained"] = sd[p + "linear_out.weight"].clone()
        sd[p + "target_generator.conv1d.conv.weight"] = 0.2 * torch.randn(d, d, 2, generator=g)
        sd[p + "target_generator.W_target.weight"] = 0.2 * torch.randn(d, d, generator=g)
    save_file(sd, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"ttt_config": {
        "enabled": True, "layer_frequency": 2, "start_layer": 1, "chunk_size": 5,
        "learning_rate": 0.5, "conv_kernel_size": 2, "delta_clip_fro_norm": 0.5}}))

    cfg = ttt.TTTConfig.from_seeds(json.loads((tmp_path / "config.json").read_text())["ttt_config"])
    lm = ttt.apply_ttt(tiny_lm(99), cfg)  # different random init: everything must come from disk
    missing, unexpected = lm.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    assert not missing and not unexpected
    ref = build_reference(upstream, lm, (1, 3), cfg)
    seq = random_sequence(1, 27)
    with torch.no_grad():
        got, want = lm.forward_text(seq)[1], ref.forward_text(seq)[1]
    assert rel_err(got, want) <= 1e-5
    # An upstream checkpoint (no w_down) loads too: W^(0) starts at linear_out.
    lm2 = ttt.apply_ttt(tiny_lm(99), cfg)
    upstream_sd = upstream.state_dict()
    result = lm2.load_state_dict(upstream_sd, strict=False)
    assert all("target_generator" in k for k in result.missing_keys)
    assert torch.equal(lm2.transformer.layers[1].gating.w_down,
                       upstream_sd["transformer.layers.1.gating.linear_out.weight"].float())


# ---- training mode -----------------------------------------------------------------------------

def _double_model(cfg):
    lm = tiny_lm(0, dtype=torch.float64, norm="rms_norm")
    return randomize_ttt_params(ttt.apply_ttt(lm, cfg)).train()


def test_training_gradients_match_finite_differences():
    cfg = ttt.TTTConfig(layers=(1, 2), chunk_size=5, lr=0.5, delta_clip_fro_norm=0.3)
    lm = _double_model(cfg)
    seq = random_sequence(1, 17)
    gating = lm.transformer.layers[1].gating
    params = {"W_target": gating.target_generator.W_target.weight,
              "conv": gating.target_generator.conv1d.conv.weight,
              "linear_in": gating.linear_in.weight, "w_down": gating.w_down}
    probe = torch.randn(lm.text_linear.weight.shape[0], dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))

    def loss():
        return (lm.forward_text(seq)[1] * probe).sum()

    lm.zero_grad()
    loss().backward()
    g = torch.Generator().manual_seed(1)
    for name, p in params.items():
        # eps 1e-3: smaller steps drown in the fp32 rope's rounding (checked down to 1e-5)
        analytic, numeric = directional_derivatives(loss, p, g, eps=1e-3)
        assert abs(analytic - numeric) <= 2e-3 * max(abs(numeric), 1e-3), (name, analytic, numeric)


def test_training_is_causal_chunk_never_sees_its_own_delta():
    """The loss of chunk i has no gradient w.r.t. tokens of chunk i+1 or later, and the first
    chunk's logits have no gradient to W_target (no update precedes them)."""
    cfg = ttt.TTTConfig(layers=(0, 1, 2, 3), chunk_size=6, lr=0.5, delta_clip_fro_norm=None)
    lm = _double_model(cfg)
    seq = random_sequence(1, 18)
    emb_out = []
    handle = lm.text_emb.register_forward_hook(lambda m, i, o: emb_out.append(o) or o.retain_grad())
    text = lm.forward_text(seq)[1]
    handle.remove()
    text[:, :, 6:12].sum().backward(retain_graph=True)
    grad = emb_out[0].grad
    assert grad[:, :12].abs().sum() > 0 and torch.all(grad[:, 12:] == 0)
    lm.zero_grad()
    text[:, :, :6].sum().backward()
    assert lm.transformer.layers[0].gating.target_generator.W_target.weight.grad is None or torch.all(
        lm.transformer.layers[0].gating.target_generator.W_target.weight.grad == 0)


def test_apply_twice_or_while_streaming_is_an_error():
    lm = ttt.apply_ttt(tiny_lm(0), ttt.TTTConfig(layers=(0,)))
    with pytest.raises(RuntimeError, match="already applied"):
        ttt.apply_ttt(lm, ttt.TTTConfig(layers=(1,)))
    plain = tiny_lm(0)
    with plain.streaming(1):
        with pytest.raises(RuntimeError, match="streaming"):
            ttt.apply_ttt(plain, ttt.TTTConfig(layers=(0,)))
    assert copy.deepcopy(lm) is not None
