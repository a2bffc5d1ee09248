"""Run-to-run comparison (seed 000 §5: "automatic comparison versus historical logs").

``python -m ttt compare RESULTS_A RESULTS_B --out DIR`` reads each run's
``tables/cells.csv``, matches cells by their parameters (family and the ``key~value`` parts of
the cell path, numbers compared as numbers; never by row order), and writes ``DIR/diff.csv`` with
one row per matched cell and metric (A, B, B − A, relative change, ``regression``),
``DIR/unmatched.csv`` with the cells present in one run only, ``DIR/tables.csv`` (rows per
table in each run) and ``DIR/summary.txt``.

A regression is a change in the bad direction by more than the metric's relative threshold
(``|B − A| / |A|``; any bad change when A is 0), or a status / flag turning bad: any step down
``ok`` → ``diverged`` → anything else (failed, timeout, corrupt, missing; so diverged → failed
counts), ``diverged`` False → True, ``upstream_bitwise_equal`` True → False. Metrics without a
threshold are diffed but never flagged. Lost results are regressions too: a value present in A
and blank in B, a metric column of A that B's table lacks (renamed or dropped), a cell present in
one run only, a table of A absent from B or with fewer rows. A threshold must be a finite number
>= 0 (NaN would switch its check off): anything else is refused before any table is read.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from ttt.base.files import write_csv, write_text
from ttt.report.tables import cell_params, number, read_table

# metric: (direction, default relative threshold); direction -1 = lower is better.
THRESHOLDS = {
    "perplexity_text": (-1, 0.01), "perplexity_audio": (-1, 0.01), "wer": (-1, 0.02),
    "ms_per_step": (-1, 0.10), "tokens_per_s": (+1, 0.10), "peak_mem_bytes": (-1, 0.10),
}
FLAGS = {"diverged": "False", "upstream_bitwise_equal": "True", "best_lr_for_chunk": None}
NOT_METRICS = {"family", "cell", "status", "error", "job_id", "mode", "git_sha", "device", "twin",
               "ttt"}
UNMATCHED_COLUMNS = ["only_in", "family", "cell", "status", "regression"]


class CompareError(ValueError):
    pass


def read_cells(path: str | os.PathLike) -> tuple[Path, list[dict]]:
    """A run's rows: ``path`` is a results folder (``tables/cells.csv`` inside), a tables folder or
    the CSV itself."""
    path = Path(path)
    for candidate in (path / "tables" / "cells.csv", path / "cells.csv", path):
        if candidate.is_file():
            break
    else:
        raise CompareError(f"{path}: no cells.csv (expected RESULTS/tables/cells.csv)")
    table = read_table(candidate, "cells table", CompareError)
    if len(table) and not {"family", "cell"} <= set(table.columns):
        raise CompareError(f"{candidate}: not a cells table (needs 'family' and 'cell' columns)")
    return candidate, table.to_dict("records")


def cell_key(row: dict) -> tuple:
    """(family, sorted (parameter, value)) from the cell path ``family/k~v/…``; a value that is a
    finite number compares as one (``lr~1e-3`` is ``lr~0.001``)."""
    family, params = cell_params(row["cell"])
    return (family, tuple(sorted((k, _canonical(v)) for k, v in params.items())))


def _canonical(value: str):
    x = number(value)
    return x if x is not None and math.isfinite(x) else value


def thresholds(overrides: dict | None = None) -> dict[str, tuple[int, float | None]]:
    """THRESHOLDS with ``{metric: relative threshold}`` overrides; a metric not in THRESHOLDS
    needs ``{metric: [direction, threshold]}`` (direction -1 lower is better, +1 higher). A
    threshold is a finite number >= 0, or null (diffed, never flagged)."""
    out = dict(THRESHOLDS)
    for metric, value in (overrides or {}).items():
        if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] in (-1, 1) \
                and not isinstance(value[0], bool):
            out[metric] = (int(value[0]), _limit(metric, value[1]))
        elif value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
            if metric not in out:
                raise CompareError(f"compare threshold {metric!r}: a new metric needs "
                                   "[direction, threshold] (direction -1 lower is better, +1 higher)")
            out[metric] = (out[metric][0], _limit(metric, value))
        else:
            raise CompareError(f"compare threshold {metric!r}: expected a number, null or "
                               f"[direction, threshold], got {value!r}")
    return out


def _limit(metric: str, value) -> float | None:
    """A relative threshold: None, or a finite number >= 0 (a NaN would silence its check)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise CompareError(f"compare threshold {metric!r}: must be a finite number >= 0 or null, "
                           f"got {value!r}")
    return float(value)


