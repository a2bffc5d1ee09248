"""The recall probe's table, curve and reading (``gpu/control/run_recall_probe.sh`` writes one
JSON per run: ``<variant>-s<seed>.json``, from ``copy_probe.py --out``).

The reading uses only what is known on random tokens: chance is ln(vocab), nothing can be
predicted below it except by recalling the row, and attention of C frames in L layers cannot
carry a source more than L x C frames back (the reach). At each run's last logged step, on the
lags beyond the reach, a model *copies* when its text copy NLL is ``MARGIN`` nats under chance:
- **invalid** when no-TTT copies there (the reach, or the probe, is wrong), or when any model
  beats chance on the *fresh* control (new tokens in place of the copy: nothing to recall, so a
  model that beats chance there reads something it should not);
- **inconclusive** when full attention (the ceiling) does not copy there;
- **recall** when TTT copies there in every seed and its TTT-off twin does not;
- **no recall** otherwise.

Two probes of the same recipe (another machine, say) are compared with ``--against OTHER_DIR``:
per variant, the seed mean of the text copy NLL beyond the reach at the last step both reached,
in each probe; they **agree** when every variant's means differ by at most ``AGREE_SD`` times the
larger seed sd (floor ``AGREE_FLOOR`` nats) and both readings are the same.

    python gpu/control/recall_probe_report.py RUNS_DIR [--out DIR] [--against OTHER_DIR]
"""
import argparse
import json
import math
import re
from pathlib import Path

MARGIN = 0.5  # nats under chance: far beyond the ±0.01 a model at chance wanders over 64 rows
AGREE_SD, AGREE_FLOOR = 2.0, 0.05  # two probes agree within 2 seed sd (at least 0.05 nats)
STREAMS = ("text", "audio")


def load_runs(folder: Path) -> dict[tuple[str, int], dict]:
    """{(variant, seed): the run's JSON} for every ``<variant>-s<seed>.json`` in ``folder``."""
    runs = {}
    for path in sorted(folder.glob("*-s*.json")):
        match = re.fullmatch(r"(full|no_ttt|ttt)-s(\d+)\.json", path.name)
        if match:
            runs[(match[1], int(match[2]))] = json.loads(path.read_text())
    if not runs:
        raise SystemExit(f"{folder}: no <variant>-s<seed>.json (full, no_ttt, ttt) found")
    return runs


def reach(run: dict) -> int:
    """Frames attention can carry a source over: layers x context."""
    kwargs = run["lm_kwargs"]
    return kwargs["num_layers"] * kwargs["context"]


def eval_lags(run: dict) -> list[int]:
    return [int(lag) for lag in run["args"]["eval_lags"].split(",")]


def limited(runs: dict[tuple[str, int], dict]) -> dict | None:
    """A run of limited attention (no_ttt or ttt): whose reach the lags are judged against."""
    return next((run for (variant, _), run in runs.items() if variant != "full"), None)


KINDS = ("exact", "shuffled", "fresh")  # the held-out copy and its controls (copy_probe.py)


def key(condition: str, lag: int, kind: str = "exact") -> str:
    return f"{condition}_lag{lag}" + ("" if kind == "exact" else f"_{kind}")


def last(run: dict, condition: str, lag: int, stream: str = "text", kind: str = "exact") -> float:
    return run["curve"][-1][key(condition, lag, kind)][STREAMS.index(stream)]


