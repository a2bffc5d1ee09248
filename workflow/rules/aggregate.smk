# Tables and plots over exactly the cells of this matrix (cell folders of an earlier or wider
# matrix left under results/cells are listed in orphans.csv, never tabled).
# One table per family; the calibration family's table is the calibration rule's (verdicts.smk).
TABLE_FAMILIES = [f for f in config["families"] if f != "calibration"]


# The matrix's cell paths, one a line: a param, so a changed matrix rewrites it and reruns the
# aggregation (and only then).
rule matrix_cells:
    output:
        "results/tables/matrix.txt",
    log:
        "results/tables/matrix_cells.log",
    localrule: True
    conda:
        "../envs/ttt.yaml"
    params:
        cells="".join(f"{cell}\n" for cell in MATRIX),
    shell:
        "printf '%s' {params.cells:q} > {output} 2> {log}"


rule aggregate:
    input:
        expand("results/cells/{cell}/status.json", cell=list(MATRIX)),
        ASR_TARGETS,
        matrix="results/tables/matrix.txt",
    output:
        cells=report("results/tables/cells.csv", category="Tables"),
        families=[report(f"results/tables/{f}.csv", category="Tables") for f in TABLE_FAMILIES],
        orphans="results/tables/orphans.csv",
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
        " --matrix {input.matrix} --families {params.families} > {log} 2>&1"
