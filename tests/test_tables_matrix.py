"""Tables that never lie (issue 25 items 1, 14, 16): the tables hold exactly the matrix's cells
(cells on disk it does not name are orphans, listed apart), one bad cell file costs its own row
(``status: corrupt`` naming the file and the field) and never a table or a plot, symlinked cell
folders are read, and the verdicts name every matrix cell they could not judge. Everything runs
through the real entry points (``python -m ttt aggregate`` / ``verdicts``, the workflow's
``cells_complete`` script)."""
import csv
import json
import runpy
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from results_factory import cell_spec, healthy_specs, write_results
from ttt.cli.main import main

REPO = Path(__file__).resolve().parent.parent
STALE = "long_form/duration~30/ttt~on"  # a cell of an earlier matrix, left on disk, failed
ON, OFF = "long_form/duration~60/ttt~on", "long_form/duration~60/ttt~off"


def read(path):
    with open(path, newline="") as f:
        return {r["cell"]: r for r in csv.DictReader(f)}


def results(tmp_path, specs=None, stale=True):
    """A results folder from ``specs`` (default: the healthy matrix), plus a failed cell of an
    earlier matrix; tables/matrix.txt names the matrix's cells, as the workflow writes it."""
    specs = specs or healthy_specs()
    extra = [{**cell_spec(STALE, True), "status": "failed"}] if stale else []
    root = write_results(tmp_path / "results", specs + extra)
    (root / "tables" / "matrix.txt").write_text("".join(s["path"] + "\n" for s in specs))
    return root, [s["path"] for s in specs]


def aggregate(root, *extra):
    return main(["aggregate", "--cells", str(root / "cells"), "--tables", str(root / "tables"),
                 "--plots", str(root / "plots"), *extra])


def run_status(root) -> tuple[bool, str]:
    """The workflow's last rule (workflow/scripts/cells_complete.py) over cells.csv."""
    out, log = root / "tables" / "cells.complete", root / "tables" / "cells_complete.log"
    snake = SimpleNamespace(input=SimpleNamespace(cells=str(root / "tables" / "cells.csv")),
                            output=[str(out)], log=[str(log)])
    try:
        runpy.run_path(str(REPO / "workflow" / "scripts" / "cells_complete.py"),
                       init_globals={"snakemake": snake})
    except SystemExit as exc:
        return False, str(exc)
    return True, log.read_text()


def test_cells_outside_the_matrix_are_orphans_never_rows(tmp_path, capsys):
    root, matrix = results(tmp_path)
    assert aggregate(root, "--matrix", str(root / "tables" / "matrix.txt"),
                     "--families", "long_form") == 0
    out = capsys.readouterr().out
    assert set(read(root / "tables" / "cells.csv")) == set(matrix)
    assert STALE not in read(root / "tables" / "long_form.csv")
    orphans = read(root / "tables" / "orphans.csv")
    assert list(orphans) == [STALE] and orphans[STALE]["status"] == "failed"
    assert f"warning: 1 cell folder(s) under {root / 'cells'} are not in the matrix" in out
    ok, message = run_status(root)  # the stale failure is not this run's
    assert ok and f"{len(matrix)} cells ok or diverged" in message
    assert main(["verdicts", "--results", str(root)]) == 0
    judged = {r["cell"] for r in csv.DictReader(open(root / "tables" / "verdicts_cells.csv"))
              if r["signal"] == "run.completed"}
    assert judged == set(matrix)


def test_the_matrix_file_is_the_default_and_a_narrower_matrix_narrows_the_tables(tmp_path):
    root, matrix = results(tmp_path)
    assert aggregate(root) == 0  # tables/matrix.txt, as the workflow writes it
    assert set(read(root / "tables" / "cells.csv")) == set(matrix)
    narrow = [c for c in matrix if c.startswith("lr_grid/")]
    (root / "tables" / "matrix.txt").write_text("\n".join(narrow) + "\n")
    assert aggregate(root, "--families", "lr_grid") == 0
    assert set(read(root / "tables" / "cells.csv")) == set(narrow)
    assert set(read(root / "tables" / "orphans.csv")) == set(matrix + [STALE]) - set(narrow)