def reading(runs: dict[tuple[str, int], dict]) -> dict:
    """The verdict and the figures it rests on (see the module's docstring)."""
    any_run = next(iter(runs.values()))
    chance = math.log(any_run["args"]["vocab"])
    local = limited(runs)
    if local is None:
        return {"verdict": "inconclusive", "why": "no run of limited attention (no_ttt or ttt)"}
    beyond = [lag for lag in eval_lags(any_run) if lag > reach(local)]
    if not beyond:
        return {"verdict": "inconclusive", "why": f"no evaluated lag beyond the reach {reach(local)}"}

    def copies(run, condition="on"):
        return all(last(run, condition, lag) < chance - MARGIN for lag in beyond)

    def reads_fresh(run):  # beats chance where nothing can be recalled, at any lag
        return any(last(run, "on", lag, kind="fresh") < chance - MARGIN
                   for lag in eval_lags(run) if key("on", lag, "fresh") in run["curve"][-1])

    by = lambda name: {seed: run for (variant, seed), run in runs.items() if variant == name}  # noqa: E731
    figures = {"chance": round(chance, 3), "reach": reach(local), "lags_beyond": beyond,
               "steps": {f"{v}-s{s}": run["curve"][-1]["step"] for (v, s), run in runs.items()}}
    if any(copies(run) for run in by("no_ttt").values()):
        return {"verdict": "invalid", "why": "no-TTT copies beyond its attention's reach", **figures}
    fresh = sorted(f"{v}-s{s}" for (v, s), run in runs.items() if reads_fresh(run))
    if fresh:
        return {"verdict": "invalid", "why": f"{', '.join(fresh)} beat(s) chance on fresh tokens, "
                "where nothing can be recalled", **figures}
    if not by("full") or not all(copies(run) for run in by("full").values()):
        return {"verdict": "inconclusive", "why": "full attention does not copy beyond the reach "
                "(train longer: its circuit forms as a jump)", **figures}
    ttt = by("ttt")
    if ttt and all(copies(run) and not copies(run, "off") for run in ttt.values()):
        return {"verdict": "recall", "why": f"TTT copies beyond the reach in {len(ttt)} of "
                f"{len(ttt)} seeds, its TTT-off twin does not", **figures}
    return {"verdict": "no recall", "why": "TTT does not copy beyond the reach in every seed, "
            "or its twin copies too (then the recall is not TTT's)", **figures}


def table(runs: dict[tuple[str, int], dict]) -> str:
    any_run = next(iter(runs.values()))
    lags = eval_lags(any_run)
    local = limited(runs) or any_run
    head = "| run | condition | copy | step | " + " | ".join(
        f"lag {lag}{' *' if lag > reach(local) else ''}" for lag in lags) + " |"
    lines = [head, "|" + "---|" * (4 + len(lags))]
    for (variant, seed), run in sorted(runs.items()):
        final = run["curve"][-1]
        for condition in ("on", "off"):
            for kind in KINDS:
                if key(condition, lags[0], kind) not in final:
                    continue
                cells = " | ".join("{:.3f} / {:.3f}".format(*final[key(condition, lag, kind)])
                                   for lag in lags)
                name = {"on": "as trained", "off": "TTT-off twin"}[condition]
                lines.append(f"| {variant}-s{seed} | {name} | {kind} | {final['step']} | {cells} |")
    return "\n".join(lines)


def _figure(columns: int, width: float):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, columns, figsize=(width * columns, 3.4), sharey=True)
    return plt, fig, list(axes) if columns > 1 else [axes]


def _save(plt, fig, axes, ylabel: str, path: Path) -> None:
    axes[0].set_ylabel(ylabel)
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(runs: dict[tuple[str, int], dict], path: Path) -> None:
    """Text copy NLL against step, one panel per lag; TTT-off twins dotted, chance grey."""
    any_run = next(iter(runs.values()))
    lags = eval_lags(any_run)
    local = limited(runs)
    plt, fig, axes = _figure(len(lags), 3.6)
    for ax, lag in zip(axes, lags):
        for (variant, seed), run in sorted(runs.items()):
            steps = [row["step"] for row in run["curve"]]
            line, = ax.plot(steps, [row[key("on", lag)][0] for row in run["curve"]],
                            label=f"{variant}-s{seed}")
            if key("off", lag) in run["curve"][0]:
                ax.plot(steps, [row[key("off", lag)][0] for row in run["curve"]], ":",
                        color=line.get_color(), label=f"{variant}-s{seed} TTT-off twin")
        ax.axhline(math.log(any_run["args"]["vocab"]), color="grey", lw=0.8)
        beyond = local is not None and lag > reach(local)
        ax.set_title(f"lag {lag}" + (" (beyond the reach)" if beyond else ""), fontsize=9)
        ax.set_xlabel("step")
    _save(plt, fig, axes, "text NLL on the repeat (nats)", path)


def plot_offsets(runs: dict[tuple[str, int], dict], path: Path) -> None:
    """Copy NLL against lag at each run's last step (text and audio), chance and reach marked."""
    any_run = next(iter(runs.values()))
    lags = eval_lags(any_run)
    local = limited(runs)
    plt, fig, axes = _figure(len(STREAMS), 4.5)
    for ax, stream in zip(axes, STREAMS):
        for (variant, seed), run in sorted(runs.items()):
            line, = ax.plot(lags, [last(run, "on", lag, stream) for lag in lags], "o-",
                            label=f"{variant}-s{seed}")
            if key("off", lags[0]) in run["curve"][-1]:
                ax.plot(lags, [last(run, "off", lag, stream) for lag in lags], "o:",
                        color=line.get_color(), label=f"{variant}-s{seed} TTT-off twin")
        ax.axhline(math.log(any_run["args"]["vocab"]), color="grey", lw=0.8)
        if local is not None:
            ax.axvline(reach(local), color="grey", ls="--", lw=0.8)
        ax.set_title(f"{stream}: NLL on the repeat at the last step (dashed: the reach)", fontsize=9)
        ax.set_xlabel("lag (frames)")
    _save(plt, fig, axes, "nats", path)


