"""The workflow's exit status (rule cells_complete): fails, naming them, when any cell failed or
timed out; a diverged cell is a result. Runs last, so every table is already written."""
import csv
import sys


def check(cells_csv: str, out: str, log: str) -> None:
    with open(cells_csv) as f:
        rows = list(csv.DictReader(f))
    bad = [r["cell"] for r in rows if r["status"] not in ("ok", "diverged")]
    if bad:
        message = (f"{len(bad)} of {len(rows)} cell(s) failed or timed out (every table is "
                   f"written; why: results/tables/cells.csv 'error'): {', '.join(bad)}")
    else:
        message = f"{len(rows)} cells ok or diverged"
    with open(log, "w") as f:
        f.write(message + "\n")
    if bad:
        sys.exit(message)
    with open(out, "w") as f:
        f.write(message + "\n")


check(snakemake.input.cells, snakemake.output[0], snakemake.log[0])  # noqa: F821 (set by Snakemake)
