"""Fresh training rows (ttt/training/word_rows.py): new word orders built from encoded words, so no
training row repeats and a spliced repeat can only be recalled from the row itself."""
import numpy as np
import pytest
import sentencepiece
import torch

from ttt.data.conversations import END_OF_PADDING_ID, MAIN, OTHER, PAD_ID, text_stream, word_tokens
from ttt.moshi.tiny import DEMO_WORDS, train_demo_tokenizer
from ttt.training.word_rows import build_lexicon, fresh_batch, fresh_row

Q, T = 8, 120


def _source(conversation):
    """Codes whose every frame says where it came from: code = 200·conversation + frame (+ a
    codebook and channel shift), and alignments by hand: words of 3-5 frames, both speakers."""
    frame = 200 * conversation + torch.arange(T)
    rows = [torch.full((T,), PAD_ID)] + [frame + 7 * k + 3 * c for c in range(2) for k in range(Q)]
    codes = torch.stack(rows) % 2048
    rng = np.random.default_rng(conversation)
    words, t, speaker = [], 0.3, 0
    while t < T / 12.5 - 1:
        word = DEMO_WORDS[int(rng.integers(len(DEMO_WORDS)))]
        length = float(rng.uniform(0.25, 0.4))
        words.append([word, [round(t, 3), round(t + length, 3)], (MAIN, OTHER)[speaker]])
        t += length + 0.05
        if rng.random() < 0.3:
            speaker, t = 1 - speaker, t + 0.4
    return codes, words


def _where(code, channel):
    """(conversation, frame) a code of codebook 0 of ``channel`` came from."""
    value = int(code) - 3 * channel
    return value // 200, value % 200


@pytest.fixture(scope="module")
def setup():
    sources = [_source(i) for i in range(4)]
    tok = sentencepiece.SentencePieceProcessor(model_proto=train_demo_tokenizer())
    return sources, build_lexicon([c for c, _ in sources], [w for _, w in sources], tok), tok


def test_rows_are_source_words_where_their_alignments_say(setup):
    sources, lexicon, tok = setup
    row, words = fresh_row(lexicon, 150, np.random.default_rng(0))
    assert row.shape == (1 + 2 * Q, 150) and len(words) > 10
    assert {w[2] for w in words} == {MAIN, OTHER}
    for word, (start, end), speaker in words:
        channel = (MAIN, OTHER).index(speaker)
        a, b = int(np.floor(start * 12.5)), int(round(end * 12.5))
        conv, first = _where(row[1 + channel * Q, a], channel)
        # the word's frames are consecutive frames of one source conversation, all 8 codebooks
        expect = sources[conv][0][1 + channel * Q:1 + (channel + 1) * Q, first:first + b - a]
        assert torch.equal(row[1 + channel * Q:1 + (channel + 1) * Q, a:b], expect)
        # ... where that conversation has this very word of this speaker entering
        entering = [w for w in sources[conv][1]
                    if w[2] == speaker and int(np.floor(w[1][0] * 12.5)) == first]
        assert [w[0] for w in entering] == [word]
        if speaker == MAIN:  # the text stream puts the word's first token at its entry frame
            assert int(row[0, a]) == word_tokens(tok, word)[0]
    # the whole text stream is the one the interleaver builds from these alignments
    assert torch.equal(row[0], text_stream(words, tok, 150))
    # frames where a speaker says nothing hold frames its source had no word on
    main_frames = {f for w in words if w[2] == MAIN
                   for f in range(int(np.floor(w[1][0] * 12.5)), int(round(w[1][1] * 12.5)))}
    text_tokens = {t for t in row[0].tolist() if t not in (PAD_ID, END_OF_PADDING_ID)}
    assert text_tokens <= {t for w in words if w[2] == MAIN for t in word_tokens(tok, w[0])}
    for f in set(range(150)) - main_frames:
        conv, frame = _where(row[1, f], 0)
        assert not any(w[2] == MAIN and np.floor(w[1][0] * 12.5) <= frame < np.ceil(w[1][1] * 12.5)
                       for w in sources[conv][1])
        assert int(row[0, f]) in (PAD_ID, END_OF_PADDING_ID)
    # ... in short runs, not one long window of the pool (whose order a model could learn)
    quiet = sorted(set(range(150)) - main_frames)
    where = [_where(row[1, f], 0) for f in quiet]
    run, longest = 1, 1
    for i in range(1, len(quiet)):
        follows = quiet[i] == quiet[i - 1] + 1 and where[i] == (where[i - 1][0], where[i - 1][1] + 1)
        run = run + 1 if follows else 1
        longest = max(longest, run)
    assert 2 <= longest <= 8


def test_no_training_row_repeats_and_rows_are_deterministic_per_seed(setup):
    _, lexicon, tok = setup
    batches = [fresh_batch(lexicon, 4, 100, g)
               for g in [torch.Generator().manual_seed(0)] for _ in range(25)]
    rows = torch.cat(batches)
    assert len({tuple(r.flatten().tolist()) for r in rows}) == len(rows) == 100
    # no two rows share their word sequence either
    assert len({tuple(r[0][r[0] > END_OF_PADDING_ID].tolist()) for r in rows}) == 100
    again = fresh_batch(lexicon, 4, 100, torch.Generator().manual_seed(0))
    other = fresh_batch(lexicon, 4, 100, torch.Generator().manual_seed(1))
    assert torch.equal(again, batches[0]) and not torch.equal(other, batches[0])


def test_a_speaker_without_words_is_an_error():
    codes, words = _source(0)
    with pytest.raises(ValueError, match="SPEAKER_OTHER"):
        build_lexicon([codes], [[w for w in words if w[2] == MAIN]], None)


def test_training_config_takes_fresh_rows_or_mixed_blocks_not_both():
    from ttt.training.train import TrainConfig
    assert TrainConfig.from_dict({"train": "t.jsonl", "fresh_rows": 450}).fresh_rows == 450
    with pytest.raises(ValueError, match="fresh_rows"):
        TrainConfig.from_dict({"train": "t.jsonl", "fresh_rows": 450, "mix_blocks": 10})
    with pytest.raises(ValueError, match="fresh_rows"):
        TrainConfig.from_dict({"train": "t.jsonl", "fresh_rows": 1})


def test_phrase_rows_say_the_speakers_words_in_their_order(setup):
    """unit 'phrase': each turn is consecutive words of one speaker's lexicon, as spoken; 'word'
    draws every word anew (its turns are not runs of the lexicon)."""
    _, lexicon, _ = setup

    def turns(unit):
        row, words = fresh_row(lexicon, 400, np.random.default_rng(3), unit)
        out, current = [], []
        for word, _, speaker in words:
            if current and current[-1][1] != speaker:
                out.append(current)
                current = []
            current.append((word, speaker))
        return out + [current]

    def is_run(turn):
        channel = (MAIN, OTHER).index(turn[0][1])
        said = lexicon.words[channel]
        spoken = [w for w, _ in turn]
        return any([said[(k + i) % len(said)] for i in range(len(spoken))] == spoken
                   for k in range(len(said)))

    phrases, words = turns("phrase"), turns("word")
    assert len(phrases) > 5 and all(is_run(t) for t in phrases)
    assert not all(is_run(t) for t in words if len(t) >= 3)
