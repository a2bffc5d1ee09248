"""The ASR stage: consistency metric on constructed cases, the recogniser on real recorded speech
at Moshi's 24 kHz (LibriVox and "cards" clips from Debian's pocketsphinx-testdata, pyannote.audio's
two-speaker sample) through the project vs faster-whisper run on the file, the cache, bad input,
and the verdict."""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ttt.asr.recogniser import DECODE, SEED, AsrConfig, model_source
from ttt.asr.scoring import asr_indicators, consistency, run_stage, silence_fraction

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
PYANNOTE = "pyannote.audio==4.0.7"  # ships pyannote/audio/sample/sample.wav + sample.stm


# ---- the metric on constructed cases (expected values computed by hand) -----------------------

def test_consistency_same_words_is_zero_after_normalisation():
    assert consistency("Hello, world! How are you?", "hello world how are you")["wer"] == 0.0


def test_consistency_shifted_transcript():
    # text: the cat sat on the mat (6); heard one word later: "the" missing, "today" added.
    out = consistency("the cat sat on the mat", "cat sat on the mat today")
    assert (out["deletions"], out["insertions"], out["substitutions"]) == (1, 1, 0)
    assert out["wer"] == pytest.approx(2 / 6)


def test_consistency_garbled_transcript():
    # hello→yellow, world→word (2 substitutions), "you" not heard (1 deletion): 3 / 5.
    out = consistency("hello world how are you", "yellow word how are")
    assert (out["substitutions"], out["deletions"], out["insertions"]) == (2, 1, 0)
    assert out["wer"] == pytest.approx(0.6)


def test_asr_indicators_by_hand():
    # normalised: hello hello world hello world over 30 s
    out = asr_indicators(["Hello,", "hello", "world", "Hello", "world."], 30.0)
    assert out["asr_words"] == 5 and out["asr_words_per_min"] == pytest.approx(10.0)
    assert out["asr_distinct_1"] == pytest.approx(2 / 5)
    assert out["asr_distinct_2"] == pytest.approx(3 / 4)   # (h,h) (h,w) (w,h) (h,w)
    assert out["asr_longest_repeated_ngram"] == 2          # "hello world" twice


def test_silence_fraction_by_hand():
    spans = [(1.0, 2.0), (3.0, 5.0)]
    assert silence_fraction(spans, 0.0, 4.0) == pytest.approx(0.5)
    assert silence_fraction(spans, 4.0, 8.0) == pytest.approx(0.75)
    assert silence_fraction(spans, 2.0, 2.0) is None


def fake_cell(root: Path, windows: list[str], window_s: float, offset_s: float, wav: np.ndarray,
              rate: int = 16000, untrained: bool = False) -> Path:
    """A generate cell's directory as ttt.eval.cell writes it: metrics.json, transcript.jsonl, out.wav."""
    root.mkdir(parents=True)
    sf.write(str(root / "out.wav"), wav, rate)
    (root / "metrics.json").write_text(json.dumps({
        "mode": "generate", "config": {"window_s": window_s},
        "audio": {"file": "out.wav", "offset_s": offset_s, "codec_untrained": untrained}}))
    (root / "transcript.jsonl").write_text("".join(
        json.dumps({"item": 0, "start_s": i * window_s, "hypothesis": h}) + "\n"
        for i, h in enumerate(windows)))
    return root


def test_windows_follow_the_audio_offset(tmp_path, monkeypatch):
    """Recognised words are placed on Moshi's text axis (audio time + offset_s) before windowing;
    without the offset "world" (heard at 3.9 s) would fall in the first window."""
    import ttt.asr.scoring as asr

    cell = fake_cell(tmp_path / "cell", ["hello", "world"], 4.0, 0.16, np.zeros(8 * 16000, "float32"))
    heard = {"words": [{"start": 0.1, "end": 0.5, "word": "Hello"},
                       {"start": 3.9, "end": 4.3, "word": "world"}],
             "text": "Hello world", "audio_s": 8.0}
    rows, summary = asr.score_cell(cell, heard, [(0.0, 2.0)])
    assert [r["asr_hypothesis"] for r in rows] == ["Hello", "world"]
    assert [r["consistency_wer"] for r in rows] == [0.0, 0.0]
    assert summary["consistency"]["wer"] == 0.0
    # window 0 covers audio [0, 3.84): speech 2 s → silence 1 − 2/3.84
    assert rows[0]["silence_fraction"] == pytest.approx(1 - 2 / 3.84)


