"""The typed cell result (ttt/base/result.py): what a cell writes is what the reports read, and a
metrics.json that does not fit is refused in one line naming the file and the key, not read as a
blank column or an "n/a" verdict. The writer's side is tested on real cells in test_cell.py and
test_generate.py (``load_result`` on their metrics.json)."""
import copy
import json
import math

import pytest

from results_factory import cell_spec, write_results
from ttt.base.result import SCHEMA_VERSION, CellResult, ResultError, checked, load
from ttt.report.tables import read_table

ON = "long_form/duration~60/ttt~on"


def metrics(on=True, **changes) -> dict:
    m = copy.deepcopy(cell_spec(ON, on)["metrics"])
    m.update(changes)
    return m


def write(tmp_path, data) -> str:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(data))
    return path


def test_a_result_reads_back_typed_and_round_trips(tmp_path):
    m = metrics(schema_version=SCHEMA_VERSION, perplexity={"text": math.inf, "audio": 200})
    r = load(write(tmp_path, m))
    assert r.perplexity.text == math.inf and r.perplexity.audio == 200.0  # inf is a number
    assert r.ttt_telemetry.next_chunk_gain["3"].chunks == 9
    assert r.resolved_ttt["lr"] == 0.001 and r.dtype == "float32" and r.memory.run_peak == 1_000_000
    assert CellResult.from_dict(r.to_dict()) == r
    assert "ab" not in r.to_dict()  # a mode-specific section left null is not written


def test_old_unversioned_results_load_and_newer_ones_are_refused(tmp_path):
    legacy = metrics(memory={"peak_bytes": 7})  # before run/load peaks, before schema_version
    assert load(write(tmp_path, legacy)).memory.run_peak == 7
    with pytest.raises(ResultError, match=r"metrics.json: schema_version 2 is not one this ttt "):
        load(write(tmp_path, metrics(schema_version=2)))


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("throughput"), r"missing key 'throughput'$"),
    (lambda m: m["perplexity"].pop("audio"), r"missing key 'perplexity.audio'$"),
    # a renamed metric: the old name missing and the new one unknown
    (lambda m: m["throughput"].update(ms_p50=m["throughput"].pop("ms_per_step_p50")),
     r"missing key 'throughput.ms_per_step_p50'; unknown key 'throughput.ms_p50' \(renamed\? "
     r"a new metric needs its field in ttt/base/result.py Throughput\)$"),
    (lambda m: m.update(wer_pooled=1.0), r"unknown key 'wer_pooled' \(renamed\?"),
    (lambda m: m["ttt_telemetry"].update(clips=3), r"unknown key 'ttt_telemetry.clips'"),
    (lambda m: m["perplexity"].update(text="high"),
     r"key 'perplexity.text': expected a number, got str 'high'$"),
    (lambda m: m.update(steps=True), r"key 'steps': expected an integer, got bool True$"),
    (lambda m: m.update(ttt="yes"), r"key 'ttt': expected true/false, got str 'yes'$"),
    (lambda m: m.update(throughput=3), r"key 'throughput': expected an object, got int 3$"),
    (lambda m: m["ttt_telemetry"]["final_w_norm"].update({"1": None}),
     r"key 'ttt_telemetry.final_w_norm.1': expected a number, got null None$"),
    (lambda m: m["plumbing"].update(layers=[1, "3"]), r"key 'plumbing.layers\[1\]': expected an integer"),
])
def test_a_result_that_does_not_fit_is_refused_naming_file_and_key(tmp_path, change, message):
    m = metrics()
    change(m)
    with pytest.raises(ResultError, match=str(tmp_path / "metrics.json") + ": " + message):
        load(write(tmp_path, m))


def test_unreadable_files_are_one_line(tmp_path):
    path = tmp_path / "metrics.json"
    with pytest.raises(ResultError, match="metrics.json: cell result not found"):
        load(path)
    path.write_text("[1, 2]")
    with pytest.raises(ResultError, match="metrics.json: expected a JSON object, got list"):
        load(path)
    path.write_text('{"cell": ')
    with pytest.raises(ResultError, match="metrics.json: not valid JSON"):
        load(path)


def test_the_writer_refuses_what_the_readers_would(tmp_path):
    """``checked`` sees the metrics as JSON will hold them: a value that is no JSON number (a
    stray object written as its text) is refused before the file exists."""
    class Tensor:
        def __str__(self):
            return "tensor(1.5)"
    with pytest.raises(ResultError, match=r"out/metrics.json: key 'load_s': expected a number, got str"):
        checked(metrics(load_s=Tensor()), "out/metrics.json")
    assert checked(metrics(), "m").schema_version == SCHEMA_VERSION


def test_cells_csv_columns_come_from_the_typed_result(tmp_path):
    """The table's peak is the run's, not the load's; a cell of an older format (one peak) reads."""
    specs = [cell_spec(ON, True), cell_spec("long_form/duration~60/ttt~off", False,
                                            memory={"peak_bytes": 7})]
    specs[0]["metrics"]["memory"] = {"load_peak_bytes": 15_780_514_304,
                                     "run_peak_bytes": 17_471_474_176}
    rows = {r["cell"]: r for r in read_table(write_results(tmp_path, specs) / "tables" / "cells.csv")
            .to_dict("records")}
    assert rows[ON]["peak_mem_bytes"] == "17471474176" and rows[ON]["status"] == "ok"
    assert rows["long_form/duration~60/ttt~off"]["peak_mem_bytes"] == "7"
    assert rows[ON]["next_chunk_gain_rel"] == "0.1" and rows[ON]["ttt_lr"] == "0.001"
