# Run-to-run comparison: `--config compare_with=PATH` diffs this run's cells against an earlier
# results folder, matched by parameters (results/compare/diff.csv, unmatched.csv, summary.txt).

COMPARE_TARGETS = ["results/compare/summary.txt"] if config.get("compare_with") else []


rule compare_config:
    output:
        "results/compare/thresholds.yaml",
    params:
        thresholds=config.get("compare_thresholds") or {},
    localrule: True
    run:
        import yaml

        with open(output[0], "w") as f:
            yaml.safe_dump(params.thresholds, f, sort_keys=False)


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
    params:
        other=config.get("compare_with") or "",
    conda:
        "../../envs/ttt.yaml"
    localrule: True
    shell:
        "python -m ttt compare {params.other:q} results --out results/compare"
        " --thresholds {input.thresholds} > {log} 2>&1"
