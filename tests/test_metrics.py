"""Perplexity against moshi's own lm(codes), WER against jiwer on normalised text."""
import math

import jiwer
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ttt
from ttt.eval.metrics import normalize, perplexity, sliding_perplexity, teacher_forced_nll, word_errors
from conftest import randomize_ttt_params, random_sequence, tiny_lm


def independent_ppl(lm, codes):
    """exp(mean CE in nats) straight from lm(codes) and its masks."""
    with torch.no_grad():
        out = lm(codes)
    text_mask, audio_mask = out.text_mask, out.mask
    text_ce = F.cross_entropy(out.text_logits[text_mask].float(), codes[:, :1][text_mask])
    audio_codes = codes[:, lm.audio_offset:lm.audio_offset + lm.dep_q]
    audio_ce = F.cross_entropy(out.logits[audio_mask].float(), audio_codes[audio_mask])
    return math.exp(text_ce.item()), math.exp(audio_ce.item()), text_mask, audio_mask


@pytest.mark.parametrize("ttt_on", [False, True])
@pytest.mark.parametrize("block", [1, 7, 64])
@pytest.mark.parametrize("context", [None, 16])
def test_streamed_perplexity_equals_lm_forward(ttt_on, block, context):
    """Any block size, also past moshi's attention context (16 < 40 tokens): upstream's ring
    KV cache of exactly ``context`` slots would lose keys inside a block (size_kv_rings)."""
    lm = tiny_lm(0) if context is None else tiny_lm(0, context=context)
    if ttt_on:
        randomize_ttt_params(ttt.apply_ttt(lm, ttt.TTTConfig(layers=(1, 3), chunk_size=6, lr=0.5)))
    codes = random_sequence(2, 40, seed=3)
    codes[0, 3, 10:14] = lm.zero_token_id  # masked tokens must be skipped like moshi does
    codes[1, 0, 20] = lm.zero_token_id
    text_ppl, audio_ppl, text_mask, audio_mask = independent_ppl(lm, codes)
    nll = teacher_forced_nll(lm, codes, block=block)
    assert np.array_equal(~np.isnan(nll.text), text_mask[:, 0].numpy())
    assert np.array_equal(~np.isnan(nll.audio), audio_mask.numpy())
    assert perplexity(nll.text) == pytest.approx(text_ppl, rel=1e-5)
    assert perplexity(nll.audio) == pytest.approx(audio_ppl, rel=1e-5)


def test_sliding_perplexity_windows():
    nll = np.array([[0.0, 0.0, math.log(4), math.log(4), np.nan, math.log(2)]])
    assert sliding_perplexity(nll, 2) == [(0, 1.0), (2, 4.0), (4, 2.0)]
    assert perplexity(np.array([np.nan])) is None


def test_wer_matches_jiwer_on_normalised_text():
    refs = ["Hello, Mr. Smith!", "the cat sat on the mat", "It's ten o'clock"]
    hyps = ["hello mister smith", "the cat sat on mat please", "it is 10 o'clock"]
    got = word_errors(refs, hyps)
    want = jiwer.process_words([normalize(r) for r in refs], [normalize(h) for h in hyps])
    assert got["wer"] == pytest.approx(want.wer)
    assert (got["substitutions"], got["deletions"], got["insertions"]) == (
        want.substitutions, want.deletions, want.insertions)
    assert got["ref_words"] == want.hits + want.substitutions + want.deletions
    assert normalize("Hello, Mr. Smith!") == "hello mister smith"


def test_wer_edge_cases_are_explicit():
    assert word_errors([""], [""]) == dict(wer=None, substitutions=0, deletions=0, insertions=0,
                                           ref_words=0)
    assert word_errors([""], ["two words"])["insertions"] == 2
    assert word_errors([""], ["two words"])["wer"] is None
    gone = word_errors(["three little words"], [""])
    assert (gone["wer"], gone["deletions"], gone["ref_words"]) == (1.0, 3, 3)
    mixed = word_errors(["a b", ""], ["a b", "extra"])
    assert (mixed["wer"], mixed["insertions"]) == (0.5, 1)
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_errors(["a", "b"], ["a"])
