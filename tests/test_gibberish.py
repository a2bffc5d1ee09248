"""Gibberish, honestly (issue 23 item 3): ``quality.consistency_wer`` says each of its answers on
constructed ASR outputs (an empty or filler-only text stream while the audio speaks, silent audio
while the text spoke, a WER over the threshold, a consistent transcript, nothing said, an
untrained codec), each fail with its reason in one line; then on real playback cells of recorded
speech (ttt/eval/playback.py), through the ASR stage and the verdicts as a run judges them."""
import json
from pathlib import Path

import pytest

from results_factory import aggregate_tables, cell_spec, write_results
from ttt.report import verdicts

CELL = "quality/playback~x"  # not calibration/: that family stays out of the verdict rows
REPO = Path(__file__).resolve().parents[1]


def asr_summary(wer, ref_words, heard, silence, text_words=None, seconds=60.0, untrained=False):
    """asr.json as the ASR stage writes it (the fields the gate reads)."""
    return {"status": "ok", "codec_untrained": untrained,
            "consistency": {"wer": wer, "ref_words": ref_words},
            "text_words": ref_words if text_words is None else text_words,
            "indicators": {"asr_words": heard, "silence_fraction": silence},
            "audio": {"seconds": seconds}}


def judge(tmp_path, asr: dict, cfg=None) -> dict:
    """The consistency gate's summary row over one cell holding ``asr``."""
    write_results(tmp_path, [cell_spec(CELL, False, mode="playback")])
    d = tmp_path / "cells" / CELL / "asr"
    d.mkdir(parents=True)
    (d / "asr.json").write_text(json.dumps(asr))
    aggregate_tables(tmp_path)
    summary, checks = verdicts.evaluate(tmp_path, cfg)
    return {r["signal"]: r for r in summary}["quality.consistency_wer"]