# ---- real recorded speech -----------------------------------------------------------------------

def pocketsphinx_data() -> Path:
    """Debian's pocketsphinx-testdata, installed when missing (root only, as CI runs)."""
    if not (LIBRIVOX / "transcription").is_file():
        if os.geteuid() != 0:
            pytest.skip("Debian pocketsphinx-testdata missing and not root to apt-get install it")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        done = subprocess.run("apt-get update -qq && apt-get install -y -qq pocketsphinx-testdata",
                              shell=True, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0 or not (LIBRIVOX / "transcription").is_file():
            pytest.skip(f"cannot install pocketsphinx-testdata: {(done.stderr or done.stdout)[-300:]}")
    return LIBRIVOX.parent


def sphinx_corpus(folder: Path, transcription: str) -> tuple[np.ndarray, str]:
    """A pocketsphinx-testdata folder's clips joined with 0.5 s gaps (16 kHz), and their text."""
    refs = {}
    for line in (folder / transcription).read_text().splitlines():
        text, name = line.rsplit(" (", 1)
        refs[name.rstrip(")")] = text.replace("<s>", "").replace("</s>", "").strip()
    gap = np.zeros(8000, "float32")
    audio = np.concatenate([np.concatenate([sf.read(str(folder / f"{n}.wav"), dtype="float32")[0], gap])
                            for n in refs])
    return audio, " ".join(refs.values())


@pytest.fixture(scope="module")
def librivox():
    """LibriVox (Sense and Sensibility, public domain) clips of pocketsphinx-testdata: 24 s."""
    return sphinx_corpus(pocketsphinx_data() / "librivox", "transcription")


@pytest.fixture(scope="module")
def cards():
    """pocketsphinx-testdata's "cards" clips (playing cards read out, "five five" among them)."""
    return sphinx_corpus(pocketsphinx_data() / "cards", "cards.transcription")


@pytest.fixture(scope="module")
def pyannote_sample(tmp_path_factory):
    """pyannote.audio's 30 s two-speaker sample and its STM, out of the wheel from PyPI."""
    where = tmp_path_factory.mktemp("pyannote")
    done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", PYANNOTE,
                           "-d", str(where)], capture_output=True, text=True, timeout=300)
    wheels = list(where.glob("pyannote_audio-*.whl"))
    if done.returncode != 0 or not wheels:
        pytest.skip(f"cannot download {PYANNOTE} from PyPI: {done.stderr[-300:]}")
    with zipfile.ZipFile(wheels[0]) as z:
        z.extract("pyannote/audio/sample/sample.wav", where)
        stm = z.read("pyannote/audio/sample/sample.stm").decode()
    segments = sorted((float(f[3]), " ".join(f[5:])) for f in (line.split() for line in stm.splitlines()) if f)
    audio, rate = sf.read(str(where / "pyannote/audio/sample/sample.wav"), dtype="float32")
    assert rate == 16000
    return audio, " ".join(text for _, text in segments)


def direct_transcript(wav: Path) -> str:
    """The same recogniser with the same settings, called directly on the file (faster-whisper
    decodes and resamples it itself)."""
    from faster_whisper import WhisperModel

    import ctranslate2

    model = WhisperModel(model_source(AsrConfig())[0], device="cpu", compute_type="auto")
    ctranslate2.set_random_seed(SEED)
    segments, _ = model.transcribe(str(wav), language="en", **DECODE)
    return " ".join(s.text.strip() for s in segments)


def independent_wer(reference: str, text: str) -> float:
    """jiwer after Whisper's normaliser, digit runs split on both sides (written out here, not
    the project's normalize)."""
    import re

    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    split = lambda t: " ".join(re.sub(r"(\d)", r" \1 ", norm(t)).split())  # noqa: E731
    return jiwer.wer(split(reference), split(text))


