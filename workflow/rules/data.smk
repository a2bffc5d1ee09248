# Data preparation: Mimi tokenisation once per input set, shared by every cell reading it.


rule prepare_config:
    output:
        "results/prepare/{dataset}/prepare.yaml",
    localrule: True
    run:
        import yaml

        c = MATRIX[DATASETS[wildcards.dataset]]
        spec = {"cell": f"prepare-{wildcards.dataset}", **{k: c[k] for k in FAMILY_KEYS}, "data": c["data"]}
        with open(output[0], "w") as f:
            yaml.safe_dump(spec, f)


rule prepare:
    input:
        "results/prepare/{dataset}/prepare.yaml",
    output:
        "results/prepare/{dataset}/prepared.json",
    log:
        "results/prepare/{dataset}/prepare.log",
    conda:
        "../../envs/ttt.yaml"
    localrule: True
    shell:
        "python -m ttt prepare --config {input} --out {output} > {log} 2>&1"
