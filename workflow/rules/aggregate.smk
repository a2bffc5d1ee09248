# Tables and plots over every cell of the matrix.
# One table per family; the calibration family's table is the calibration rule's (verdicts.smk).
TABLE_FAMILIES = [f for f in config["families"] if f != "calibration"]


rule aggregate:
    input:
        expand("results/cells/{cell}/status.json", cell=list(MATRIX)),
        ASR_TARGETS,
    output:
        cells=report("results/tables/cells.csv", category="Tables"),
        families=[report(f"results/tables/{f}.csv", category="Tables") for f in TABLE_FAMILIES],
        plots=[report(f"results/plots/{p}.png", category="Plots") for p in PLOTS],
    log:
        "results/tables/aggregate.log",
    localrule: True
    conda:
        "../envs/ttt.yaml"
    params:
        families=" ".join(TABLE_FAMILIES),
    shell:
        "python -m ttt aggregate --cells results/cells --tables results/tables --plots results/plots"
        " --families {params.families} > {log} 2>&1"