def compare(rows_a: list[dict], rows_b: list[dict], limits: dict | None = None
            ) -> tuple[list[dict], list[dict]]:
    """(diff rows, unmatched rows)."""
    limits = limits or thresholds()
    a_by, b_by = _index(rows_a, "A"), _index(rows_b, "B")
    diff, unmatched = [], []
    for key in sorted(set(a_by) | set(b_by), key=str):
        a, b = a_by.get(key), b_by.get(key)
        if a is None or b is None:
            only = a or b
            unmatched.append({"only_in": "A" if b is None else "B", "family": only["family"],
                              "cell": only["cell"], "status": only.get("status"),
                              "regression": True})  # a lost (or unexpected) result
            continue
        metrics = [m for m in dict.fromkeys(list(a) + list(b)) if m not in NOT_METRICS
                   and m not in {k for k, _ in key[1]}]
        diff.append(_status_row(a, b))
        for m in metrics:
            diff.append(_metric_row(a, b, m, limits))
    return diff, unmatched


def _index(rows: list[dict], name: str) -> dict:
    out = {}
    for row in rows:
        key = cell_key(row)
        if key in out:
            raise CompareError(f"run {name}: cells {out[key]['cell']} and {row['cell']} have the "
                               "same parameters")
        out[key] = row
    return out


STATUS_RANK = {"ok": 0, "diverged": 1}  # every other status (failed, timeout, corrupt…) ranks 2


def _status_row(a: dict, b: dict) -> dict:
    """Any step down ok → diverged → not completed is a regression (diverged → failed too)."""
    rank = lambda row: STATUS_RANK.get(row.get("status"), 2)  # noqa: E731
    return {"cell_a": a["cell"], "cell_b": b["cell"], "metric": "status", "a": a.get("status"),
            "b": b.get("status"), "delta": None, "rel_change": None,
            "threshold": "no worse (ok > diverged > other)", "regression": rank(b) > rank(a)}


def _metric_row(a: dict, b: dict, metric: str, limits: dict) -> dict:
    va, vb = a.get(metric, ""), b.get(metric, "")
    row = {"cell_a": a["cell"], "cell_b": b["cell"], "metric": metric, "a": va, "b": vb,
           "delta": None, "rel_change": None, "threshold": None, "regression": False}
    if metric not in b and va not in ("", None):  # B's table has no such column at all
        row.update(b=None, threshold="column kept", regression=True)
        return row
    if metric in FLAGS:
        good = FLAGS[metric]
        if good is not None:
            row["threshold"] = f"stays {good}"
            row["regression"] = va == good and vb not in ("", good)
        return row
    xa, xb = number(va), number(vb)
    if xa is not None and metric in b and vb in ("", None) and b.get("status") in ("ok", "") \
            and limits.get(metric, (0, None))[1] is not None:  # lost although B says "ok"
        row.update(threshold="value kept", regression=True)
        return row
    if xa is None or xb is None:
        return row
    row["delta"] = xb - xa
    row["rel_change"] = (xb - xa) / abs(xa) if xa != 0 else (0.0 if xb == xa else math.copysign(math.inf, xb - xa))
    direction, limit = limits.get(metric, (0, None))
    if limit is not None and direction:
        row["threshold"] = f"{'+' if direction < 0 else '-'}{limit:g} relative"
        worse = -direction * row["rel_change"]  # > 0 when the change is in the bad direction
        row["regression"] = bool(worse > limit) or (math.isnan(xb) and not math.isnan(xa))
    return row


