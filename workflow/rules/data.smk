# Data preparation: Mimi tokenisation once per input set, shared by every cell reading it.


def prepare_yaml(dataset):
    import yaml

    c = MATRIX[DATASETS[dataset]]
    return yaml.safe_dump({"cell": f"prepare-{dataset}", **{k: c[k] for k in FAMILY_KEYS},
                           "model_digest": c["model_digest"], "data": c["data"]})


rule prepare_config:
    output:
        "results/prepare/{dataset}/prepare.yaml",
    params:
        spec=lambda w: prepare_yaml(w.dataset),
    localrule: True
    run:
        with open(output[0], "w") as f:
            f.write(params.spec)


def _built_manifest(w):
    """A family reading a speech set this workflow builds (results/data/speech/...) waits for it."""
    manifest = MATRIX[DATASETS[w.dataset]]["data"].get("manifest")
    return [manifest] if manifest and preflight.speech_set_of(manifest) else []


rule prepare:
    input:
        "results/prepare/{dataset}/prepare.yaml",
        _built_manifest,
    output:
        "results/prepare/{dataset}/prepared.json",
    log:
        "results/prepare/{dataset}/prepare.log",
    conda:
        "../../envs/ttt.yaml"
    localrule: True
    shell:
        "python -m ttt prepare --config {input} --out {output} > {log} 2>&1"



# Synthesised two-speaker conversations (README "Speech data"): one manifest per set named under
# `speech:` in the config; `snakemake speech_all` builds them all. Sentences are cached by (voice,
# text) in CACHE_DIR/speech, so sets and reruns share them. Needs Debian festival (no downloads).
SPEECH_SETS = config.get("speech") or {}


def _speech_args(w):
    s = SPEECH_SETS[w.speech_set]
    return (f"--count {int(s['count'])} --duration {float(s['duration_s'])} --seed {int(s.get('seed', 0))}"
            f" --recur-after {float(s.get('recur_after_s', 10.0))}"
            f" --recur-fraction {float(s.get('recur_fraction', 0.5))}"
            f" --text-part {s.get('text_part', 'all')}"
            f" --unit {s.get('unit', 'sentence')} --vocabulary-size {int(s.get('vocabulary_size', 600))}"
            + (" --recurrence" if s.get("recurrence", False) else ""))


rule speech:
    output:
        "results/data/speech/{speech_set}/manifest.jsonl",
    params:
        args=_speech_args,
        cache=lambda w: f"{config['cache_dir']}/speech",
    log:
        "results/data/speech/{speech_set}.log",
    localrule: True
    shell:
        "python -m ttt speech --out results/data/speech/{wildcards.speech_set} {params.args}"
        " --cache {params.cache} > {log} 2>&1"


rule speech_all:
    input:
        expand("results/data/speech/{speech_set}/manifest.jsonl", speech_set=list(SPEECH_SETS)),
    localrule: True
