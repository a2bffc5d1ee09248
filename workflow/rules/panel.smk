# Listening panel (seed 000 item 11): a blind A/B page from one family's paired generate cells,
# TTT on vs its off twin. Raters send their ratings back by hand; once
# results/listening/<name>/ratings/ holds files, `snakemake` tables them (the same as
# `python -m ttt panel collect`) and `snakemake --report` shows the tables and the plot.
import glob
import os

PANEL_CELLS = panel_cells()
PANEL_DIR = f"results/listening/{config['panel']['name']}" if PANEL_CELLS else None
PANEL_RATINGS = sorted(glob.glob(f"{PANEL_DIR}/ratings/*.json")) if PANEL_CELLS else []
PANEL_TARGETS = ([f"{PANEL_DIR}/index.html"] if PANEL_CELLS else []) + (
    ["results/tables/mos.csv"] if PANEL_RATINGS else []
)


if PANEL_CELLS:

    rule panel_page:
        input:
            [f"results/cells/{c}/status.json" for c in PANEL_CELLS.values()],
            [f"results/cells/{c}/asr" for c in PANEL_CELLS.values()],  # heard text, results side
        output:
            page=f"{PANEL_DIR}/index.html",
            key=f"{PANEL_DIR}/key.json",
            clips=directory(f"{PANEL_DIR}/clips"),
            bundle=f"{PANEL_DIR}/{config['panel']['name']}-raters.zip",
        log:
            f"{PANEL_DIR}/build.log",
        localrule: True
        conda:
            "../envs/ttt.yaml"
        params:
            name=config["panel"]["name"],
            systems=" ".join(f"--system {s}=results/cells/{c}/cell" for s, c in PANEL_CELLS.items()),
            offsets=" ".join(cell_value(float(o)) for o in config["panel"]["offsets_s"]),
            clip=config["panel"]["clip_s"],
            seed=config["panel"]["seed"],
            raters=" ".join(f"--rater {r}" for r in config["panel"]["raters"]),
            out=lambda w, output: os.path.dirname(output.page),
        shell:
            "python -m ttt panel build --name {params.name} {params.systems} --offsets {params.offsets}"
            " --clip {params.clip} --seed {params.seed} {params.raters} --out {params.out} > {log} 2>&1"


if PANEL_RATINGS:

    rule panel_collect:
        input:
            key=f"{PANEL_DIR}/key.json",
            ratings=PANEL_RATINGS,
        output:
            mos=report("results/tables/mos.csv", category="Listening panel"),
            preference=report("results/tables/preference.csv", category="Listening panel"),
            plot=report("results/plots/mos.png", category="Listening panel"),
        log:
            "results/tables/panel_collect.log",
        localrule: True
        conda:
            "../envs/ttt.yaml"
        shell:
            "python -m ttt panel collect {input.ratings} --key {input.key} --out {output.mos}"
            " --preference {output.preference} --plot {output.plot} > {log} 2>&1"
