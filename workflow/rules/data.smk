# Data preparation: Mimi tokenisation once per input set, shared by every cell reading it.


rule prepare_config:
    output:
        "results/prepare/{dataset}/prepare.yaml",
    log:
        "results/prepare/{dataset}/prepare_config.log",
    localrule: True
    conda:
        "../envs/ttt.yaml"
    params:
        spec=lambda w: prepare_yaml(w.dataset),
    shell:
        "printf '%s' {params.spec:q} > {output} 2> {log}"


rule prepare:
    input:
        cfg="results/prepare/{dataset}/prepare.yaml",
        manifest=built_manifest,
    output:
        "results/prepare/{dataset}/prepared.json",
    log:
        "results/prepare/{dataset}/prepare.log",
    localrule: True
    conda:
        "../envs/ttt.yaml"
    shell:
        "python -m ttt prepare --config {input.cfg} --out {output} > {log} 2>&1"


# Synthesised two-speaker conversations (docs/speech-data.md): `snakemake speech_all` builds every
# set under `speech:` in the config. Sentences are cached by (voice, text) in CACHE_DIR/speech, so
# sets and reruns share them. Needs Debian festival besides the environment (no downloads).
rule speech:
    output:
        "results/data/speech/{speech_set}/manifest.jsonl",
    log:
        "results/data/speech/{speech_set}.log",
    localrule: True
    conda:
        "../envs/ttt.yaml"
    params:
        args=speech_args,
        cache=lambda w: f"{config['cache_dir']}/speech",
    shell:
        "python -m ttt speech --out results/data/speech/{wildcards.speech_set} {params.args}"
        " --cache {params.cache} > {log} 2>&1"


rule speech_all:
    input:
        expand("results/data/speech/{speech_set}/manifest.jsonl", speech_set=list(SPEECH_SETS)),
    localrule: True
