# TTT validation matrix for Moshi. Embedded default: `snakemake -c2 --profile profiles/local`
# (what `make run` does); a cluster: `snakemake --profile slurm` (see README).
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/cells.smk"
include: "workflow/rules/asr.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/panel.smk"
include: "workflow/rules/verdicts.smk"
include: "workflow/rules/compare.smk"


report: REPORT_TEXT


rule all:
    input:
        "results/tables/cells.csv",
        expand("results/tables/{family}.csv", family=config["families"]),
        expand("results/plots/{plot}.png", plot=PLOTS),
        PANEL_TARGETS,
        VERDICT_TARGETS,
        COMPARE_TARGETS,
        "results/tables/cells.complete",


# The run's exit status, decided last: with keep-going every other cell runs and every table is
# written, then this fails (non-zero exit) when any cell failed or timed out.
rule cells_complete:
    input:
        cells="results/tables/cells.csv",
        after=[f"results/tables/{f}.csv" for f in config["families"]] + PANEL_TARGETS
        + VERDICT_TARGETS + COMPARE_TARGETS,
    output:
        "results/tables/cells.complete",
    localrule: True
    run:
        import csv

        with open(input.cells) as f:
            rows = list(csv.DictReader(f))
        bad = [r["cell"] for r in rows if r["status"] not in ("ok", "diverged")]
        if bad:
            raise ValueError(f"{len(bad)} of {len(rows)} cell(s) failed or timed out (every table "
                             f"is written; why: results/tables/cells.csv 'error'): {', '.join(bad)}")
        with open(output[0], "w") as f:
            f.write(f"{len(rows)} cells ok or diverged\n")