def test_a_matrix_cell_that_never_ran_has_a_row_saying_so(tmp_path, capsys):
    root, matrix = results(tmp_path, stale=False)
    shutil.rmtree(root / "cells" / OFF)
    assert aggregate(root) == 0
    row = read(root / "tables" / "cells.csv")[OFF]
    assert row["status"] == "missing" and str(root / "cells" / OFF / "status.json") in row["error"]
    assert not run_status(root)[0]


def test_a_bad_matrix_file_is_one_line_exit_2(tmp_path, capsys):
    root, _ = results(tmp_path, stale=False)
    assert aggregate(root, "--matrix", str(tmp_path / "nope.txt")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.txt: matrix cell list not found" in err
    (tmp_path / "bad.txt").write_text("long_form/../../etc\n")
    assert aggregate(root, "--matrix", str(tmp_path / "bad.txt")) == 2
    assert "bad.txt line 1: not a cell path" in capsys.readouterr().err


@pytest.mark.parametrize("matrix", [True, False])
def test_symlinked_cell_folders_are_followed(tmp_path, matrix):
    """A cell folder on another disk, linked into results/cells: read like any other."""
    root, cells = results(tmp_path, stale=False)
    elsewhere = tmp_path / "other-disk" / "cell"
    shutil.move(str(root / "cells" / ON), str(elsewhere))
    (root / "cells" / ON).symlink_to(elsewhere, target_is_directory=True)
    if not matrix:
        (root / "tables" / "matrix.txt").unlink()
    assert aggregate(root) == 0
    rows = read(root / "tables" / "cells.csv")
    assert set(rows) == set(cells) and rows[ON]["status"] == "ok" and rows[ON]["perplexity_text"]
    assert main(["verdicts", "--results", str(root)]) == 0
    completed = next(r for r in csv.DictReader(open(root / "tables" / "verdicts.csv"))
                     if r["signal"] == "run.completed")
    assert completed["verdict"] == "pass" and ON in completed["cells"].split(";")


def test_verdicts_name_the_matrix_cells_a_cut_cells_csv_lost(tmp_path, capsys):
    root, matrix = results(tmp_path, stale=False)
    lines = (root / "tables" / "cells.csv").read_text().splitlines(keepends=True)
    kept = 5
    (root / "tables" / "cells.csv").write_text("".join(lines[:1 + kept]))
    assert main(["verdicts", "--results", str(root)]) == 0
    checks = [r for r in csv.DictReader(open(root / "tables" / "verdicts_cells.csv"))
              if r["signal"] == "run.completed"]
    lost = {r["cell"]: r for r in checks if r["passed"] == "fail"}
    assert len(checks) == len(matrix) and len(lost) == len(matrix) - kept
    for row in lost.values():
        assert "no row in" in row["explanation"] and "cells.csv" in row["explanation"]
    summary = {r["signal"]: r for r in csv.DictReader(open(root / "tables" / "verdicts.csv"))}
    assert summary["run.completed"]["verdict"] == "fail"
    assert f"{len(matrix) - kept} fail" in summary["run.completed"]["explanation"]


def corrupt_asr(root, cell, asr, windows=None):
    d = root / "cells" / cell / "asr"
    d.mkdir(parents=True, exist_ok=True)
    (d / "asr.json").write_text(json.dumps(asr))
    if windows is not None:
        (d / "asr.jsonl").write_text("".join(json.dumps(w) + "\n" for w in windows))


def good_asr():
    return {"status": "ok", "consistency": {"wer": 0.2, "ref_words": 40},
            "indicators": {"asr_words": 10, "asr_words_per_min": 120.0, "asr_distinct_1": 0.5,
                           "asr_distinct_2": 0.75, "asr_longest_repeated_ngram": 2,
                           "silence_fraction": 0.25},
            "codec_untrained": False, "speed": {"x_realtime": 3.0}}


FAULTS = {  # name: (what it does to the ON cell's files, the file and the field its row names)
    "metrics.json: a string where a number belongs": (
        lambda root: _edit_metrics(root, lambda m: m["throughput"].update(ms_per_step_p50="fast")),
        "cell/metrics.json", "throughput.ms_per_step_p50"),
    "metrics.json: a renamed metric": (
        lambda root: _edit_metrics(root, lambda m: m.update(ppl=m.pop("perplexity"))),
        "cell/metrics.json", "perplexity"),
    "asr.json holding a list": (lambda root: corrupt_asr(root, ON, [good_asr()]),
                                "asr/asr.json", "a JSON object"),
    "asr.json: indicators a list": (
        lambda root: corrupt_asr(root, ON, {**good_asr(), "indicators": [1, 2]}),
        "asr/asr.json", "indicators"),
    "asr.json: consistency WER a string": (
        lambda root: corrupt_asr(root, ON, {**good_asr(), "consistency": {"wer": "low"}}),
        "asr/asr.json", "consistency.wer"),
    "asr.jsonl rows without start_s": (
        lambda root: corrupt_asr(root, ON, good_asr(), [{"consistency_wer": 0.1}]),
        "asr/asr.jsonl", "start_s"),
}


def _edit_metrics(root, change):
    path = root / "cells" / ON / "cell" / "metrics.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


@pytest.mark.parametrize("fault", list(FAULTS))
def test_one_bad_cell_file_costs_its_row_only(tmp_path, capsys, fault):
    root, matrix = results(tmp_path, stale=False)
    corrupt_asr(root, OFF, good_asr(), [{"start_s": 0.0, "consistency_wer": 0.1}])
    plant, named, field = FAULTS[fault]
    plant(root)
    assert aggregate(root, "--families", "long_form") == 0
    out = capsys.readouterr().out
    rows = read(root / "tables" / "cells.csv")
    assert set(rows) == set(matrix)
    assert rows[ON]["status"] == "corrupt"
    assert str(root / "cells" / ON / named) in rows[ON]["error"] and field in rows[ON]["error"]
    assert f"corrupt: {ON}: {rows[ON]['error']}" in out
    assert all(r["status"] == "ok" for c, r in rows.items() if c != ON)
    assert rows[OFF]["asr_status"] == "ok"
    for plot in ("long_form", "consistency", "lr_grid", "figure5"):
        assert (root / "plots" / f"{plot}.png").stat().st_size > 1000
    assert main(["verdicts", "--results", str(root)]) == 0
    completed = {r["cell"]: r for r in csv.DictReader(open(root / "tables" / "verdicts_cells.csv"))
                 if r["signal"] == "run.completed"}
    assert completed[ON]["passed"] == "fail" and named.split("/")[-1] in completed[ON]["explanation"]


def test_plots_skip_asr_windows_they_cannot_draw_with_a_warning(tmp_path, capsys):
    """The plot reads each cell's asr.jsonl itself: rows without a time are left out, named."""
    from ttt.report.plots import make_plots

    root, _ = results(tmp_path, stale=False)
    corrupt_asr(root, ON, good_asr(), [{"start_s": 0.0, "consistency_wer": 0.1},
                                       {"consistency_wer": 0.3}])
    rows = [{"cell": ON, "family": "long_form", "ttt": "on", "asr_status": "ok"}]
    (root / "plots").mkdir()
    warnings = make_plots(root / "cells", rows, root / "plots")
    assert (root / "plots" / "consistency.png").stat().st_size > 1000
    assert any(str(root / "cells" / ON / "asr" / "asr.jsonl") in w and "start_s" in w
               for w in warnings), warnings
