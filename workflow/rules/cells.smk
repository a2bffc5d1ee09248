# One driver per cell: writes the cell config, submits it through submitit, waits (bounded) and
# records how it ended in status.json. Drivers run where Snakemake runs (local rules).

wildcard_constraints:
    cell=".+",


rule cell_config:
    output:
        "results/cells/{cell}/cell.yaml",
    params:
        cfg=lambda w: cell_yaml(w.cell),
    localrule: True
    run:
        with open(output[0], "w") as f:
            f.write(params.cfg)


rule run_cell:
    input:
        cfg="results/cells/{cell}/cell.yaml",
        data=lambda w: f"results/prepare/{dataset_id(w.cell)}/prepared.json",
    output:
        status="results/cells/{cell}/status.json",
        cell=directory("results/cells/{cell}/cell"),
    log:
        "results/cells/{cell}/run_cell.log",
    params:
        launcher=config["launcher"],
        jobs="results/cells/{cell}/jobs",
    conda:
        "../../envs/ttt.yaml"
    localrule: True
    shell:
        "python -m ttt submit --config {input.cfg} --out {output.cell} --status {output.status}"
        " --launcher {params.launcher} --log-dir {params.jobs} > {log} 2>&1"
