"""Synthesised two-speaker conversations (ttt/data/speech.py): real Festival speech checked on the audio
itself: layout readable by ttt/data/conversations.py, words lying on voiced speech, two different voices, verbatim
recurrence beyond ``recur_after_s`` only when asked for, determinism by seed.

Festival, its two voices and the text (Debian packages) are installed by the fixture when missing
and running as root; the tests skip with the reason otherwise (nothing is downloaded at run time).
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import apt_install_or_skip
import soundfile as sf

from ttt.data import speech
from ttt.cli.main import main
from ttt.data.conversations import FRAME_RATE, MAIN, OTHER, SAMPLE_RATE, load_audio, read_manifest

RECUR_AFTER = 6.0
DURATION = 45.0


def _installed() -> bool:
    return (shutil.which("festival") is not None and speech.TEXT_SOURCE.is_file()
            and all(folder.is_dir() for _, _, folder in speech.VOICES.values()))


@pytest.fixture(scope="module")
def festival():
    apt_install_or_skip(speech.DEBIAN_PACKAGES, _installed, "festival/voices/dict-devil")


@pytest.fixture(scope="module")
def sets(festival, tmp_path_factory):
    """The same seed with and without recurrence, sharing one sentence cache."""
    root = tmp_path_factory.mktemp("speech")
    kw = dict(count=2, duration_s=DURATION, seed=3, recur_after_s=RECUR_AFTER, cache_dir=root / "cache")
    return {rec: speech.write_conversations(root / ("rec" if rec else "fresh"), recurrence=rec, **kw)
            for rec in (True, False)}


def turns(item):
    """Maximal runs of one speaker's words: (speaker, words, start, end), read from the alignments."""
    out = []
    for word, (start, end), spk in sorted(item.alignments, key=lambda a: a[1][0]):
        if out and out[-1][0] == spk:
            out[-1][1].append(word)
            out[-1][3] = end
        else:
            out.append([spk, [word], start, end])
    return out


def rms(x):
    return float(np.sqrt(np.mean(np.square(x)))) if len(x) else 0.0


def test_output_loads_through_project_readers(sets):
    for manifest in sets.values():
        items = read_manifest(manifest)
        assert len(items) == 2
        for item in items:
            info = sf.info(str(item.path))
            assert (info.samplerate, info.channels) == (SAMPLE_RATE, 2)
            assert abs(info.duration - item.duration) < 1e-3 and item.duration == DURATION
            starts = [start for _, (start, _), _ in item.alignments]
            assert starts == sorted(starts)  # moshi-finetune bisects them by start time
            speakers = {spk for _, _, spk in item.alignments}
            assert speakers == {MAIN, OTHER}
            assert load_audio(item.path).shape == (2, int(DURATION * SAMPLE_RATE))
            # the conversation fills its length: the last word ends in the final 25 %
            assert max(end for _, (_, end), _ in item.alignments) > 0.75 * DURATION


