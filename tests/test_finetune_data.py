"""moshi-finetune data parity (issue 15 item 6): the text stream, words past the end, data
directories, transcribe references.

The reference below is written from kyutai-labs/moshi-finetune's source, not from ttt/data/conversations.py:
``finetune/data/interleaver.py`` (``tokenize``, ``Interleaver.prepare_item`` and
``build_token_stream``) as ``train.py`` configures it: ``keep_main_only=True``, padding =
``text_padding_token_id`` (3), end of padding = ``end_of_text_padding_id`` (0), in-word padding
= padding, no audio delay. It walks the frames one by one, as the interleaver does; ttt/data/conversations.py
walks the words.
"""
import json
import logging
import random
from collections import deque

import numpy as np
import pytest
import sentencepiece
import soundfile as sf

from ttt.data.conversations import (MAIN, OTHER, read_alignments, read_manifest, reference_speaker,
                                    text_stream)
from ttt.moshi.tiny import train_demo_tokenizer

PAD, EOP = 3, 0


def finetune_text_stream(alignments, tokenizer, frames, main="SPEAKER_MAIN", rate=12.5):
    def tokens_of(word):
        pieces = [tokenizer.encode(line) for line in word.strip().split("\n")]
        out = pieces[0]
        for piece in pieces[1:]:
            out = out + [tokenizer.encode("\n")[-1]] + piece
        return out

    ordered = sorted(alignments, key=lambda a: a[1][0])
    words = [(tokens_of(w), ts) for w, ts, spk in ordered if spk == main]
    words = [(toks, ts) for toks, ts in words if ts[0] < ts[1]]
    out = [PAD] * frames
    pending, nxt, last_end = deque(), 0, -1
    for t in range(frames):
        while nxt < len(words) and words[nxt][1][0] * rate < t + 1:
            pending = deque(words[nxt][0])  # a new word replaces what is left of the last
            last_end = int(words[nxt][1][1] * rate)
            nxt += 1
        if pending:
            if t > 0 and out[t - 1] == PAD:
                out[t - 1] = EOP
            out[t] = pending.popleft()
        elif t <= last_end:
            out[t] = PAD  # in-word padding is the padding token in train.py's interleaver
    return out


@pytest.fixture(scope="module")
def tokenizer():
    return sentencepiece.SentencePieceProcessor(model_proto=train_demo_tokenizer())


# Alignments as moshi-finetune's annotate.py writes them (whisper words keep their leading space,
# every word SPEAKER_MAIN), plus the cases the issue names.
CASES = {
    "annotate.py": [[" hello", [0.0, 0.3], MAIN], [" world", [0.42, 0.8], MAIN],
                    [" how", [1.9, 2.1], MAIN], [" are", [2.1, 2.2], MAIN], [" you", [2.2, 2.6], MAIN]],
    "zero-length words": [[" yes", [0.5, 0.5], MAIN], [" no", [0.9, 1.2], MAIN], [" maybe", [1.3, 1.3], MAIN],
                          [" today", [1.4, 1.8], MAIN]],
    "overflow into the next word": [[" weather sunny warm", [0.0, 0.1], MAIN],
                                    [" walk later", [0.16, 0.4], MAIN], [" good", [2.0, 2.5], MAIN]],
    "same frame, other speaker, unsorted": [[" tell", [1.0, 1.2], MAIN], [" me", [0.3, 0.35], OTHER],
                                            [" about", [0.1, 0.2], MAIN], [" the", [0.12, 0.15], MAIN],
                                            [" soon", [-0.2, 0.05], MAIN]],
    "running past the end": [[" see", [2.5, 2.9], MAIN], [" you soon great", [2.95, 3.5], MAIN]],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_text_stream_matches_moshi_finetune(tokenizer, case):
    alignments = [(w, tuple(ts), spk) for w, ts, spk in CASES[case]]
    frames = 38  # 3.0 s
    ours = text_stream(alignments, tokenizer, frames).tolist()
    assert ours == finetune_text_stream(alignments, tokenizer, frames)
    assert EOP in ours and any(t not in (PAD, EOP) for t in ours)


def test_text_stream_matches_moshi_finetune_on_random_alignments(tokenizer):
    from ttt.moshi.tiny import DEMO_WORDS
    rng = random.Random(0)
    for _ in range(200):
        t, alignments = rng.uniform(-0.2, 0.3), []
        for _ in range(rng.randint(0, 25)):
            t += rng.choice([0.0, 0.02, 0.08, 0.2, 0.5])
            words = " ".join(rng.choice(DEMO_WORDS) for _ in range(rng.choice([1, 1, 1, 3])))
            alignments.append((" " + words, (t, t + rng.choice([0.0, 0.05, 0.3])),
                               rng.choice([MAIN, MAIN, OTHER])))
        frames = rng.randint(1, 60)
        assert text_stream(alignments, tokenizer, frames).tolist() == \
            finetune_text_stream(alignments, tokenizer, frames)


def write_conversation(directory, name, duration, alignments):
    directory.mkdir(parents=True, exist_ok=True)
    sf.write(str(directory / f"{name}.wav"), 0.01 * np.ones((int(24000 * duration), 2), np.float32), 24000)
    (directory / f"{name}.json").write_text(json.dumps({"alignments": alignments}))
    return directory / f"{name}.wav"


def test_words_past_the_end_are_dropped_and_counted(tmp_path, caplog):
    wav = write_conversation(tmp_path, "a", 2.0, [[" hi", [0.1, 0.3], MAIN], [" there", [1.9, 2.02], MAIN],
                                                   [" late", [2.0, 2.4], MAIN], [" later", [2.5, 2.6], MAIN]])
    with caplog.at_level(logging.WARNING, logger="ttt.data.conversations"):
        words = read_alignments(wav, 2.0)
    assert [w for w, _, _ in words] == [" hi", " there"]  # 20 ms past the end: kept, not a rejection
    assert "2 word(s) start past the end" in caplog.text and "1 run past it" in caplog.text


def test_data_directory_is_read_like_moshi_finetune(tmp_path):
    """finetune/data/dataset.py's DataDir: every *jsonl file under the directory, recursively."""
    root = tmp_path / "data"
    write_conversation(root / "a", "c1", 1.0, [[" hi", [0.1, 0.3], MAIN]])
    write_conversation(root / "b" / "deep", "c2", 1.0, [[" yes", [0.1, 0.3], MAIN]])
    (root / "a" / "train.jsonl").write_text(json.dumps({"path": "c1.wav", "duration": 1.0}) + "\n")
    (root / "b" / "deep" / "more.jsonl").write_text(json.dumps({"path": "c2.wav", "duration": 1.0}) + "\n")
    items = read_manifest(root)
    assert [i.path.name for i in items] == ["c1.wav", "c2.wav"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no \\*.jsonl manifest"):
        read_manifest(tmp_path / "empty")


def test_transcribe_reference_speaker():
    annotate_py = [(" hi", (0.0, 0.2), MAIN)]
    assert reference_speaker(annotate_py) == MAIN
    assert reference_speaker(annotate_py + [(" yo", (0.3, 0.4), OTHER)]) == OTHER
