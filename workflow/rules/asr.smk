# What Moshi said, heard by a real recogniser: one job per generate cell, after the cell (its own
# job: it neither inflates the cell's ms/step nor holds the cell's GPU job). Recogniser outputs are
# cached by the audio's sha256 + model + settings under <cache_dir>/asr/.

ASR_CELLS = [c for c, spec in MATRIX.items() if spec["mode"] == "generate"]
ASR_TARGETS = [f"results/cells/{c}/asr" for c in ASR_CELLS]


rule asr_config:
    output:
        "results/asr/asr.yaml",
    params:
        asr=config.get("asr") or {},
    localrule: True
    run:
        import yaml

        with open(output[0], "w") as f:
            yaml.safe_dump(params.asr, f, sort_keys=False)


rule asr:
    input:
        status="results/cells/{cell}/status.json",
        cfg="results/asr/asr.yaml",
    output:
        directory("results/cells/{cell}/asr"),
    log:
        "results/cells/{cell}/asr.log",
    params:
        cell="results/cells/{cell}/cell",
        cache=f"{config['cache_dir']}/asr",
        launcher=config["launcher"],
    threads: 1
    conda:
        "../../envs/ttt.yaml"
    shell:
        "python -m ttt asr --cell {params.cell} --out {output} --config {input.cfg}"
        " --cache {params.cache} --threads {threads} --launcher {params.launcher} > {log} 2>&1"