@pytest.mark.parametrize("corpus", ["librivox", "cards", "pyannote_sample"])
def test_project_wer_equals_direct_recogniser_at_24k(corpus, request, tmp_path, report):
    """A 'cell' whose text stream is the reference transcript and whose out.wav is real recorded
    speech at Moshi's 24 kHz (PCM_16, as a cell writes it): its consistency WER is the
    recogniser's WER on that speech. Through the project (python -m ttt asr) the transcript must
    be the one faster-whisper gives for the file, and the WER within 0.5 points of it."""
    import soxr

    audio16, reference = request.getfixturevalue(corpus)
    audio = soxr.resample(audio16, 16000, 24000).astype(np.float32)
    cell = fake_cell(tmp_path / "cell", [reference], 600.0, 0.0, audio, rate=24000)
    assert sf.info(str(cell / "out.wav")).samplerate == 24000
    out = tmp_path / "asr"
    done = subprocess.run([sys.executable, "-m", "ttt", "asr", "--cell", str(cell), "--out", str(out),
                           "--cache", str(tmp_path / "cache")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "asr.json").read_text())
    project = summary["consistency"]["wer"]
    text = direct_transcript(cell / "out.wav")
    direct = independent_wer(reference, text)
    report(f"{corpus} 24 kHz WER project", project)
    report(f"{corpus} 24 kHz WER faster-whisper on the file", direct)
    report(f"{corpus} x real time (CPU)", summary["speed"]["x_realtime"])
    assert summary["asr_hypothesis"] == text
    assert abs(project - direct) <= 0.005, (project, direct, text, summary["asr_hypothesis"])
    assert project < 0.35  # real speech is recognised (tiny.en: about 0.05-0.2 here)
    words = [json.loads(line) for line in (out / "words.jsonl").read_text().splitlines()]
    assert words and all(0 <= w["start"] <= w["end"] <= len(audio) / 24000 + 0.5 for w in words)
    assert summary["indicators"]["silence_fraction"] < 0.6


# ---- the stage: cache, bad input -----------------------------------------------------------------

def test_cache_hit_by_content_and_bad_config(tmp_path, librivox):
    audio, reference = librivox
    short = audio[: 3 * 16000]
    cell = fake_cell(tmp_path / "cell", ["and mister john dashwood"], 600.0, 0.0, short)
    cache = tmp_path / "cache"
    first = run_stage(cell, tmp_path / "a", AsrConfig(), cache, log=lambda m: None)
    again = run_stage(cell, tmp_path / "b", AsrConfig(), cache, log=lambda m: None)
    assert not first["speed"]["cached"] and again["speed"]["cached"]
    assert again["asr_hypothesis"] == first["asr_hypothesis"] and len(list(cache.glob("*.json"))) == 1
    sf.write(str(cell / "out.wav"), short * 0.5, 16000)  # other audio: other key
    run_stage(cell, tmp_path / "c", AsrConfig(), cache, log=lambda m: None)
    assert len(list(cache.glob("*.json"))) == 2
    bad = tmp_path / "asr.yaml"
    bad.write_text("model: bundled\nbeam: 3\n")
    done = subprocess.run([sys.executable, "-m", "ttt", "asr", "--cell", str(cell), "--out",
                           str(tmp_path / "d"), "--config", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert str(bad) in done.stderr and "beam" in done.stderr
    assert not (tmp_path / "d").exists()


def test_cell_without_audio_says_why(tmp_path):
    (tmp_path / "cell").mkdir()
    summary = run_stage(tmp_path / "cell", tmp_path / "asr", AsrConfig(), None)
    assert summary["status"] == "no_audio" and "did not complete" in summary["reason"]
    assert json.loads((tmp_path / "asr" / "asr.json").read_text())["status"] == "no_audio"


# ---- tables and verdicts --------------------------------------------------------------------------

def write_asr(results: Path, cell: str, window_wers: list[float], untrained: bool, said: str) -> None:
    """The ASR stage's files for a constructed cell (asr.json + asr.jsonl)."""
    d = results / "cells" / cell / "asr"
    d.mkdir(parents=True)
    rows = [{"item": 0, "start_s": 4.0 * i, "hypothesis": said, "asr_hypothesis": said,
             "consistency_wer": w} for i, w in enumerate(window_wers)]
    (d / "asr.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "asr.json").write_text(json.dumps({
        "status": "ok", "codec_untrained": untrained,
        "consistency": {"wer": float(np.mean(window_wers)), "ref_words": 2 * len(window_wers)},
        "indicators": {"asr_words": 10, "asr_words_per_min": 120.0, "asr_distinct_1": 0.5,
                       "asr_distinct_2": 0.75, "asr_longest_repeated_ngram": 2,
                       "silence_fraction": 0.25},
        "speed": {"x_realtime": 3.0}}))


