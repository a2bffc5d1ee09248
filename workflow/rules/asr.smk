# What Moshi said, heard by a real recogniser: one job per generate cell, after the cell (its own
# job: it neither inflates the cell's ms/step nor holds the cell's GPU job). Recogniser outputs are
# cached by the audio's sha256 + model + settings under <cache_dir>/asr/.

ASR_CELLS = [c for c, spec in MATRIX.items() if spec["mode"] in ("generate", "playback")]
ASR_TARGETS = [f"results/cells/{c}/asr" for c in ASR_CELLS]


rule asr_config:
    output:
        "results/asr/asr.yaml",
    log:
        "results/asr/asr_config.log",
    localrule: True
    conda:
        "../envs/ttt.yaml"
    params:
        asr=as_yaml(config.get("asr") or {}),
    shell:
        "printf '%s' {params.asr:q} > {output} 2> {log}"


rule asr:
    input:
        status="results/cells/{cell}/status.json",
        cfg="results/asr/asr.yaml",
    output:
        directory("results/cells/{cell}/asr"),
    log:
        "results/cells/{cell}/asr.log",
    conda:
        "../envs/ttt.yaml"
    threads: 1
    params:
        cell="results/cells/{cell}/cell",
        cache=f"{config['cache_dir']}/asr",
        launcher=config["launcher"],
    shell:
        "python -m ttt asr --cell {params.cell} --out {output} --config {input.cfg}"
        " --cache {params.cache} --threads {threads} --launcher {params.launcher} > {log} 2>&1"