CASES = {
    # name: (asr.json, verdict, words the one-line explanation must hold)
    "consistent": (asr_summary(0.05, 44, 44, 0.1), "pass", ["WER 0.050", "44 text words"]),
    "empty_text_speaking_audio": (asr_summary(None, 0, 300, 0.2), "fail",
                                  ["gibberish", "text stream is empty", "300 words heard"]),
    "filler_only_text": (asr_summary(None, 0, 120, 0.3, text_words=6), "fail",
                         ["gibberish", "filler only (6 word(s)", "120 words heard"]),
    "nearly_empty_text": (asr_summary(5.0, 2, 120, 0.3), "fail", ["nearly empty (2 word(s))"]),
    "silent_audio_text_spoke": (asr_summary(1.0, 44, 1, 1.0), "fail",
                                ["gibberish", "audio is silent", "says 44 words"]),
    "over_threshold": (asr_summary(0.5, 44, 40, 0.1), "fail", ["WER 0.500", "over 0.3"]),
    "nothing_said": (asr_summary(None, 0, 0, 1.0), "n/a", ["neither stream speaks"]),
    "untrained_codec": (asr_summary(None, 0, 300, 0.2, untrained=True), "n/a", ["codec is untrained"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_answer_of_the_consistency_gate(tmp_path, case):
    asr, verdict, words = CASES[case]
    row = judge(tmp_path, asr)
    assert row["verdict"] == verdict, row
    assert "\n" not in row["explanation"]
    for w in words:
        assert w in row["explanation"], (w, row["explanation"])


def test_threshold_edges(tmp_path):
    """max_wer: at it passes, just over fails; min_words and min_speech_s at their edges: two
    text words (min_words 3) while 300 are heard fail, three pass on the WER; 0.5 s of speech
    is silence, exactly 1.0 s (min_speech_s) is not."""
    assert judge(tmp_path / "a", asr_summary(0.3, 44, 40, 0.1))["verdict"] == "pass"
    assert judge(tmp_path / "b", asr_summary(0.3001, 44, 40, 0.1))["verdict"] == "fail"
    assert judge(tmp_path / "c", asr_summary(0.2, 3, 300, 0.1))["verdict"] == "pass"
    # 64 s of audio: 1 − 1/64 and 1 − 0.5/64 are exact in binary, so speech is exactly 1.0 / 0.5 s
    silent = judge(tmp_path / "d", asr_summary(0.2, 44, 40, 1 - 0.5 / 64, seconds=64.0))
    assert silent["verdict"] == "fail" and "silent" in silent["explanation"]
    assert judge(tmp_path / "e", asr_summary(0.2, 44, 40, 1 - 1.0 / 64, seconds=64.0))["verdict"] == "pass"
    cfg = verdicts.thresholds({"consistency": {"min_words": 1}})  # now 2 text words are enough
    assert judge(tmp_path / "f", asr_summary(0.2, 2, 300, 0.1), cfg)["verdict"] == "pass"


# ---- real playback cells: recorded speech through the cell, the ASR stage and the verdicts ------

def playback_cell(root: Path, text: str, audio: str, cache: Path) -> dict:
    from ttt.asr.recogniser import AsrConfig
    from ttt.asr.scoring import run_stage
    from ttt.eval.cell import CellConfig, run_cell

    cell = f"calibration/playback~{text}-{audio}"
    cfg = CellConfig(cell=cell, mode="playback", family="calibration", model="tiny", window_s=5.0,
                     ttt={"enabled": False}, cache_dir=str(cache), playback_text=text,
                     playback_audio=audio)
    out = root / "cells" / cell
    metrics = run_cell(cfg, out / "cell", log=lambda m: None)
    (out / "status.json").write_text(json.dumps({"status": "ok", "cell": cell}))
    run_stage(out / "cell", out / "asr", AsrConfig(), cache / "asr", threads=2, log=lambda m: None)
    return metrics


@pytest.mark.slow
def test_playback_cells_get_the_known_verdicts(tmp_path, report):
    """The calibration scenarios on real recorded speech (ttt/assets/playback, LibriVox): Moshi's
    text = the alignment words and its audio = the recording → pass; the same audio with an empty
    text stream → gibberish fail; silence where the text says it spoke → gibberish fail."""
    from ttt.report.aggregate import aggregate  # noqa: F401 - the run's own table

    cache = tmp_path / "cache"
    for text, audio in (("aligned", "recorded"), ("empty", "recorded"), ("aligned", "silence")):
        metrics = playback_cell(tmp_path, text, audio, cache)
        assert metrics["mode"] == "playback" and metrics["ttt"] is False
        assert metrics["audio"]["codec_untrained"] is False
    aggregate_tables(tmp_path)
    _, checks = verdicts.evaluate(tmp_path)
    got = {c["cell"]: c for c in checks if c["signal"] == "quality.consistency_wer"}
    ok = got["calibration/playback~aligned-recorded"]
    report("playback aligned/recorded consistency WER", ok["value"])
    assert ok["passed"] is True and ok["value"] < 0.15, ok
    empty = got["calibration/playback~empty-recorded"]
    assert empty["passed"] is False and "text stream is empty" in empty["explanation"], empty
    silent = got["calibration/playback~aligned-silence"]
    assert silent["passed"] is False and "audio is silent" in silent["explanation"], silent


def test_the_calibration_family_holds_the_playback_scenarios():
    """Each answer of the consistency gate has a calibration scenario (ttt/launch/calibration.py)
    whose cell is a valid playback cell reading the shipped recording."""
    from ttt.base.config import CellConfig
    from ttt.data.conversations import read_manifest
    from ttt.launch.calibration import SCENARIOS, calibration_cells, scenario_path

    f = {"conversations": 2, "duration_s": 8, "long_duration_s": 20, "seed": 1, "window_s": 4}
    base = {"model": "tiny", "base": None, "device": "cpu", "dtype": "float32", "cache_dir": "c"}
    cells = calibration_cells(f, base)
    mine = {s.name: s for s in SCENARIOS if "quality.consistency_wer" in s.expected}
    settings = {name: (cells[scenario_path(s)].get("playback_text", "aligned"),
                       cells[scenario_path(s)].get("playback_audio", "recorded"),
                       s.expected["quality.consistency_wer"]) for name, s in mine.items()}
    assert sorted(settings.values()) == [("aligned", "recorded", "pass"), ("aligned", "silence", "fail"),
                                         ("empty", "recorded", "fail")]
    for s in mine.values():
        cfg = CellConfig.from_dict(cells[scenario_path(s)])
        assert cfg.mode == "playback" and s.ttt is None
        items = read_manifest(REPO / cfg.data["manifest"])
        assert items[0].channels == 2 and len(items[0].alignments) == 44



def test_vs_off_is_na_when_no_window_has_words_on_both_sides(tmp_path):
    """quality.consistency_wer_vs_off's remaining answer (pass, fail, no effect and the untrained
    codec's n/a: tests/test_asr.py): no window where both text streams have words → n/a."""
    on, off = "short_form/duration~8/ttt~on", "short_form/duration~8/ttt~off"
    write_results(tmp_path, [cell_spec(on, True), cell_spec(off, False)])
    for cell, wers in ((on, [None, None]), (off, [0.1, 0.2])):
        d = tmp_path / "cells" / cell / "asr"
        d.mkdir(parents=True)
        (d / "asr.json").write_text(json.dumps(asr_summary(0.1, 44, 40, 0.1)))
        (d / "asr.jsonl").write_text("".join(json.dumps(
            {"item": 0, "start_s": 4.0 * i, "consistency_wer": w}) + "\n" for i, w in enumerate(wers)))
    aggregate_tables(tmp_path)
    summary, _ = verdicts.evaluate(tmp_path)
    row = {r["signal"]: r for r in summary}["quality.consistency_wer_vs_off"]
    assert row["verdict"] == "n/a" and "no window where both text streams have words" in row["explanation"]
