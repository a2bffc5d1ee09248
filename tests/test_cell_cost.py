"""What a teacher-forced cell runs beyond its scored pass (#19): the A/B twin adds its TTT-off pass
and nothing else, with the pre-update logits of both taken from the passes themselves."""
import pytest
import torch

import ttt
from conftest import make_cell
from ttt.eval.cell import cell_items
from ttt.eval.checks import ab_twin
from ttt.data.codes import conversation_codes
from ttt.eval.metrics import teacher_forced_nll
from ttt.moshi.model import load_checkpoint, resolve_model
from ttt.moshi.surgery import ttt_disabled


def test_ab_twin_runs_one_pass_and_its_pre_update_logits_equal_a_separate_forward(cache):
    cfg = make_cell(cache, "ab", [6.0])
    bundle = load_checkpoint(resolve_model("tiny-random", cache / "models"), ttt=cfg.ttt, seed=0)
    lm = bundle.lm
    codes = conversation_codes(bundle.mimi, bundle.tokenizer, cell_items(cfg, cache)[0],
                               cache / "codes", bundle.mimi_id)
    chunk, block = 8, 32
    on = teacher_forced_nll(lm, codes, block=block, head=chunk)
    calls = {"forward_text": 0, "forward": 0}
    hooks = [lm.register_forward_pre_hook(lambda *_: calls.__setitem__("forward", calls["forward"] + 1))]
    original = lm.forward_text

    def counted(*args, **kwargs):
        calls["forward_text"] += 1
        return original(*args, **kwargs)
    lm.forward_text = counted
    try:
        ab = ab_twin(lm, codes, chunk, block, on)
    finally:
        del lm.forward_text
        for h in hooks:
            h.remove()
    blocks = -(-codes.shape[-1] // block)
    assert calls == {"forward_text": blocks, "forward": 0}  # the TTT-off pass only
    # independent: moshi's own lm(codes) over the first chunk, with TTT and without
    with torch.no_grad():
        want_on = lm(codes[:, :, :chunk]).text_logits
        with ttt_disabled(lm):
            want_off = lm(codes[:, :, :chunk]).text_logits
            off = teacher_forced_nll(lm, codes, block=block, head=chunk)
    ok = torch.isfinite(want_on)
    assert torch.allclose(on.head_text_logits[ok], want_on[ok], rtol=1e-5, atol=1e-5)
    assert torch.allclose(off.head_text_logits[ok], want_off[ok], rtol=1e-5, atol=1e-5)
    assert ab["pre_update_logits_rel_err"] < 1e-6
    assert ab["text_ppl_on"] != pytest.approx(ab["text_ppl_off"], rel=1e-9)  # the twin differs
