"""The results I/O every report shares (ttt/report/tables.py, ttt/base/files.py): the number
parser's one meaning, the reader's one-line errors, the atomic writer, and the cell path written
by the workflow and parsed by the reports."""
from __future__ import annotations

import csv
import math
import os
import threading

import pandas as pd
import pytest

from ttt.base.files import atomic_write, write_csv, write_text
from ttt.report.tables import cell_params, cell_path, cell_value, number, read_table


def test_number_keeps_non_finite_and_refuses_flags():
    assert number("0.25") == 0.25 and number(3) == 3.0 and number("1e-05") == 1e-05
    assert math.isnan(number("nan")) and number("inf") == math.inf and number("-inf") == -math.inf
    for not_a_number in ("", None, "True", "False", True, False, "on", "abc", [1]):
        assert number(not_a_number) is None, not_a_number


def test_written_table_reads_back_as_written(tmp_path):
    rows = [{"cell": "a/x~1/ttt~on", "ppl": 0.1, "n": 3, "flag": True, "gone": None},
            {"cell": 'b,"q"', "ppl": math.nan, "extra": math.inf, "n": 10**20}]
    path = tmp_path / "t.csv"
    write_csv(path, rows)
    # Every key is a column (first seen first), None blank, NaN "nan", the text csv writes.
    with open(path, newline="") as f:
        assert list(csv.reader(f)) == [
            ["cell", "ppl", "n", "flag", "gone", "extra"],
            ["a/x~1/ttt~on", "0.1", "3", "True", "", ""],
            ['b,"q"', "nan", str(10**20), "", "", "inf"]]
    table = read_table(path)
    assert list(table.columns) == ["cell", "ppl", "n", "flag", "gone", "extra"]
    assert table.to_dict("records")[1] == {"cell": 'b,"q"', "ppl": "nan", "n": str(10**20),
                                           "flag": "", "gone": "", "extra": "inf"}
    assert [number(v) for v in table["ppl"]][0] == 0.1 and math.isnan(number(table["ppl"][1]))
    assert number(table["flag"][0]) is None and number(table["gone"][0]) is None


def test_ints_stay_ints_beside_floats_blanks_and_nan(tmp_path):
    """pandas' own conversions would write these ints as floats (3.0), as the csv module did not."""
    write_csv(tmp_path / "t.csv", [{"n": 3, "m": 1, "k": 2}, {"n": None, "m": math.nan, "k": 2.5}])
    assert (tmp_path / "t.csv").read_text() == "n,m,k\n3,1,2\n,nan,2.5\n"


def test_dataframe_in_and_header_only_tables(tmp_path):
    frame = pd.DataFrame({"a": [1.5, math.nan], "b": ["x", None]})
    write_csv(tmp_path / "f.csv", frame)
    assert (tmp_path / "f.csv").read_text() == "a,b\n1.5,x\nnan,\n"
    write_csv(tmp_path / "h.csv", [], columns=["only_in", "cell"])
    assert read_table(tmp_path / "h.csv").columns.tolist() == ["only_in", "cell"]
    write_csv(tmp_path / "e.csv", [])
    assert (tmp_path / "e.csv").read_text() == "empty\n" and read_table(tmp_path / "e.csv").empty


@pytest.mark.parametrize("content, reason", [
    (None, "cells table not found"),
    (b"a,b\n1,2\n1,2,3\n", "unreadable cells table (Error tokenizing data"),
    (b"a,b\n1,2,3\n", "unreadable cells table (Length of header"),
    (b"\xff\xfea,b\n1,2\n", "unreadable cells table ('utf-8' codec"),
    (b'a,b\n1,"2\n', "unreadable cells table"),
])
def test_bad_table_is_one_line_error_naming_the_file(tmp_path, content, reason):
    path = tmp_path / "cells.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(KeyError) as exc:
        read_table(path, "cells table", KeyError)
    message = exc.value.args[0]
    assert message.startswith(f"{path}: {reason}") and "\n" not in message


def test_missing_ok_and_empty_file_are_empty_tables(tmp_path):
    assert read_table(tmp_path / "none.csv", missing_ok=True).empty
    (tmp_path / "zero.csv").write_text("")
    assert read_table(tmp_path / "zero.csv").empty


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    write_text(path, "old")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old" and os.listdir(path.parent) == ["out.txt"]


def test_atomic_write_never_shows_half_a_file(tmp_path):
    """A reader polling while a big table is rewritten sees the old or the new file, whole."""
    path = tmp_path / "t.csv"
    old, new = [{"i": i} for i in range(20000)], [{"i": -i} for i in range(20000)]
    write_csv(path, old)
    seen, done = set(), threading.Event()

    def poll():
        while not done.is_set():
            seen.add(len(path.read_bytes()))

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for rows in (new, old, new):
            write_csv(path, rows)
    finally:
        done.set()
        reader.join()
    write_csv(tmp_path / "old.csv", old)
    whole = {len(path.read_bytes()), len((tmp_path / "old.csv").read_bytes())}
    assert seen and seen <= whole


def test_cell_path_round_trip_matches_the_workflow_spelling():
    params = [("lr", 0.001), ("chunk", 16), ("alpha", "learned"), ("tau", 1e-05), ("ttt", "on")]
    path = cell_path("lr_grid", params)
    assert path == "lr_grid/lr~0.001/chunk~16/alpha~learned/tau~1e-05/ttt~on"
    assert cell_params(path) == ("lr_grid", {k: cell_value(v) for k, v in params})
    assert cell_params("regression/ttt~off") == ("regression", {"ttt": "off"})
    assert cell_params("f/note~a~b/plain") == ("f", {"note": "a~b"})  # only the first ~ splits
    assert cell_value(2.0) == "2" and cell_value(0.5) == "0.5" and cell_value(3) == "3"
    with pytest.raises(ValueError, match="delimit"):
        cell_path("f", [("a~b", 1)])


def test_workflow_writes_cell_paths_with_this_formatter():
    """The matrix builder (ttt/launch/matrix.py, which common.smk calls) builds every cell path
    with cell_path (the reports parse what it writes)."""
    from pathlib import Path
    root = Path(__file__).parents[1]
    builder = (root / "ttt" / "launch" / "matrix.py").read_text()
    smk = (root / "workflow" / "rules" / "common.smk").read_text()
    assert "from ttt.report.tables import cell_path" in builder and "~{" not in builder + smk


def test_cell_path_import_stays_light():
    """Snakemake parses common.smk for every job; cell_path must not pull in pandas."""
    import subprocess
    import sys
    code = "import sys, ttt.report.tables; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "False"
