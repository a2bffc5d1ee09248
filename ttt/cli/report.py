"""The commands over a results folder: ``ttt aggregate``, ``ttt verdicts``, ``ttt compare`` (the
last two live in :mod:`ttt.report`, imported when they run)."""
from __future__ import annotations

import argparse

from ttt.cli.common import command, example


def aggregate_command(args: argparse.Namespace) -> int:
    """Exit 0 when the tables are written (failed and corrupt cells are rows), 2 on bad input."""
    import sys

    from ttt.report.aggregate import aggregate
    try:
        rows = aggregate(args.cells, args.tables, args.plots, args.families, args.matrix)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = [r["cell"] for r in rows if r.get("status") not in ("ok", "diverged")]
    print(f"{len(rows)} cells → {args.tables}/cells.csv" + (f"; not ok: {failed}" if failed else ""))
    for row in rows:
        if row.get("status") == "corrupt":
            print(f"  corrupt: {row['cell']}: {row.get('error')}")
    return 0


def calibration_command(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from ttt.launch.calibration import write_calibration
    out = args.out or Path(args.results) / "tables" / "calibration.csv"
    try:
        rows = write_calibration(args.results, out)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wrong = [r for r in rows if not r["agree"]]
    print(f"calibration: {len(rows) - len(wrong)} of {len(rows)} verdicts as expected → {out}")
    for r in wrong:
        print(f"  DISAGREES {r['scenario']} {r['signal']}: expected {r['expected']}, got "
              f"{r['verdict']}: {r['explanation']}")
    return 1 if wrong and args.check else 0


def add_parsers(sub) -> None:
    a = sub.add_parser(
        "aggregate", help="tables and plots over results/cells",
        description="Read the matrix's cells under --cells (see --matrix) and write "
                    "results/tables/cells.csv, one CSV per family and the plots (docs/user-guide.md, "
                    "Tables). Exit code 0; a cell whose files are unreadable is a status: corrupt "
                    "row naming the file.",
        epilog=example("python -m ttt aggregate --cells results/cells --tables results/tables "
                       "--plots results/plots"))
    a.add_argument("--cells", default="results/cells", help="cell folders (default results/cells)")
    a.add_argument("--tables", default="results/tables", help="where the CSVs go")
    a.add_argument("--plots", default="results/plots", help="where the PNGs go")
    a.add_argument("--families", nargs="*", default=[], help="families run (their tables and plots)")
    a.add_argument("--matrix", default=None,
                   help="the matrix's cell paths, one a line (default: TABLES/matrix.txt, which "
                        "the workflow writes): only these are tabled, other cell folders are "
                        "listed in TABLES/orphans.csv")
    a.set_defaults(func=aggregate_command)
    v = sub.add_parser(
        "verdicts", help="test-plan gates over a results folder → tables/verdicts.csv",
        description="Evaluate the success signals (stability, correctness, responsiveness, "
                    "observability, cost) over RESULTS/tables/cells.csv and the cell folders; write "
                    "verdicts.csv (one row per signal) and verdicts_cells.csv (every check). Exit "
                    "codes: 0 written, 1 with --strict when a gate fails (or says hurts or no effect), 2 bad "
                    "input. How to read it: docs/verdicts.md.",
        epilog=example("python -m ttt verdicts --results results --strict"))
    v.add_argument("--results", default="results", help="results folder (tables/, cells/)")
    v.add_argument("--tables", default=None, help="where to write (default RESULTS/tables)")
    v.add_argument("--thresholds", default=None,
                   help="YAML of gate settings (the config's verdicts: section); default: built-in")
    v.add_argument("--strict", action="store_true", help="exit 1 when any gate fails (CI)")
    v.add_argument("--rst", default=None, help="also write the summary as reStructuredText")
    v.add_argument("--rst-intro", default=None, help="text appended after the --rst summary")
    v.set_defaults(func=command("report.verdicts", "verdicts_command"))
    k = sub.add_parser(
        "calibration", help="the calibration scenarios' verdicts → tables/calibration.csv",
        description="One row per calibration scenario and signal: the verdict its gate gave "
                    "(from RESULTS/tables/verdicts_cells.csv) against the verdict known to be "
                    "right. Exit codes: 0 written, 1 with --check when a row disagrees, 2 bad "
                    "input.",
        epilog=example("python -m ttt calibration --results results --check"))
    k.add_argument("--results", default="results", help="results folder (tables/)")
    k.add_argument("--out", default=None, help="CSV to write (default RESULTS/tables/calibration.csv)")
    k.add_argument("--check", action="store_true", help="exit 1 when any row disagrees")
    k.set_defaults(func=calibration_command)
    c = sub.add_parser(
        "compare", help="diff two runs' tables cell by cell (matched by parameters)",
        description="Match the cells of two runs by their parameters and write OUT/diff.csv (every "
                    "metric, regressions flagged), OUT/unmatched.csv and OUT/summary.txt. Exit "
                    "codes: 0 written, 1 with --strict when a regression is flagged, 2 bad input.",
        epilog=example("python -m ttt compare OLD/results results --out results/compare"))
    c.add_argument("a", metavar="RESULTS_A", help="earlier run: results folder or its cells.csv")
    c.add_argument("b", metavar="RESULTS_B", help="later run: results folder or its cells.csv")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--thresholds", default=None,
                   help="YAML metric: relative threshold (the config's compare: section)")
    c.add_argument("--strict", action="store_true", help="exit 1 when a regression is flagged")
    c.set_defaults(func=command("report.compare", "compare_command"))
