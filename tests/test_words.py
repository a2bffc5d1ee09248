"""Text normalisation of every WER (ttt.asr.words): digit runs split into single digits after
Whisper's normaliser, on both sides alike (issue 25 item 8), checked against jiwer by hand."""
import jiwer
import pytest

from ttt.asr.words import normalize, split_digits, word_errors


@pytest.mark.parametrize("reference,hypothesis", [
    ("five five", "5 5"),                      # the "cards" clip: tiny.en writes the digits apart
    ("two nine three four zero", "2 9 3 4 0"),
    ("2 9 3 4 0", "two nine three four zero"),
    ("twenty five", "25"),
])
def test_spelled_and_written_digits_score_zero(reference, hypothesis):
    out = word_errors([reference], [hypothesis])
    assert out["wer"] == 0.0, (normalize(reference), normalize(hypothesis))


def test_digit_words_count_one_by_one():
    """"two nine three four zero" is five reference words (not one number: 5.0 WER before)."""
    out = word_errors(["two nine three four zero"], ["2 9 3 4 1"])
    assert out["ref_words"] == 5 and out["substitutions"] == 1 and out["wer"] == pytest.approx(0.2)
    want = jiwer.process_words("2 9 3 4 0", "2 9 3 4 1")
    assert (out["substitutions"], out["deletions"], out["insertions"]) == (
        want.substitutions, want.deletions, want.insertions)


def test_split_digits_by_hand():
    assert split_digits("call 5550 now") == "call 5 5 5 0 now"
    assert split_digits("1990") == "1 9 9 0"
    assert split_digits("no digits") == "no digits"
    assert normalize("It cost $5.50 in 1990.") == "it cost $5.5 0 in 1 9 9 0"
    assert normalize("um uh hmm") == ""  # fillers go (Whisper's normaliser)
