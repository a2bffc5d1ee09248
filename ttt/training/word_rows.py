"""Training rows that never repeat: fresh word sequences in Mimi-code space, put together from the
word cells of encoded conversations.

Why: a model trained on a few hundred encoded conversations memorises them (the control suite's
first GPU run: train text loss 0.04 against held-out 1.0), and a memorised conversation predicts
its own spliced repeat from memory: two frames into a copy the model knows which conversation
and where, and continues it. Copying from the context then never pays, and no model learned it,
full attention included. Encoding steps × batch fresh conversations costs far more than the
training itself. The words are what is unpredictable in these conversations, so new content is
new word orders: each row here is a new random sequence of turns whose words are real encoded
words (a word's codes as the encoder gave them, cut at the next word's entry frame), with real
silence between them, and the text stream Moshi's interleaver builds for those words
(``data.text_stream``). No row is seen twice, so a repeat spliced into one (``recurrence``) can
only be predicted by recalling it from the row itself.

Timing follows ``data.word_tone_turns``: turns of 3-8 words, alternating speakers, a pause of
``PAUSE_FRAMES`` between turns; the speaker that is not talking gets its own silence, in short runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ttt.data.conversations import END_OF_PADDING_ID, FRAME_RATE, MAIN, OTHER, PAD_ID, word_tokens

SPEAKERS = (MAIN, OTHER)            # channel 0 (Moshi, codes rows 1-8), channel 1 (user, 9-16)
TURN_WORDS = (3, 8)                 # words per turn, inclusive (as word_tone_turns)
PAUSE_FRAMES = (3, 7)               # silence between turns, inclusive (0.2-0.6 s, rounded up)
SILENCE_RUN = 8                     # longest run of consecutive pool frames in a row's silence


@dataclass
class Lexicon:
    """Per speaker (channel 0, 1): ``codes`` [Q, N], the word cells end to end and then that
    channel's silence (its frames no word covers, in order); ``cells`` [(start, length) in
    ``codes``], ``tokens`` (the cell's word as text tokens, channel 0 only; ``None`` otherwise),
    ``words`` (the cell's word) and ``silence`` (start, length)."""

    codes: tuple[np.ndarray, np.ndarray]
    cells: tuple[np.ndarray, np.ndarray]
    words: tuple[list[str], list[str]]
    tokens: list[list[int]]
    silence: tuple[tuple[int, int], tuple[int, int]]

    @property
    def num_codebooks(self) -> int:
        return self.codes[0].shape[0]


def build_lexicon(codes: list[torch.Tensor], alignments: list[list], tokenizer) -> Lexicon:
    """Word cells and silence of encoded conversations: ``codes[i]`` [1 + 2Q, T] (text, Q codes
    per channel), ``alignments[i]`` [(word, (start, end) s, speaker)]. A cell runs from the word's
    entry frame (floor(12.5 start), where the text stream puts it) to the frame holding its end,
    cut at the next word's entry frame of the same speaker."""
    q = (codes[0].shape[0] - 1) // 2
    pieces, spans, words, silences = ([], []), ([], []), ([], []), ([], [])
    for conv, aligned in zip(codes, alignments):
        frames = conv.shape[-1]
        for channel, speaker in enumerate(SPEAKERS):
            audio = conv[1 + channel * q:1 + (channel + 1) * q].numpy()
            mine = sorted((w for w in aligned if w[2] == speaker and w[1][0] < w[1][1]),
                          key=lambda w: w[1][0])
            entries = [min(frames, max(0, int(np.floor(w[1][0] * FRAME_RATE)))) for w in mine]
            covered = np.zeros(frames, dtype=bool)
            for k, (word, (_, end), _) in enumerate(mine):
                stop = min(int(np.ceil(end * FRAME_RATE)), frames)
                if k + 1 < len(entries):
                    stop = min(stop, entries[k + 1])
                if stop > entries[k]:
                    pieces[channel].append(audio[:, entries[k]:stop])
                    spans[channel].append(stop - entries[k])
                    words[channel].append(word)
                    covered[entries[k]:stop] = True
            silences[channel].append(audio[:, ~covered])
    for channel, speaker in enumerate(SPEAKERS):
        if not spans[channel]:
            raise ValueError(f"no aligned word of {speaker} in the training conversations")
    out_codes, out_cells, silence = [], [], []
    for channel in range(2):
        lengths = np.array(spans[channel])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        quiet = np.concatenate(silences[channel], axis=1)
        out_codes.append(np.concatenate(pieces[channel] + [quiet], axis=1))
        out_cells.append(np.stack([starts, lengths], axis=1))
        silence.append((int(lengths.sum()), quiet.shape[1]))
    if min(n for _, n in silence) < 1:
        raise ValueError("a speaker of the training conversations is never silent")
    tokens = [word_tokens(tokenizer, w) for w in words[0]]
    return Lexicon(tuple(out_codes), tuple(out_cells), words, tokens, tuple(silence))


UNITS = ("word", "phrase")


def fresh_row(lexicon: Lexicon, frames: int, rng: np.random.Generator,
              unit: str = "word") -> tuple[torch.Tensor, list]:
    """One row [1 + 2Q, frames] of new turns, and its alignments (word, (start, end) s, speaker):
    the text stream is the one ``data.text_stream`` builds from them (tests check). ``unit``
    ``word``: each word of a turn drawn at random; ``phrase``: a turn is consecutive words as the
    speaker said them (a stretch of real sentences, for natural English), from a random start."""
    index = [_silence(lexicon.silence[c], frames, rng) for c in range(2)]  # frames of ``codes``
    text = np.full(frames, PAD_ID, dtype=np.int64)
    alignments, entries = [], []
    t, channel = 1, 0
    while t < frames:
        count, first = int(rng.integers(TURN_WORDS[0], TURN_WORDS[1] + 1)), None
        for i in range(count):
            if t >= frames:
                break
            if unit == "word" or first is None:
                first = int(rng.integers(len(lexicon.cells[channel])))
            k = first if unit == "word" else (first + i) % len(lexicon.cells[channel])
            start, length = lexicon.cells[channel][k]
            n = min(int(length), frames - t)
            index[channel][t:t + n] = start + np.arange(n)
            if channel == 0:
                entries.append((t, lexicon.tokens[k]))
            # start half a frame in: floor(12.5 * start) is t however the float rounds
            alignments.append((lexicon.words[channel][k],
                               ((t + 0.5) / FRAME_RATE, (t + n) / FRAME_RATE), SPEAKERS[channel]))
            t += n
        t += int(rng.integers(PAUSE_FRAMES[0], PAUSE_FRAMES[1] + 1))
        channel = 1 - channel
    for j, (entry, tokens) in enumerate(entries):  # as the interleaver: tokens until the next word
        stop = entries[j + 1][0] if j + 1 < len(entries) else frames
        for f, token in zip(range(entry, stop), tokens):
            if f > 0 and text[f - 1] == PAD_ID:
                text[f - 1] = END_OF_PADDING_ID
            text[f] = token
    audio = [lexicon.codes[c][:, index[c]] for c in range(2)]
    return torch.from_numpy(np.concatenate([text[None], *audio]).astype(np.int64)), alignments


def fresh_batch(lexicon: Lexicon, batch_size: int, frames: int, g: torch.Generator,
                unit: str = "word") -> torch.Tensor:
    """[B, 1 + 2Q, frames]: ``batch_size`` fresh rows, deterministic from ``g`` (one draw from it
    seeds the rows, so a resumed run continues the same stream)."""
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=g)))
    return torch.stack([fresh_row(lexicon, frames, rng, unit)[0] for _ in range(batch_size)])


def _silence(span: tuple[int, int], frames: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``frames`` silence frames: runs of 1 to ``SILENCE_RUN`` consecutive pool frames
    from random places. Runs keep silence's frame-to-frame statistics; one long window would let a
    model learn the pool's order by heart (in a CPU toy it did: audio loss 3.4 → 0.9)."""
    start, length = span
    runs = rng.integers(1, SILENCE_RUN + 1, size=frames)
    firsts = rng.integers(length, size=frames)
    count = int(np.searchsorted(np.cumsum(runs), frames)) + 1
    runs, firsts = runs[:count], firsts[:count]
    within = np.arange(frames) - np.repeat(np.cumsum(runs) - runs, runs)[:frames]
    return start + (np.repeat(firsts, runs)[:frames] + within) % length
