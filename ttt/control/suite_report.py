"""The control suite's table: loss on repeated frames against offset, for seeds × {TTT, its
TTT-off twin, the same architecture trained without TTT, full attention} × {exact, shuffled,
fresh}, with seed mean ± sd and a bootstrap over conversations *and* seeds; the TTT gain against
training steps beside validation loss; and their plots.

Input: a folder of runs named ``<variant>-s<seed>`` (variants ``ttt``, ``no_ttt``, ``full``),
each holding ``offsets.json`` (:mod:`ttt.control.offsets` on its selected checkpoint) and
``train_log.csv``; and the offset set's manifest. Every comparison pairs rows of the same
conversation and offset, so conversation content cancels.
"""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np

from ttt.control import suite_reading

MODELS = (("ttt", "on", "TTT"), ("ttt", "off", "TTT-off twin"), ("no_ttt", "on", "no-TTT"),
          ("full", "on", "full attention"))
RUN_NAME = re.compile(r"^(ttt|no_ttt|full)-s(\d+)$")


def seed_conversation_bootstrap(values: np.ndarray, resamples: int = 2000, seed: int = 0,
                                confidence: float = 0.95) -> tuple[float, float]:
    """Percentile CI of the mean of ``values`` [seeds, conversations], resampling seeds and
    conversations (crossed: every seed scored the same conversations) with replacement."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    s = rng.integers(0, values.shape[0], (resamples, values.shape[0]))
    c = rng.integers(0, values.shape[1], (resamples, values.shape[1]))
    means = np.array([np.nanmean(values[s[i]][:, c[i]]) for i in range(resamples)])
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def load_runs(runs_dir: str | os.PathLike) -> dict:
    """{(variant, seed): {"offsets": evaluate_set result, "log": train_log rows}}."""
    out = {}
    for d in sorted(Path(runs_dir).iterdir()):
        m = RUN_NAME.match(d.name)
        if m and (d / "offsets.json").is_file():
            log = list(csv.DictReader(open(d / "train_log.csv"))) if (d / "train_log.csv").is_file() else []
            summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").is_file() else {}
            out[(m[1], int(m[2]))] = {"offsets": json.loads((d / "offsets.json").read_text()),
                                      "log": log, "summary": summary}
    if not out:
        raise ValueError(f"{runs_dir}: no run folders <variant>-s<seed> with offsets.json")
    return out


def grid(runs: dict, manifest: dict, variant: str, condition: str, stream: str) -> dict:
    """{(kind, offset): [seeds, conversations]} of copy-span NLL."""
    seeds = sorted(s for v, s in runs if v == variant)
    n_conv = len(manifest["conversations"])
    out = {}
    for kind in manifest["kinds"]:
        for offset in manifest["offsets"]:
            out[(kind, offset)] = np.full((len(seeds), n_conv), np.nan)
    for i, s in enumerate(seeds):
        values = runs[(variant, s)]["offsets"]["conditions"][condition][stream]
        for r in manifest["rows"]:
            out[(r["kind"], r["offset"])][i, r["conversation"]] = values[r["row"]]
    return out


def summarise(values: np.ndarray, resamples: int) -> dict:
    per_seed = np.nanmean(values, axis=1)
    lo, hi = seed_conversation_bootstrap(values, resamples)
    return {"mean": float(per_seed.mean()), "sd": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0,
            "seeds": per_seed.tolist(), "ci95": [lo, hi]}


def build_report(runs: dict, manifest: dict, resamples: int = 2000) -> dict:
    """NLL per model × kind × offset, recall (fresh − exact, fresh − shuffled) per model, TTT
    gain (twin − on) and TTT − no-TTT per kind, each with seed mean ± sd and CI; per stream; and
    the reading of :mod:`ttt.control.suite_reading` (recall, no recall, inconclusive)."""
    available = [(v, c, label) for v, c, label in MODELS
                 if any(k[0] == v for k in runs)
                 and c in runs[next(k for k in runs if k[0] == v)]["offsets"]["conditions"]]
    report = {"offsets": manifest["offsets"], "length": manifest["length"],
              "frames": manifest["frames"], "conversations": len(manifest["conversations"]),
              "seeds": {v: sorted(s for vv, s in runs if vv == v) for v in {k[0] for k in runs}},
              "reach": _reach(runs), "streams": {}, "reading": {}}
    for stream in ("text", "audio"):
        grids = {label: grid(runs, manifest, v, c, stream) for v, c, label in available}
        report["reading"][stream] = suite_reading.read_stream(
            grids, manifest["offsets"], report["reach"]["frames"], lambda x: summarise(x, resamples))
        nll, recall, shuffled, gains = {}, {}, {}, {}
        for label, g in grids.items():
            nll[label] = {f"{k}@{o}": summarise(x, resamples) for (k, o), x in g.items()}
            recall[label] = {o: summarise(g[("fresh", o)] - g[("exact", o)], resamples)
                             for o in manifest["offsets"]}
            shuffled[label] = {o: summarise(g[("fresh", o)] - g[("shuffled", o)], resamples)
                               for o in manifest["offsets"]}
        contrasts = {}
        for name, a, b in PAIRS:
            if a in grids and b in grids and grids[a][("exact", manifest["offsets"][0])].shape == \
                    grids[b][("exact", manifest["offsets"][0])].shape:
                d = {(k, o): grids[a][(k, o)] - grids[b][(k, o)]
                     for k in manifest["kinds"] for o in manifest["offsets"]}
                gains[name] = {f"{k}@{o}": summarise(x, resamples) for (k, o), x in d.items()}
                # what the difference owes to the repeat: exact minus fresh / shuffled, same rows
                contrasts[name] = {f"exact-{k}@{o}": summarise(d[("exact", o)] - d[(k, o)], resamples)
                                   for k in ("fresh", "shuffled") for o in manifest["offsets"]}
        report["streams"][stream] = {"nll": nll, "recall_exact": recall, "recall_shuffled": shuffled,
                                     "differences": gains, "contrasts": contrasts}
    report["curves"] = {f"{v}-s{s}": [{k: float(r[k]) for k in r if k in CURVE_KEYS and r[k] != ""}
                                      for r in run["log"]] for (v, s), run in sorted(runs.items())}
    report["selected"] = {f"{v}-s{s}": run["summary"].get("selected") for (v, s), run in sorted(runs.items())}
    report["warnings"] = suite_reading.overfit_warnings(report["curves"], report["selected"])
    return report


PAIRS = (("TTT gain (twin − on)", "TTT-off twin", "TTT"), ("no-TTT − TTT", "no-TTT", "TTT"),
         ("no-TTT − full attention", "no-TTT", "full attention"))
CURVE_KEYS = ("step", "loss", "eval_loss", "eval_text_loss", "eval_audio_loss", "eval_text_loss_off",
              "eval_copy_text_loss", "eval_copy_text_loss_off", "eval_ttt_gain_text",
              "eval_ttt_gain_copy_text", "eval_ttt_gain_copy_audio")


def _reach(runs: dict) -> dict:
    one = next(r for (v, _), r in runs.items() if v == "ttt") if any(v == "ttt" for v, _ in runs) \
        else next(iter(runs.values()))
    ctx, layers = one["offsets"]["context"], one["offsets"]["num_layers"]
    return {"context": ctx, "layers": layers, "frames": ctx * layers}


def _cell(s: dict, digits: int = 3) -> str:
    return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"


def _ci_cell(s: dict, digits: int = 3) -> str:
    lo, hi = s["ci95"]
    return f"{s['mean']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def markdown(report: dict) -> str:
    """The tables as Markdown (docs/controls.md and the results folder)."""
    lines = [f"Offset sets: {report['conversations']} held-out conversations of {report['frames']} "
             f"frames, {report['length']} frames copied to the end; reach = {report['reach']['layers']} "
             f"layers × {report['reach']['context']} frames = {report['reach']['frames']} frames. "
             f"Seeds: {report['seeds']}. NLL in nats/token on the copied frames, seed mean ± sd; "
             "differences with a 95 % bootstrap CI over conversations and seeds.", ""]
    lines += suite_reading.markdown(report.get("reading", {}), report.get("warnings", []))
    for stream, data in report["streams"].items():
        labels = list(data["nll"])
        lines += [f"**{stream}: NLL on the copy (exact / fresh)**", "",
                  "| offset | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        for o in report["offsets"]:
            cells = [f"{_cell(data['nll'][m][f'exact@{o}'])} / {data['nll'][m][f'fresh@{o}']['mean']:.3f}"
                     for m in labels]
            lines.append(f"| {o}{' *' if o > report['reach']['frames'] else ''} | " + " | ".join(cells) + " |")
        lines += ["", f"**{stream}: recall = NLL(fresh) − NLL(exact) [shuffled: fresh − shuffled]**", "",
                  "| offset | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        for o in report["offsets"]:
            cells = [f"{_ci_cell(data['recall_exact'][m][o])} [{data['recall_shuffled'][m][o]['mean']:+.3f}]"
                     for m in labels]
            lines.append(f"| {o}{' *' if o > report['reach']['frames'] else ''} | " + " | ".join(cells) + " |")
        for name, table in data["differences"].items():
            contrast = data["contrasts"][name]
            lines += ["", f"**{stream}: {name}, by kind of copy; what it owes to the repeat "
                          "(exact − fresh, exact − shuffled; same rows)**", "",
                      "| offset | exact | shuffled | fresh | exact − fresh | exact − shuffled |",
                      "|---|---|---|---|---|---|"]
            for o in report["offsets"]:
                lines.append(f"| {o} | " + " | ".join(
                    [_ci_cell(table[f"{k}@{o}"]) for k in ("exact", "shuffled", "fresh")]
                    + [_ci_cell(contrast[f"exact-{k}@{o}"]) for k in ("fresh", "shuffled")]) + " |")
        lines.append("")
    lines.append("\\* beyond the reach (offset > layers × context).")
    return "\n".join(lines) + "\n"


def plots(report: dict, out: Path) -> list[Path]:
    """offsets.png (text NLL on the copy against offset) and curve.png (TTT gain against steps)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, stream in zip(axes, ("text", "audio")):
        data = report["streams"][stream]["nll"]
        for i, (label, cells) in enumerate(data.items()):
            offs = report["offsets"]
            for kind, style in (("exact", "-o"), ("shuffled", ":"), ("fresh", "--")):
                y = [cells[f"{kind}@{o}"]["mean"] for o in offs]
                ax.plot(offs, y, style, color=f"C{i}", label=f"{label} {kind}" if kind != "shuffled" or i == 0 else None)
        ax.axvline(report["reach"]["frames"], color="grey", lw=0.8)
        ax.set_xlabel("offset of the source (frames)")
        ax.set_ylabel(f"{stream} NLL on the copy (nats)")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    paths.append(out / "offsets.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax2 = ax.twinx()
    for name, rows in report["curves"].items():
        if not name.startswith("ttt-") or not rows or "eval_ttt_gain_copy_text" not in rows[-1]:
            continue
        steps = [r["step"] for r in rows if "eval_ttt_gain_copy_text" in r]
        ax.plot(steps, [r["eval_ttt_gain_copy_text"] for r in rows if "eval_ttt_gain_copy_text" in r], label=name)
        ax2.plot(steps, [r["eval_text_loss"] for r in rows if "eval_ttt_gain_copy_text" in r], ":", color="grey")
    ax.set_xlabel("training step")
    ax.set_ylabel("TTT gain on held-out repeats, text (nats)")
    ax2.set_ylabel("validation text loss (dotted)")
    if ax.get_legend_handles_labels()[0]:  # no TTT run, no curve
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "curve.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    import argparse

    from ttt.base.files import write_text

    parser = argparse.ArgumentParser(prog="python -m ttt.control.suite_report", description=__doc__)
    parser.add_argument("--runs", required=True)
    parser.add_argument("--set", required=True, help="the offset set folder (its manifest.json)")
    parser.add_argument("--out", required=True, help="folder: report.json, report.md, *.png")
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args(argv)
    manifest = json.loads((Path(args.set) / "manifest.json").read_text())
    report = build_report(load_runs(args.runs), manifest, args.resamples)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    write_text(out / "report.md", markdown(report))
    plots(report, out)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
