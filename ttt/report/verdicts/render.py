"""The verdicts as files and text: ``verdicts.csv`` (one row per signal), ``verdicts_cells.csv``
(every check), the one-line summary, and the reStructuredText that opens the Snakemake report."""
from __future__ import annotations

import os
from pathlib import Path

from ttt.base.files import write_text
from ttt.report.tables import write_csv
from ttt.report.verdicts.registry import NO_EFFECT, REGISTRY


def write_verdicts(results: str | os.PathLike, tables: str | os.PathLike, cfg: dict | None = None,
                   rst: str | os.PathLike | None = None, rst_intro: str | os.PathLike | None = None
                   ) -> list[dict]:
    summary, checks = REGISTRY.evaluate(results, cfg)
    tables = Path(tables)
    tables.mkdir(parents=True, exist_ok=True)
    write_csv(tables / "verdicts.csv", summary)
    write_csv(tables / "verdicts_cells.csv", [
        {**{k: v for k, v in c.items() if k != "no_effect"},
         "passed": NO_EFFECT if c["no_effect"] else {True: "pass", False: "fail", None: "n/a"}[c["passed"]]}
        for c in checks])
    if rst is not None:
        intro = Path(rst_intro).read_text() if rst_intro else ""
        write_text(rst, summary_rst(summary) + "\n" + intro)
    return summary


def summary_line(summary: list[dict]) -> str:
    counts = {v: sum(r["verdict"] == v for r in summary) for v in ("pass", "fail", NO_EFFECT, "n/a")}
    failed = [r["signal"] for r in summary if r["verdict"] == "fail"]
    inert = [r["signal"] for r in summary if r["verdict"] == NO_EFFECT]
    return (f"verdicts: {counts['pass']} pass, {counts['fail']} fail, {counts[NO_EFFECT]} no effect,"
            f" {counts['n/a']} n/a" + (f" (failed: {', '.join(failed)})" if failed else "")
            + (f" (no effect: {', '.join(inert)})" if inert else ""))


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
