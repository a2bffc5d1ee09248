"""Run-to-run comparison: cells matched by parameters, a planted regression found (and only it),
cells of one run listed, one-line errors."""
import csv
import json
import shutil

from results_factory import aggregate_tables, cell_spec, healthy_specs, write_results
from ttt.cli.main import main
from ttt.report.compare import cell_key

PLANTED = "long_form/duration~60/ttt~on"


def two_runs(tmp_path):
    """A and B from the same cells; B: the planted perplexity regression, one cell dropped, one
    added, and an lr_grid cell whose path spells its parameters differently (order, number)."""
    a = write_results(tmp_path / "A", healthy_specs())
    b = tmp_path / "B"
    shutil.copytree(a, b)
    metrics = b / "cells" / PLANTED / "cell" / "metrics.json"
    m = json.loads(metrics.read_text())
    m["perplexity"]["text"] *= 1.05  # +5 % > the 1 % threshold
    metrics.write_text(json.dumps(m))
    shutil.rmtree(b / "cells" / "yarn/tokens~64/ttt~off")
    (b / "cells" / "lr_grid/lr~0.001/chunk~16/ttt~on").rename(b / "cells" / "lr_grid/lr~0.001/chunk~16/x")
    respelled = b / "cells" / "lr_grid/chunk~16/lr~1e-03/ttt~on"
    respelled.parent.mkdir(parents=True)
    (b / "cells" / "lr_grid/lr~0.001/chunk~16/x").rename(respelled)
    write_results(tmp_path / "extra", [cell_spec("yarn/tokens~128/ttt~on", True)])
    shutil.copytree(tmp_path / "extra" / "cells" / "yarn" / "tokens~128", b / "cells" / "yarn" / "tokens~128")
    aggregate_tables(b)
    return a, b


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_planted_regression_is_found_and_only_it(tmp_path, capsys):
    a, b = two_runs(tmp_path)
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    diff = read(out / "diff.csv")
    flagged = [(r["cell_b"], r["metric"]) for r in diff if r["regression"] == "True"]
    assert flagged == [(PLANTED, "perplexity_text")]
    row = next(r for r in diff if r["cell_b"] == PLANTED and r["metric"] == "perplexity_text")
    assert abs(float(row["rel_change"]) - 0.05) < 1e-9
    # TTT-on row: its twin delta moved too, diffed but not a flagged metric
    assert any(r["metric"] == "perplexity_text_delta" and float(r["delta"]) != 0 for r in diff
               if r["cell_b"] == PLANTED)
    # matched by parameters, not by path spelling or order
    assert ("lr_grid/lr~0.001/chunk~16/ttt~on", "lr_grid/chunk~16/lr~1e-03/ttt~on") in {
        (r["cell_a"], r["cell_b"]) for r in diff}
    unmatched = {(r["only_in"], r["cell"]) for r in read(out / "unmatched.csv")}
    assert unmatched == {("A", "yarn/tokens~64/ttt~off"), ("B", "yarn/tokens~128/ttt~on")}
    summary = (out / "summary.txt").read_text()
    # the planted regression, and the two cells present on one side only (lost / unexpected)
    assert "3 regression(s)" in summary and f"{PLANTED}: perplexity_text" in summary
    assert "only in A: yarn/tokens~64/ttt~off" in summary and "only in B: yarn/tokens~128/ttt~on" in summary
    assert summary in capsys.readouterr().out
    assert main(["compare", str(a), str(b), "--out", str(out), "--strict"]) == 1
    assert main(["compare", str(a), str(a), "--out", str(tmp_path / "same"), "--strict"]) == 0
    assert not [r for r in read(tmp_path / "same" / "diff.csv") if r["regression"] == "True"]
    assert "0 regression(s)" in (tmp_path / "same" / "summary.txt").read_text()


