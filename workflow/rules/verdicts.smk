# Test-plan verdicts (seed 000 §1) over the whole matrix, the report's front page, and the CI gate
# (`--config strict=true`): it fails after verdicts.csv is written, so the table is always there.
import os

# A fixed path (workflow.source_path gives a per-run temporary copy: as a param it reran the
# verdicts at every invocation).
REPORT_INTRO = os.path.join(workflow.basedir, "report", "workflow.rst")
# The report's front page: the verdict summary once the verdicts rule has written it.
REPORT_TEXT = (
    os.path.abspath("results/tables/verdicts.rst")
    if os.path.exists("results/tables/verdicts.rst")
    else REPORT_INTRO
)
STRICT = str(config.get("strict")).lower() == "true"  # `--config strict=true` gives a string
VERDICT_TARGETS = ["results/tables/verdicts.csv"] + (
    ["results/tables/verdicts.strict"] if STRICT else []
)
# The calibration scenarios' verdicts against the known right ones; the run fails (after the
# table is written) when one disagrees.
CALIBRATION_TARGETS = (
    ["results/tables/calibration.csv", "results/tables/calibration.ok"]
    if "calibration" in config["families"]
    else []
)


rule verdicts_config:
    output:
        "results/tables/verdicts.yaml",
    log:
        "results/tables/verdicts_config.log",
    localrule: True
    conda:
        "../envs/ttt.yaml"
    params:
        verdicts=as_yaml(config.get("verdicts") or {}),
    shell:
        "printf '%s' {params.verdicts:q} > {output} 2> {log}"


rule verdicts:
    input:
        cells="results/tables/cells.csv",
        matrix="results/tables/matrix.txt",  # read beside cells.csv: every matrix cell judged
        thresholds="results/tables/verdicts.yaml",
    output:
        verdicts=report("results/tables/verdicts.csv", category="Verdicts"),
        checks=report("results/tables/verdicts_cells.csv", category="Verdicts"),
        effects=report("results/tables/effects.csv", category="Verdicts"),
        usefulness=report("results/tables/usefulness.csv", category="Verdicts"),
        rst="results/tables/verdicts.rst",
    log:
        "results/tables/verdicts.log",
    localrule: True
    conda:
        "../envs/ttt.yaml"
    params:
        intro=REPORT_INTRO,
    shell:
        "python -m ttt verdicts --results results --thresholds {input.thresholds}"
        " --rst {output.rst} --rst-intro {params.intro} > {log} 2>&1"


rule strict_verdicts:
    input:
        verdicts="results/tables/verdicts.csv",
        thresholds="results/tables/verdicts.yaml",
    output:
        "results/tables/verdicts.strict",
    log:
        "results/tables/strict_verdicts.log",
    localrule: True
    conda:
        "../envs/ttt.yaml"
    shell:
        "python -m ttt verdicts --results results --thresholds {input.thresholds}"
        " --tables results/tables/.strict --strict > {log} 2>&1 && touch {output}"


rule calibration:
    input:
        checks="results/tables/verdicts_cells.csv",
    output:
        report("results/tables/calibration.csv", category="Verdicts"),
    log:
        "results/tables/calibration.log",
    localrule: True
    conda:
        "../envs/ttt.yaml"
    shell:
        "python -m ttt calibration --results results --out {output} > {log} 2>&1"


rule calibration_check:
    input:
        "results/tables/calibration.csv",
    output:
        "results/tables/calibration.ok",
    log:
        "results/tables/calibration_check.log",
    localrule: True
    conda:
        "../envs/ttt.yaml"
    shell:
        "python -m ttt calibration --results results --out results/tables/.calibration.csv"
        " --check > {log} 2>&1 && touch {output}"