def table_rows(tables_dir: Path, run: str) -> dict[str, int]:
    """Data rows of every CSV table of a run (beside its cells.csv)."""
    return {path.name: len(read_table(path, f"table of run {run}", CompareError))
            for path in sorted(tables_dir.glob("*.csv"))}


def lost_tables(rows_a: dict[str, int], rows_b: dict[str, int]) -> list[dict]:
    """Tables of A that B lacks or that lost rows in B: regressions (results went missing)."""
    return [{"table": name, "rows_a": n, "rows_b": rows_b.get(name, "absent"),
             "regression": rows_b.get(name, -1) < n} for name, n in rows_a.items()]


def summary_text(path_a, path_b, rows_a, rows_b, diff, unmatched, tables=()) -> str:
    matched = len({r["cell_a"] for r in diff})
    regressions = [r for r in diff if r["regression"]]
    shrunk = [t for t in tables if t["regression"]]
    total = len(regressions) + len(unmatched) + len(shrunk)
    lines = [f"compare A = {path_a}", f"        B = {path_b}",
             f"{matched} cells matched by parameters; {len(rows_a)} in A, {len(rows_b)} in B; "
             f"{sum(u['only_in'] == 'A' for u in unmatched)} only in A, "
             f"{sum(u['only_in'] == 'B' for u in unmatched)} only in B",
             f"{total} regression(s)" + (":" if total else ".")]
    for r in regressions:
        rel = f" ({r['rel_change']:+.2%})" if isinstance(r["rel_change"], float) and math.isfinite(r["rel_change"]) else ""
        cell = r["cell_b"] if r["cell_a"] == r["cell_b"] else f"{r['cell_a']} ↔ {r['cell_b']}"
        after = "(no such column in B)" if r["threshold"] == "column kept" else r["b"]
        lines.append(f"  {cell}: {r['metric']} {r['a']} → {after}{rel}")
    for u in unmatched:
        lines.append(f"  only in {u['only_in']}: {u['cell']} (status {u['status']})")
    for t in shrunk:
        lines.append(f"  table {t['table']}: {t['rows_a']} rows in A, {t['rows_b']} in B")
    return "\n".join(lines) + "\n"


def run_compare(path_a, path_b, out, limits: dict | None = None) -> tuple[list[dict], str]:
    file_a, rows_a = read_cells(path_a)
    file_b, rows_b = read_cells(path_b)
    diff, unmatched = compare(rows_a, rows_b, limits)
    tables = lost_tables(table_rows(file_a.parent, "A"), table_rows(file_b.parent, "B"))
    out = Path(out)
    write_csv(out / "diff.csv", diff)
    write_csv(out / "unmatched.csv", unmatched, columns=UNMATCHED_COLUMNS)
    write_csv(out / "tables.csv", tables)
    text = summary_text(file_a, file_b, rows_a, rows_b, diff, unmatched, tables)
    write_text(out / "summary.txt", text)
    return [r for r in diff if r["regression"]] + unmatched + \
        [t for t in tables if t["regression"]], text


def load_limits(path) -> dict:
    if path is None:
        return thresholds()
    from ttt.base.files import read_yaml
    raw = read_yaml(path, "thresholds file", CompareError) or {}
    if not isinstance(raw, dict):
        raise CompareError(f"{path}: expected a mapping metric: threshold")
    return thresholds(raw)


def compare_command(args) -> int:
    """Exit 0 (1 with --strict when a regression is flagged), 2 for missing/malformed input."""
    import sys
    try:
        regressions, text = run_compare(args.a, args.b, args.out, load_limits(args.thresholds))
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    return 1 if regressions and args.strict else 0
