# One driver per cell: writes the cell config, submits it through submitit, waits (bounded) and
# records how it ended in status.json. Drivers run where Snakemake runs (local rules).


wildcard_constraints:
    cell=".+",


rule cell_config:
    output:
        "results/cells/{cell}/cell.yaml",
    log:
        "results/cells/{cell}/cell_config.log",
    localrule: True
    conda:
        "../envs/ttt.yaml"
    params:
        cfg=lambda w: cell_yaml(w.cell),
    shell:
        "printf '%s' {params.cfg:q} > {output} 2> {log}"


rule run_cell:
    input:
        cfg="results/cells/{cell}/cell.yaml",
        data=lambda w: f"results/prepare/{dataset_id(w.cell)}/prepared.json",
    output:
        status="results/cells/{cell}/status.json",
        cell=directory("results/cells/{cell}/cell"),
    log:
        "results/cells/{cell}/run_cell.log",
    localrule: True
    conda:
        "../envs/ttt.yaml"
    params:
        launcher=config["launcher"],
        jobs="results/cells/{cell}/jobs",
    shell:
        "python -m ttt submit --config {input.cfg} --out {output.cell} --status {output.status}"
        " --launcher {params.launcher} --log-dir {params.jobs} > {log} 2>&1"