def asr_results(tmp_path, on_wers, off_wers, untrained, same_words=False):
    from results_factory import aggregate_tables, cell_spec, write_results

    on, off = "short_form/duration~8/ttt~on", "short_form/duration~8/ttt~off"
    write_results(tmp_path, [cell_spec(on, True), cell_spec(off, False)])
    write_asr(tmp_path, on, on_wers, untrained, "hello there")
    write_asr(tmp_path, off, off_wers, untrained, "hello there" if same_words else "good morning")
    aggregate_tables(tmp_path)
    from ttt.report import verdicts
    summary, checks = verdicts.evaluate(tmp_path)
    return {r["signal"]: r for r in summary}, tmp_path


def test_columns_with_twins(tmp_path):
    import csv
    _, root = asr_results(tmp_path, [0.2, 0.4], [0.1, 0.1], untrained=False)
    rows = {r["cell"]: r for r in csv.DictReader(open(root / "tables" / "cells.csv"))}
    on = rows["short_form/duration~8/ttt~on"]
    assert float(on["consistency_wer"]) == pytest.approx(0.3)
    assert float(on["consistency_wer_off"]) == pytest.approx(0.1)
    assert float(on["consistency_wer_delta"]) == pytest.approx(0.2)
    for col in ("asr_words_per_min", "asr_distinct_1", "asr_distinct_2",
                "asr_longest_repeated_ngram", "silence_fraction"):
        assert col in on and f"{col}_off" in on and f"{col}_delta" in on


def test_verdict_is_na_on_an_untrained_codec(tmp_path):
    """Noise is never judged: even a cell whose audio matches nothing, far worse than its twin."""
    summary, _ = asr_results(tmp_path, [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], untrained=True)
    for signal in ("quality.consistency_wer", "quality.consistency_wer_vs_off"):
        assert summary[signal]["verdict"] == "n/a"
        assert "n/a: the codec is untrained" in summary[signal]["explanation"]


def test_verdict_says_no_effect_when_ttt_changed_nothing(tmp_path):
    """Same words said and heard in every window: never a pass."""
    summary, _ = asr_results(tmp_path, [0.1, 0.2], [0.1, 0.2], untrained=False, same_words=True)
    assert summary["quality.consistency_wer_vs_off"]["verdict"] == "no effect"
    assert summary["quality.consistency_wer"]["verdict"] == "pass"


@pytest.mark.parametrize("on,off,threshold,vs_off", [
    ([0.1, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1], "pass", "pass"),  # other words, as consistent
    ([0.1, 0.15, 0.1, 0.15], [0.2, 0.25, 0.2, 0.25], "pass", "pass"),  # TTT on more consistent
    ([0.1, 0.3, 0.1, 0.3], [0.2, 0.2, 0.2, 0.2], "pass", "pass"),  # CI [−0.1, 0.1]: not worse
    ([0.5, 0.6, 0.5, 0.6], [0.1, 0.15, 0.1, 0.15], "fail", "fail"),  # gibberish with TTT on
    ([0.2, 0.25, 0.2, 0.25], [0.05, 0.1, 0.05, 0.1], "pass", "fail"),  # under threshold, worse than off
    # max_worse 0.07: identical 30-s windows of one real conversation differ by up to 0.069
    ([0.15, 0.2, 0.15, 0.2], [0.1, 0.15, 0.1, 0.15], "pass", "pass"),  # +0.05: recogniser noise
    ([0.18, 0.23, 0.18, 0.23], [0.1, 0.15, 0.1, 0.15], "pass", "fail"),  # +0.08: beyond it
])
def test_verdict_threshold_and_twin(tmp_path, on, off, threshold, vs_off):
    summary, _ = asr_results(tmp_path, on, off, untrained=False)
    assert summary["quality.consistency_wer"]["verdict"] == threshold
    assert summary["quality.consistency_wer_vs_off"]["verdict"] == vs_off


