"""The natural-set evaluation (ttt/control/natural.py): the fast-weight drift it reports is the fast
weight the model itself applies (checked against the layer's dual-form output, decay and reset
included), and its regions pick the frames the manifest names."""
import copy

import numpy as np
import pytest
import torch

import ttt
from conftest import randomize_ttt_params, random_sequence, tiny_lm
from ttt.base.paired_effect import paired_effect
from ttt.control import natural


@pytest.mark.parametrize("extra", [{}, {"decay": 0.8}, {"reset_every": 4}])
def test_offset_is_the_fast_weight_the_last_tokens_see(extra):
    cfg = ttt.TTTConfig(layers=(1, 3), chunk_size=6, lr=0.3, delta_clip_fro_norm=None, **extra)
    lm = randomize_ttt_params(ttt.apply_ttt(copy.deepcopy(tiny_lm(0)), cfg))
    codes = random_sequence(1, 40)  # 6 updating chunks, then 4 tokens seeing W^(6)
    for layer in natural.fast_weight_offsets(lm, codes):
        n, z, w0 = layer["updates"], layer["z"], layer["w0"]
        assert n == 6 and layer["offset"].norm() > 1e-3 * w0.norm()
        expected = torch.nn.functional.linear(z[n * 6:].float(), w0 + layer["offset"])
        assert torch.allclose(layer["out"][n * 6:].float(), expected, atol=1e-4, rtol=1e-4)
        wrong = torch.nn.functional.linear(z[n * 6:].float(), w0 + 0.9 * layer["offset"])
        assert not torch.allclose(layer["out"][n * 6:].float(), wrong, atol=1e-4, rtol=1e-4)
    drift = natural.fast_weight_drift(lm, codes)
    assert len(drift) == 2 and all(d > 0 for d in drift)


def test_regions_split_beyond_the_context_at_the_manifest_repeats():
    line = {"turns": [{"speaker": 0, "start": 0.0, "end": 1.0, "repeat_of": None},
                      {"speaker": 1, "start": 4.0, "end": 5.0, "repeat_of": None},
                      {"speaker": 0, "start": 4.0, "end": 4.4, "repeat_of": 0},
                      {"speaker": 1, "start": 5.2, "end": 6.2, "repeat_of": 1},
                      {"speaker": 0, "start": 6.4, "end": 6.6, "repeat_of": None}]}
    repeat = natural.speech_frames(line, 100, True)
    assert np.flatnonzero(repeat).tolist() == list(range(50, 55))  # speaker 0's repeat only
    masks = {r: natural.region_mask(r, line, 100, 52) for r in natural.REGIONS}
    assert np.flatnonzero(masks["repeat"]).tolist() == [52, 53, 54]
    assert np.flatnonzero(masks["fresh_speech"]).tolist() == [80, 81, 82]  # frame 0-12 is before
    assert (masks["before_context"] == ~masks["beyond_context"]).all()


def test_relative_difference_of_groups_matches_their_paired_effects():
    g = np.random.default_rng(1)
    groups = [[(g.uniform(50, 90, n), g.integers(40, 60, n).astype(float)) for _ in (0, 1)]
              for n in (5, 7)]
    (on_a, off_a), (on_b, off_b) = groups
    got = natural.relative_difference(on_a, off_a, on_b, off_b, np.random.default_rng(0))
    want = paired_effect(on_a, off_a).rel_gain - paired_effect(on_b, off_b).rel_gain
    assert abs(got["rel_gain_difference"] - want) < 1e-12 and abs(want) > 1e-3
    assert got["ci95"][0] < want < got["ci95"][1]


def test_settings_parse_and_bad_ones_are_one_line(tmp_path, capsys):
    assert natural.parse_setting("default") == {}
    assert natural.parse_setting("lr=0.003,reset_every=16,delta_clip_fro_norm=null") == {
        "lr": 0.003, "reset_every": 16, "delta_clip_fro_norm": None}
    assert natural.main(["--checkpoint", "x", "--manifest", str(tmp_path / "none.jsonl"),
                         "--out", str(tmp_path / "o.json"), "--setting", "lr"]) == 2
    assert natural.main(["--checkpoint", "x", "--manifest", str(tmp_path / "none.jsonl"),
                         "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "KEY=VALUE" in err[0] and "none.jsonl" in err[1]