def test_strict_fails_when_results_went_missing(tmp_path, capsys):
    """Issue 16 item 6: a cell's lost value and a cut cells.csv used to pass --strict."""
    a = write_results(tmp_path / "A", healthy_specs())
    b = tmp_path / "B"
    shutil.copytree(a, b)
    cells = (b / "tables" / "cells.csv").read_text().splitlines(keepends=True)
    lost = read(b / "tables" / "cells.csv")[0]
    n = len(cells) - 1
    (b / "tables" / "cells.csv").write_text("".join(cells[:3]))  # header + 2 of n rows
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out), "--strict"]) == 1
    summary = (out / "summary.txt").read_text()
    assert f"{n - 2 + 1} regression(s)" in summary and f"table cells.csv: {n} rows in A, 2 in B" in summary
    assert all(r["regression"] == "True" for r in read(out / "unmatched.csv"))
    # One cell's perplexity blank in B (its metrics.json was lost): flagged, not "0 regressions".
    rows = read(a / "tables" / "cells.csv")
    rows[0]["perplexity_text"] = ""
    with open(b / "tables" / "cells.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["compare", str(a), str(b), "--out", str(out), "--strict"]) == 1
    flagged = [(r["cell_b"], r["metric"], r["threshold"]) for r in read(out / "diff.csv")
               if r["regression"] == "True"]
    assert flagged == [(rows[0]["cell"], "perplexity_text", "value kept")] and lost["perplexity_text"]


def test_thresholds_and_status_regressions(tmp_path):
    a, b = two_runs(tmp_path)
    loose = tmp_path / "loose.yaml"
    loose.write_text("perplexity_text: 0.10\n")
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out), "--thresholds", str(loose)]) == 0
    assert not [r for r in read(out / "diff.csv") if r["regression"] == "True"]
    status = b / "cells" / "regression/ttt~off" / "status.json"
    s = json.loads(status.read_text())
    status.write_text(json.dumps({**s, "status": "failed", "error": "boom"}))
    shutil.rmtree(b / "cells" / "regression/ttt~off" / "cell")
    aggregate_tables(b)
    main(["compare", str(a), str(b), "--out", str(out), "--thresholds", str(loose)])
    flagged = [(r["cell_b"], r["metric"]) for r in read(out / "diff.csv") if r["regression"] == "True"]
    assert flagged == [("regression/ttt~off", "status")]


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    a = write_results(tmp_path / "A", healthy_specs())
    assert main(["compare", str(a), str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing: no cells.csv" in err
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\n")
    assert main(["compare", str(a), str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "not a cells table" in capsys.readouterr().err
    typo = tmp_path / "t.yaml"
    typo.write_text("perplexity: 0.1\n")
    assert main(["compare", str(a), str(a), "--out", str(tmp_path / "o"), "--thresholds", str(typo)]) == 2
    assert "a new metric needs [direction, threshold]" in capsys.readouterr().err


def test_cell_key_normalises_numbers_and_order():
    assert cell_key({"cell": "lr_grid/lr~0.001/chunk~8/ttt~on"}) == \
        cell_key({"cell": "lr_grid/chunk~8.0/lr~1e-3/ttt~on"})
    assert cell_key({"cell": "ablation/ablation~no_conv/ttt~on"}) != \
        cell_key({"cell": "ablation/ablation~neither/ttt~on"})


def test_strict_fails_on_a_metric_column_missing_from_the_newer_run(tmp_path, capsys):
    """Issue 25 item 15: a column renamed or dropped in B used to read as "nothing to compare"."""
    a = write_results(tmp_path / "A", healthy_specs())
    b = tmp_path / "B"
    shutil.copytree(a, b)
    rows = read(b / "tables" / "cells.csv")
    with open(b / "tables" / "cells.csv", "w", newline="") as f:
        columns = [c for c in rows[0] if c not in ("perplexity_text", "ms_per_step")]
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out), "--strict"]) == 1
    flagged = {(r["cell_b"], r["metric"]) for r in read(out / "diff.csv") if r["regression"] == "True"}
    with_values = {(r["cell"], m) for r in rows for m in ("perplexity_text", "ms_per_step") if r[m]}
    assert flagged == with_values and len(with_values) == 2 * len(rows)
    assert f"{PLANTED}: perplexity_text " in capsys.readouterr().out
    assert "→ (no such column in B)" in (out / "summary.txt").read_text()


def test_any_status_step_down_is_a_regression(tmp_path):
    """ok → diverged and diverged → failed count, not only ok → not ok; failed → timeout does
    not (both not completed)."""
    specs = healthy_specs()
    specs[0] = {**specs[0], "status": "diverged"}
    specs[3] = {**specs[3], "status": "failed"}
    a = write_results(tmp_path / "A", specs)
    b = tmp_path / "B"
    shutil.copytree(a, b)
    rows = read(b / "tables" / "cells.csv")
    changes = {specs[0]["path"]: "failed", specs[1]["path"]: "diverged", specs[3]["path"]: "timeout"}
    for row in rows:
        row["status"] = changes.get(row["cell"], row["status"])
    with open(b / "tables" / "cells.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out), "--strict"]) == 1
    flagged = {(r["cell_b"], r["a"], r["b"]) for r in read(out / "diff.csv")
               if r["regression"] == "True" and r["metric"] == "status"}
    assert flagged == {(specs[0]["path"], "diverged", "failed"), (specs[1]["path"], "ok", "diverged")}


def test_a_non_finite_threshold_is_refused_before_any_table(tmp_path, capsys):
    """A NaN threshold switched its check off (every comparison with NaN is False)."""
    for text, shown in (("wer: .nan\n", "nan"), ("wer: .inf\n", "inf"), ("wer: -0.1\n", "-0.1"),
                        ("novel: [-1, .nan]\n", "nan")):
        (tmp_path / "t.yaml").write_text(text)
        assert main(["compare", str(tmp_path / "nowhere-a"), str(tmp_path / "nowhere-b"),
                     "--out", str(tmp_path / "o"), "--thresholds", str(tmp_path / "t.yaml")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "must be a finite number >= 0 or null, got " + shown in err
    assert not (tmp_path / "o").exists()