# ---- the listening panel shows what was heard, on the results side only ----------------------------

def test_panel_shows_heard_text_on_the_results_side(tmp_path):
    import csv
    import hashlib
    import zipfile

    from test_panel import ratings_doc
    from ttt.panel.page import System, build_panel
    from ttt.panel.ratings import collect_ratings

    rate, systems = 24000, []
    for label, words in (("on", [(0.5, "Zebraword"), (4.2, "quokka")]), ("off", [(1.0, "narwhal")])):
        cell = tmp_path / label / "cell"
        cell.mkdir(parents=True)
        tone = (0.1 * np.sin(np.arange(8 * rate) * (0.05 if label == "on" else 0.07))).astype("float32")
        sf.write(str(cell / "out.wav"), tone, rate)
        asr = tmp_path / label / "asr"
        asr.mkdir()
        sha = hashlib.sha256((cell / "out.wav").read_bytes()).hexdigest()
        (asr / "asr.json").write_text(json.dumps({"status": "ok", "audio": {"sha256": sha}}))
        (asr / "words.jsonl").write_text("".join(
            json.dumps({"start": t, "end": t + 0.3, "word": w}) + "\n" for t, w in words))
        systems.append(System(label, cell / "out.wav"))
    (tmp_path / "off" / "asr" / "asr.json").write_text(  # stale: transcribed other audio
        json.dumps({"status": "ok", "audio": {"sha256": "0" * 64}}))
    out = tmp_path / "panel"
    key = build_panel("demo", systems, [0.0, 4.0], 3.0, 1, out, raters=["r1"])
    heard = {(key["clips"][c]["system"], key["clips"][c]["offset_s"]): t for c, t in key["heard"].items()}
    assert heard == {("on", 0.0): "Zebraword", ("on", 4.0): "quokka", ("off", 0.0): None, ("off", 4.0): None}
    notes = (out / "QA-notes.md").read_text()
    assert "Zebraword" in notes and "quokka" in notes and "narwhal" not in notes
    assert "Zebraword" not in (out / "index.html").read_text()
    with zipfile.ZipFile(out / "demo-raters.zip") as z:
        assert all(b"Zebraword" not in z.read(n) for n in z.namelist())
    ratings = out / "ratings" / "r1.json"
    ratings.parent.mkdir()
    ratings.write_text(json.dumps(ratings_doc(key, "r1", mos={("on", 0.0): 4})))
    collect_ratings([ratings], tmp_path / "mos.csv", keys=[out / "key.json"])
    rows = {(r["system"], float(r["offset_s"])): r for r in csv.DictReader(open(tmp_path / "mos.csv"))}
    assert rows[("on", 0.0)]["heard"] == "Zebraword" and rows[("off", 4.0)]["heard"] == ""


def test_stage_as_its_own_submitit_job(tmp_path, librivox):
    """The launcher route (a SLURM job on a cluster; submitit's local executor here) writes what
    the in-process stage writes; the job finds the recogniser output in the shared cache."""
    from ttt.launch.asr_job import submit_stage
    from ttt.launch.launcher import read_launcher

    audio, _ = librivox
    cell = fake_cell(tmp_path / "cell", ["and mister john dashwood"], 600.0, 0.0, audio[: 3 * 16000])
    here = run_stage(cell, tmp_path / "here", AsrConfig(), tmp_path / "cache", log=lambda m: None)
    launcher = {**read_launcher(None), "executor": "local", "poll_s": 0.2}
    there = submit_stage(cell, tmp_path / "there", AsrConfig(), str(tmp_path / "cache"), 1, launcher,
                         tmp_path / "jobs", log=lambda m: None)
    assert there["speed"]["cached"] and there["consistency"] == here["consistency"]
    assert (tmp_path / "there" / "asr.jsonl").read_text() == (tmp_path / "here" / "asr.jsonl").read_text()
    assert list((tmp_path / "jobs").glob("*_log.out"))


