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
