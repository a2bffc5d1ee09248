"""``python -m ttt verdicts``: exit 0 when the tables are written, 1 with ``--strict`` when a gate
failed, said "hurts" or "no effect", 2 on bad input (docs/verdicts.md)."""
from __future__ import annotations

import sys
from pathlib import Path

from ttt.report.verdicts.registry import FAILING
from ttt.report.verdicts.render import summary_line, write_verdicts
from ttt.report.verdicts.thresholds import load_thresholds


def verdicts_command(args) -> int:
    """Write the verdict tables; exit 1 with --strict when a gate fails, 2 on bad input."""
    try:
        cfg = load_thresholds(args.thresholds)
        summary = write_verdicts(args.results, args.tables or Path(args.results) / "tables", cfg,
                                 args.rst, args.rst_intro)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary_line(summary))
    for r in summary:
        if r["verdict"] in FAILING:
            print(f"  {r['verdict'].upper()} {r['signal']}: {r['explanation']}")
    failed = any(r["verdict"] in FAILING for r in summary)  # no effect is no pass
    if failed and args.strict:
        print("strict: a gate failed", file=sys.stderr)
        return 1
    return 0