def test_a_failing_recogniser_is_recorded_not_raised(tmp_path):
    cell = fake_cell(tmp_path / "cell", ["hello"], 4.0, 0.0, np.zeros(16000, "float32"))
    (cell / "out.wav").write_bytes(b"RIFF not really a wav")
    summary = run_stage(cell, tmp_path / "asr", AsrConfig(), None, log=lambda m: None)
    assert summary["status"] == "failed"
    assert json.loads((tmp_path / "asr" / "asr.json").read_text())["status"] == "failed"


# ---- odds and ends (issue 25 item 9) ----------------------------------------------------------------

def test_a_truncated_wav_is_flagged_not_ok(tmp_path):
    """A WAV cut short (its header declares more samples than it holds) is recorded as failed,
    naming the truncation; PyAV alone would decode what is there without a word."""
    from ttt.asr.recogniser import wav_truncation

    tone = (0.1 * np.sin(np.arange(3 * 24000) * 0.05)).astype("float32")
    cell = fake_cell(tmp_path / "cell", ["hello"], 4.0, 0.0, tone, rate=24000)
    whole = (cell / "out.wav").read_bytes()
    assert wav_truncation(cell / "out.wav") is None
    (cell / "out.wav").write_bytes(whole[: len(whole) // 2])
    assert "declares" in wav_truncation(cell / "out.wav")
    summary = run_stage(cell, tmp_path / "asr", AsrConfig(), None, log=lambda m: None)
    assert summary["status"] == "failed" and "truncated WAV" in summary["reason"], summary
    done = subprocess.run([sys.executable, "-m", "ttt", "asr", "--wav", str(cell / "out.wav")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "truncated WAV" in done.stderr and done.stderr.count("\n") == 1


@pytest.mark.parametrize("model", ["no/such/dir", "./missing-model", "/nonexistent/whisper"])
def test_a_missing_model_directory_says_so(tmp_path, model):
    cell = fake_cell(tmp_path / "cell", ["hello"], 4.0, 0.0, np.zeros(16000, "float32"))
    cfg = tmp_path / "asr.yaml"
    cfg.write_text(f"model: {model}\n")
    done = subprocess.run([sys.executable, "-m", "ttt", "asr", "--cell", str(cell), "--out",
                           str(tmp_path / "asr"), "--config", str(cfg)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "no such directory" in done.stderr and model in done.stderr
    assert "Repo id" not in done.stderr and not (tmp_path / "asr").exists()


def test_the_asr_job_imports_neither_torch_nor_moshi(tmp_path):
    """The job's whole path (CLI parse, recogniser, speech detector, scores, writing) in a fresh
    interpreter: torch and moshi never enter sys.modules (they cost ~2.7 s a job)."""
    tone = (0.1 * np.sin(np.arange(2 * 24000) * 0.05)).astype("float32")
    cell = fake_cell(tmp_path / "cell", ["hello"], 4.0, 0.0, tone, rate=24000)
    code = ("import sys, json\nfrom ttt.cli.main import main\n"
            f"rc = main(['asr', '--cell', {str(cell)!r}, '--out', {str(tmp_path / 'asr')!r}])\n"
            "print(json.dumps([rc, sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'moshi'))]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rc, heavy = json.loads(done.stdout.strip().splitlines()[-1])
    assert rc == 0 and heavy == []
    assert json.loads((tmp_path / "asr" / "asr.json").read_text())["status"] == "ok"


def test_the_cli_says_na_on_an_untrained_codec(tmp_path):
    tone = (0.1 * np.sin(np.arange(2 * 24000) * 0.05)).astype("float32")
    cell = fake_cell(tmp_path / "cell", ["hello there"], 4.0, 0.0, tone, rate=24000, untrained=True)
    done = subprocess.run([sys.executable, "-m", "ttt", "asr", "--cell", str(cell), "--out",
                           str(tmp_path / "asr")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "consistency WER n/a: the codec is untrained" in done.stdout, done.stdout
