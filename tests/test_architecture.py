"""Issue 25 item 3: an LM that does not fit its Mimi or tokenizer is refused by preflight (and by
the model load of run-cell) from the config and tensor headers, one line naming the key and both
values, instead of an IndexError / AssertionError in every cell after planning.

Each case is a real checkpoint directory whose LM weights fit its own config (so every check that
existed passed): the LM built by moshi with one architecture key changed, next to the tiny
default's Mimi (2048-bin codebooks) and tokenizer."""
import json
import os
from pathlib import Path

import pytest
import sentencepiece
import torch
from moshi.models import loaders
from safetensors.torch import save_file

from ttt.launch.preflight import PreflightError, check_model
from ttt.moshi.architecture import mimi_codebooks
from ttt.moshi.layouts import project_config
from ttt.moshi.model import CheckpointError, _header, load_checkpoint
from ttt.moshi.tiny import DEFAULT_LM_KWARGS, build_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny-seed0", 0)


def checkpoint(root: Path, tiny: Path, **changes) -> Path:
    out = root / "_".join(f"{k}{v}" for k, v in changes.items() if k != "delays")
    out.mkdir()
    for name in ("mimi.safetensors", "tokenizer.model"):
        os.symlink(tiny / name, out / name)
    kwargs = {**DEFAULT_LM_KWARGS, **changes}
    torch.manual_seed(0)
    lm = loaders.get_moshi_lm(None, lm_kwargs=kwargs, device="cpu", dtype=torch.float32)
    save_file({k: v.contiguous() for k, v in lm.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(project_config(kwargs)))
    return out


def test_the_tiny_default_fits_and_its_codec_is_read_from_headers(tiny, tmp_path):
    assert mimi_codebooks(_header(tiny / "mimi.safetensors")) == (2048, 32)  # Mimi: 32 × 2048
    check_model(str(tiny), None, tmp_path)  # no error


def test_card_other_than_mimis_bins(tiny, tmp_path):
    ckpt = checkpoint(tmp_path, tiny, card=1024)
    with pytest.raises(PreflightError) as info:
        check_model(str(ckpt), None, tmp_path)
    assert str(info.value) == (f"config model: {ckpt / 'config.json'}: card 1024 but Mimi's codebooks "
                               f"have 2048 bins ({ckpt / 'mimi.safetensors'}); the LM reads and "
                               "writes Mimi's codes")
    with pytest.raises(CheckpointError, match="card 1024 but Mimi's codebooks have 2048 bins"):
        load_checkpoint(str(ckpt), cache_root=tmp_path)  # run-cell's load: before any weight


def test_text_card_below_the_tokenizers_vocabulary(tiny, tmp_path):
    vocabulary = sentencepiece.SentencePieceProcessor(model_file=str(tiny / "tokenizer.model")).vocab_size()
    ckpt = checkpoint(tmp_path, tiny, text_card=vocabulary - 8)
    with pytest.raises(PreflightError) as info:
        check_model(str(ckpt), None, tmp_path)
    assert str(info.value) == (f"config model: {ckpt / 'config.json'}: text_card {vocabulary - 8} is "
                               f"smaller than the tokenizer's vocabulary of {vocabulary} pieces "
                               f"({ckpt / 'tokenizer.model'})")


def test_n_q_that_is_not_two_speakers_of_dep_q(tiny, tmp_path):
    delays = DEFAULT_LM_KWARGS["delays"][:9]  # moshi needs n_q + 1 delays
    ckpt = checkpoint(tmp_path, tiny, n_q=8, delays=delays)
    with pytest.raises(PreflightError, match=r": n_q 8 but dep_q 8: a two-speaker conversation is "
                                             r"1 text \+ 8 Moshi \+ 8 user streams, n_q = 16$"):
        check_model(str(ckpt), None, tmp_path)