def beyond_mean(run: dict, step: int, lags: list[int]) -> float:
    """Text copy NLL of ``run`` at ``step``, mean over ``lags``."""
    row = next(r for r in run["curve"] if r["step"] == step)
    return sum(row[key("on", lag)][0] for lag in lags) / len(lags)


def compare(first: dict, second: dict) -> dict:
    """Do two probes agree within seed noise? Per variant run in both: seed means (and sd) of the
    text copy NLL beyond the reach, each seed at the last step both probes logged for it."""
    read = reading(first), reading(second)
    lags = read[0].get("lags_beyond") or []
    rows, agree = [], read[0]["verdict"] == read[1]["verdict"] and bool(lags)
    for variant in ("full", "no_ttt", "ttt"):
        seeds = sorted(s for (v, s) in first if v == variant and (v, s) in second)
        if not seeds:
            continue
        values = [[], []]
        for seed in seeds:
            runs = first[(variant, seed)], second[(variant, seed)]
            step = max({r["step"] for r in runs[0]["curve"]} & {r["step"] for r in runs[1]["curve"]})
            for i in (0, 1):
                values[i].append(beyond_mean(runs[i], step, lags))
        mean = [sum(v) / len(v) for v in values]
        sd = [(sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5 if len(v) > 1 else 0.0
              for v, m in zip(values, mean)]
        allowed = max(AGREE_SD * max(sd), AGREE_FLOOR)
        ok = abs(mean[0] - mean[1]) <= allowed
        agree = agree and ok
        rows.append({"variant": variant, "seeds": seeds, "mean": mean, "sd": sd,
                     "difference": mean[1] - mean[0], "allowed": allowed, "agree": ok})
    return {"agree": agree, "readings": [r["verdict"] for r in read], "lags_beyond": lags, "rows": rows}


def comparison_table(result: dict, names: tuple[str, str]) -> str:
    lines = [f"**Two probes: {'agree' if result['agree'] else 'disagree'}** (readings: "
             f"{result['readings'][0]} / {result['readings'][1]}; text copy NLL beyond the reach, lags "
             f"{result['lags_beyond']}, seed mean ± sd)", "",
             f"| variant | seeds | {names[0]} | {names[1]} | difference | allowed | agree |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['variant']} | {r['seeds']} | {r['mean'][0]:.3f} ± {r['sd'][0]:.3f} | "
                     f"{r['mean'][1]:.3f} ± {r['sd'][1]:.3f} | {r['difference']:+.3f} | "
                     f"{r['allowed']:.3f} | {'yes' if r['agree'] else 'no'} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path)
    p.add_argument("--out", type=Path, help="report.md, reading.json, curve.png and offsets.png "
                   "(default: runs)")
    p.add_argument("--against", type=Path, help="another probe's runs: compare.md, compare.json")
    args = p.parse_args()
    runs = load_runs(args.runs)
    out = args.out or args.runs
    out.mkdir(parents=True, exist_ok=True)
    verdict = reading(runs)
    text = (f"**Reading: {verdict['verdict']}** ({verdict['why']}).\n\nText / audio NLL on the "
            f"repeated frames at each run's last step (chance {verdict.get('chance', '?')}; "
            f"* beyond the reach of limited attention, {verdict.get('reach', '?')} frames):\n\n"
            f"{table(runs)}\n\n![curve](curve.png)\n\n![offsets](offsets.png)\n")
    (out / "report.md").write_text(text)
    (out / "reading.json").write_text(json.dumps(verdict, indent=1) + "\n")
    plot(runs, out / "curve.png")
    plot_offsets(runs, out / "offsets.png")
    print(text)
    if args.against:
        result = compare(runs, load_runs(args.against))
        machines = [sorted({json.dumps(r.get("machine")) for r in group.values()})
                    for group in (runs, load_runs(args.against))]
        (out / "compare.json").write_text(json.dumps({**result, "machines": machines}, indent=1) + "\n")
        text = comparison_table(result, (str(args.runs), str(args.against)))
        (out / "compare.md").write_text(text + "\n\nMachines: " + " / ".join(map(str, machines)) + "\n")
        print(text)


if __name__ == "__main__":
    main()
