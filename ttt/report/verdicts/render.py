"""The verdicts as files and text: ``verdicts.csv`` (one row per signal), ``verdicts_cells.csv``
(every check), the one-line summary, and the reStructuredText that opens the Snakemake report."""
from __future__ import annotations

import os
from pathlib import Path

from ttt.base.files import write_text
from ttt.report.tables import write_csv
from ttt.report.verdicts.gates_usefulness import effect_rows, plot_usefulness, usefulness_rows
from ttt.report.verdicts.thresholds import thresholds
from ttt.report.verdicts.registry import DIAGNOSTIC, FAILING, REGISTRY, label
from ttt.report.verdicts.loading import load_cells

LABELS = ("pass", "helps", "no significant difference", "hurts", "fail", "no effect", "n/a",
          DIAGNOSTIC)


def write_verdicts(results: str | os.PathLike, tables: str | os.PathLike, cfg: dict | None = None,
                   rst: str | os.PathLike | None = None, rst_intro: str | os.PathLike | None = None
                   ) -> list[dict]:
    summary, checks = REGISTRY.evaluate(results, cfg)
    tables = Path(tables)
    tables.mkdir(parents=True, exist_ok=True)
    write_csv(tables / "verdicts.csv", summary)
    write_csv(tables / "verdicts_cells.csv", [
        {**{k: v for k, v in c.items() if k not in ("no_effect", "answer", "diagnostic")},
         "passed": label(c)} for c in checks])
    cells = load_cells(results)
    by_name = {c.name: c for c in cells}
    g = (cfg or thresholds())["responsiveness"]
    write_csv(tables / "effects.csv", effect_rows(cells, by_name, g))
    rows = usefulness_rows(cells, by_name, None)
    write_csv(tables / "usefulness.csv", rows)
    plot_usefulness(rows, tables.parent / "plots" / "usefulness.png")
    if rst is not None:
        intro = Path(rst_intro).read_text() if rst_intro else ""
        write_text(rst, summary_rst(summary) + "\n" + intro)
    return summary


def summary_line(summary: list[dict]) -> str:
    counts = {v: sum(r["verdict"] == v for r in summary) for v in LABELS}
    failing = {v: [r["signal"] for r in summary if r["verdict"] == v] for v in FAILING}
    return ("verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n or v in
                                     ("pass", "fail", "no effect", "n/a"))
            + "".join(f" ({v}: {', '.join(names)})" for v, names in failing.items() if names))


def summary_rst(summary: list[dict]) -> str:
    """The verdicts as the top of the Snakemake report (reStructuredText; Jinja-safe)."""
    def esc(text) -> str:
        text = "" if text is None else str(text)
        for ch in "\\*`|_":
            text = text.replace(ch, "\\" + ch)
        return text.replace("{", "(").replace("}", ")")

    lines = ["Verdicts", "========", "", esc(summary_line(summary)) + ".", "",
             ".. list-table::", "   :header-rows: 1", "",
             "   * - signal", "     - verdict", "     - value", "     - threshold", "     - explanation"]
    for r in summary:
        value = "" if r["value"] is None else f"{r['value']:.4g}"
        lines += [f"   * - {esc(r['signal'])}", f"     - **{r['verdict'].upper()}**",
                  f"     - {esc(value)}", f"     - {esc(r['threshold'])}", f"     - {esc(r['explanation'])}"]
    return "\n".join(lines) + "\n"
