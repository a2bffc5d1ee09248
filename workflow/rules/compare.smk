# Run-to-run comparison: `--config compare_with=PATH` diffs this run's cells against an earlier
# results folder, matched by parameters (results/compare/diff.csv, unmatched.csv, summary.txt).

from ttt.report.compare import CompareError, thresholds as compare_thresholds  # noqa: E402

COMPARE_TARGETS = ["results/compare/summary.txt"] if config.get("compare_with") else []
try:  # a threshold compare would refuse (< 0, not a number; NaN: preflight) stops the run up front
    compare_thresholds(config.get("compare_thresholds") or {})
except CompareError as exc:
    stop(f"config compare_thresholds: {exc}")


rule compare_config:
    output:
        "results/compare/thresholds.yaml",
    log:
        "results/compare/compare_config.log",
    localrule: True
    conda:
        "../envs/ttt.yaml"
    params:
        thresholds=as_yaml(config.get("compare_thresholds") or {}),
    shell:
        "printf '%s' {params.thresholds:q} > {output} 2> {log}"


rule compare:
    input:
        cells="results/tables/cells.csv",
        thresholds="results/compare/thresholds.yaml",
    output:
        diff="results/compare/diff.csv",
        unmatched="results/compare/unmatched.csv",
        summary=report("results/compare/summary.txt", category="Comparison"),
    log:
        "results/compare/compare.log",
    localrule: True
    conda:
        "../envs/ttt.yaml"
    params:
        other=config.get("compare_with") or "",
    shell:
        "python -m ttt compare {params.other:q} results --out results/compare"
        " --thresholds {input.thresholds} > {log} 2>&1"