def test_every_word_lies_on_voiced_speech_of_its_channel(sets):
    for item in read_manifest(sets[True]) + read_manifest(sets[False]):
        audio = load_audio(item.path)
        covered = np.zeros(audio.shape, dtype=bool)
        for word, (start, end), spk in item.alignments:
            ch = 0 if spk == MAIN else 1
            a, b = int(start * SAMPLE_RATE), int(end * SAMPLE_RATE)
            assert b - a >= 0.02 * SAMPLE_RATE, f"{word!r} shorter than 20 ms"
            assert rms(audio[ch, a:b]) > 0.01, f"{word!r} at [{start}, {end}] is silent"
            assert rms(audio[1 - ch, a:b]) < 1e-3, f"the other channel speaks during {word!r}"
            covered[ch, max(0, a - 2400):b + 2400] = True  # 100 ms either side
        # conversely, loud audio lies within 100 ms of an aligned word of that channel
        for ch in (0, 1):
            frames = audio[ch, : audio.shape[1] // 240 * 240].reshape(-1, 240)
            loud = np.sqrt(np.mean(frames ** 2, axis=1)) > 0.02
            near = covered[ch, : audio.shape[1] // 240 * 240].reshape(-1, 240).all(axis=1)
            assert (loud & ~near).sum() <= 0.01 * loud.sum(), f"speech without words on channel {ch}"


def median_f0(x: np.ndarray) -> float:
    """Median pitch (Hz) over loud 40 ms frames, by autocorrelation in 60–400 Hz."""
    n, lo, hi, f0 = 960, SAMPLE_RATE // 400, SAMPLE_RATE // 60, []
    for i in range(0, len(x) - n, n):
        frame = x[i:i + n] - x[i:i + n].mean()
        if rms(frame) < 0.05:
            continue
        ac = np.correlate(frame, frame, "full")[n - 1:]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5 * ac[0]:
            f0.append(SAMPLE_RATE / lag)
    return float(np.median(f0))


def test_channels_carry_two_different_voices(sets):
    item = read_manifest(sets[False])[0]
    audio = load_audio(item.path)
    moshi, user = median_f0(audio[0]), median_f0(audio[1])
    assert 140 < moshi < 260, moshi   # slt: US female
    assert 70 < user < 140, user      # kal: US male
    assert moshi > 1.3 * user


def same_audio(x: np.ndarray, y: np.ndarray, slack: int = 4) -> bool:
    """Bitwise-equal samples up to a shift of a few samples (times are rounded to 0.1 ms)."""
    n = min(len(x), len(y)) - 2 * slack
    return any(np.array_equal(x[slack:slack + n], y[slack + s:slack + s + n])
               for s in range(-slack, slack + 1))


def segment(audio, ch, start, end):
    return audio[ch, int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)]


def test_recurrence_repeats_identical_audio_beyond_recur_after(sets):
    repeats = 0
    for item in read_manifest(sets[True]):
        audio = load_audio(item.path)
        ts = turns(item)
        for j, (spk, words, start, end) in enumerate(ts):
            ch = 0 if spk == MAIN else 1
            for spk0, words0, start0, end0 in ts[:j]:
                if spk0 == spk and words0 == words:
                    repeats += 1
                    assert start - end0 > RECUR_AFTER, (words, start0, start)
                    frames = (start - start0) * FRAME_RATE  # same phase on Mimi's frame grid
                    assert abs(frames - round(frames)) < 0.003, (start0, start)
                    assert same_audio(segment(audio, ch, start0, end0), segment(audio, ch, start, end))
    assert repeats >= 2, "no turn recurred"


def test_without_recurrence_nothing_repeats(sets):
    for item in read_manifest(sets[False]):
        audio = load_audio(item.path)
        ts = turns(item)
        grams = [tuple(w[i:i + 6]) for _, w, _, _ in ts for i in range(max(1, len(w) - 5))]
        assert len(grams) == len(set(grams)), "a 6-word sequence occurs twice"
        heads = [(0 if spk == MAIN else 1, segment(audio, 0 if spk == MAIN else 1, s, s + 0.5))
                 for spk, _, s, _ in ts]
        for i in range(len(heads)):
            for j in range(i):
                assert not (heads[i][0] == heads[j][0] and same_audio(heads[i][1], heads[j][1]))


def test_deterministic_by_seed(festival, tmp_path):
    kw = dict(count=1, duration_s=10.0, recurrence=True, recur_after_s=3.0)
    a = speech.write_conversations(tmp_path / "a", seed=11, **kw)
    b = speech.write_conversations(tmp_path / "b", seed=11, **kw)  # its own, fresh cache
    c = speech.write_conversations(tmp_path / "c", seed=12, cache_dir=tmp_path / "a" / "sentences", **kw)
    files = lambda m: {p.name: p.read_bytes() for p in sorted(m.parent.glob("conversation*"))}
    assert files(a) == files(b)
    assert a.read_text() == b.read_text()
    fa, fc = read_manifest(a)[0], read_manifest(c)[0]
    assert [w for w, _, _ in fa.alignments] != [w for w, _, _ in fc.alignments]


def test_bad_settings_and_missing_text_are_one_line_errors(festival, tmp_path, capsys):
    assert main(["speech", "--out", str(tmp_path / "x"), "--count", "0", "--duration", "5"]) == 2
    assert capsys.readouterr().out.count("\n") == 1
    with pytest.raises(speech.SpeechError, match="too short for a single turn"):
        speech.write_conversations(tmp_path / "z", count=1, duration_s=0.5, recurrence=False, seed=0)
    with pytest.raises(speech.SpeechError, match="nowhere.dz: text source missing"):
        speech.write_conversations(tmp_path / "y", count=1, duration_s=5, recurrence=False, seed=0,
                                   text_source=tmp_path / "nowhere.dz")


def spoken(text: str) -> str:
    """Text as Festival's words read it: lower case, letters and apostrophes only."""
    return " ".join("".join(c if c.isalpha() or c == "'" else " " for c in text.lower()).split())


def test_heldout_conversations_share_no_text_with_train(festival, tmp_path):
    pool = speech.passages()
    train, heldout = speech.text_entries(pool, "train"), speech.text_entries(pool, "heldout")
    assert not set(train) & set(heldout) and sorted(train + heldout) == list(range(len(pool)))
    text = {part: " | ".join(spoken(s) for i in idx for s in pool[i])
            for part, idx in (("train", train), ("heldout", heldout))}
    m = speech.write_conversations(tmp_path, count=1, duration_s=15.0, recurrence=False, seed=0,
                                   text_part="heldout")
    ts = turns(read_manifest(m)[0])
    assert len(ts) >= 2
    for _, words, _, _ in ts:
        opening = spoken(" ".join(words[:4]))
        assert opening in text["heldout"] and opening not in text["train"], opening


def test_snakemake_rule_builds_a_set_once(festival, tmp_path):
    """`snakemake speech_all` builds each configured set through `python -m ttt speech`, with the
    sentence cache under cache_dir; a second run has nothing to do."""
    import yaml
    repo, bin_ = Path(__file__).resolve().parent.parent, Path(sys.executable).parent
    shutil.copytree(repo / "config", tmp_path / "config")
    cfg = yaml.safe_load((tmp_path / "config" / "config.yaml").read_text())
    manifest = "results/data/speech/tiny/manifest.jsonl"
    cfg.update(cache_dir=str(tmp_path / "cache"), families=["regression"],
               launcher=str(repo / "profiles" / "local" / "submitit.yaml"),
               regression={**cfg["regression"], "manifest": manifest},
               speech={"tiny": {"count": 1, "duration_s": 8, "recurrence": True, "recur_after_s": 2}})
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "NO_TORCH_COMPILE": "1"}
    cmd = [str(bin_ / "snakemake"), "--snakefile", str(repo / "workflow" / "Snakefile"), "--directory",
           str(tmp_path), "-c1"]
    # a family that reads the set makes the default target build it first
    plan = subprocess.run(cmd + ["-n", "--quiet", "rules"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert plan.returncode == 0 and "speech " in plan.stdout, plan.stdout[-2000:] + plan.stderr[-2000:]
    cmd.append("speech_all")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    items = read_manifest(tmp_path / manifest)
    assert len(items) == 1 and items[0].alignments
    assert list((tmp_path / "cache" / "speech").glob("*/*.wav"))
    again = subprocess.run(cmd + ["-n"], capture_output=True, text=True, env=env, timeout=600)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_a_recogniser_understands_both_channels(sets):
    """Intelligible speech, not just energy: the project's offline Whisper (tiny.en, bundled) hears
    each channel's words (measured: WER 0.13 for slt, 0.22 for kal over 2 min of conversation)."""
    import soxr
    from ttt.asr.recogniser import AsrConfig, load_model, recognise
    from ttt.eval.metrics import word_errors
    model = load_model(AsrConfig(), threads=2)
    item = read_manifest(sets[False])[0]
    audio = load_audio(item.path)
    for ch, spk in ((0, MAIN), (1, OTHER)):
        words = [(w, e) for w, (_, e), s in item.alignments if s == spk and e < 12.0]
        end = words[-1][1] + 0.2
        clip = soxr.resample(audio[ch, :int(end * SAMPLE_RATE)], SAMPLE_RATE, 16000)
        _, heard = recognise(model, clip.astype(np.float32), "en")
        wer = word_errors([" ".join(w for w, _ in words)], [heard])["wer"]
        assert wer < 0.5, (spk, wer, heard)


def test_preflight_accepts_only_configured_speech_sets():
    """A family may name a speech set before it is built, but only one configured under speech:."""
    from ttt.launch.preflight import PreflightError, check_matrix, speech_set_of
    assert speech_set_of("results/data/speech/a/manifest.jsonl") == "a"
    assert speech_set_of("elsewhere/results/data/speech/a/manifest.jsonl") is None
    cell = {"family": "regression", "data": {"manifest": "results/data/speech/a/manifest.jsonl"}}
    config = {"families": ["regression"], "regression": {"manifest": cell["data"]["manifest"]}}
    with pytest.raises(PreflightError, match="regression.manifest: .*no speech set 'a'"):
        check_matrix(config, {"c": cell})
    with pytest.raises(PreflightError) as caught:  # configured: no complaint about the manifest
        check_matrix({**config, "speech": {"a": {"count": 1, "duration_s": 5}}}, {"c": cell})
    assert "manifest" not in str(caught.value)
