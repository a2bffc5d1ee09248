"""The report's plots (docs/user-guide.md), drawn from the aggregated rows and each cell's tables:
the LR × chunk heatmap, long-form ‖W‖ and perplexity, YaRN, the consistency (gibberish) curve and
Figure 5's inner losses. A cell whose row is ``corrupt`` or ``missing``, a table that cannot be
read, or a point without its coordinates is left out of the plot with a warning (returned, and
printed by ``aggregate``): a bad cell file never costs a plot.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ttt.base.files import save_figure
from ttt.report.tables import number, read_table

TELEMETRY_CURVES = ["step", "inner_loss_initial", "inner_loss_before", "inner_loss_after"]

UNDRAWABLE = ("corrupt", "missing")  # rows whose cell files cannot be trusted


def make_plots(cells_root: Path, rows: list[dict], plots: Path) -> list[str]:
    """Draw every plot into ``plots``; the warnings (what was left out, and why)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    warnings = [f"plots: cell {r['cell']} left out ({r['status']}: {r.get('error')})"
                for r in rows if r.get("status") in UNDRAWABLE]
    rows = [r for r in rows if r.get("status") not in UNDRAWABLE]

    # LR × chunk heatmap of text perplexity (TTT on).
    grid = [r for r in rows if r["family"] == "lr_grid" and r.get("ttt") == "on"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if grid:
        lrs = sorted({float(r["lr"]) for r in grid})
        chunks = sorted({int(r["chunk"]) for r in grid})
        values = [[_finite(next((r.get("perplexity_text") for r in grid if float(r["lr"]) == lr
                              and int(r["chunk"]) == c), None)) for lr in lrs] for c in chunks]
        values = [[math.nan if v is None else v for v in line] for line in values]  # failed cells
        image = ax.imshow(values, cmap="viridis")
        ax.set(xticks=range(len(lrs)), xticklabels=[f"{lr:g}" for lr in lrs],
               yticks=range(len(chunks)), yticklabels=chunks, xlabel="lr", ylabel="chunk")
        fig.colorbar(image, label="text perplexity")
        for (i, j), r in [((chunks.index(int(r["chunk"])), lrs.index(float(r["lr"]))), r) for r in grid]:
            if r.get("diverged"):
                ax.text(j, i, "div", ha="center", va="center", color="red")
    ax.set_title("LR grid (TTT on)")
    fig.tight_layout()
    save_figure(fig, plots / "lr_grid.png")
    plt.close(fig)

    # Long-form: ‖W‖ and sliding perplexity vs time.
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    for r in rows:
        if r["family"] != "long_form":
            continue
        cell = cells_root / r["cell"] / "cell"
        series = _plot_table(cell / "timeseries.csv")
        if len(series) and "text_ppl" in series:
            axes[1].plot(series["start_s"].map(_finite), series["text_ppl"].map(_finite),
                         label=r["cell"].split("/", 1)[1])
        if r.get("ttt") == "on":
            tel = _plot_table(cell / "telemetry.csv")
            for layer, pts in (tel.groupby("layer", sort=True) if len(tel) else ()):
                axes[0].plot(pts["step"].map(_finite) / 12.5, pts["w_norm"].map(_finite),
                             label=f"{r['cell'].split('/', 1)[1]} L{layer}")
    axes[0].set(title="‖W‖_F vs time (long form)", xlabel="time (s)")
    axes[1].set(title="sliding text perplexity (long form)", xlabel="time (s)")
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, plots / "long_form.png")
    plt.close(fig)

    # YaRN: throughput and pre-update logits error vs length.
    yarn = [r for r in rows if r["family"] == "yarn" and "tokens" in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    for ttt in ("off", "on"):
        pts = sorted((int(r["tokens"]), r) for r in yarn if r.get("ttt") == ttt)
        axes[0].plot([p for p, _ in pts], [_finite(r.get("tokens_per_s")) for _, r in pts], "o-", label=f"TTT {ttt}")
        if ttt == "on":
            axes[1].plot([p for p, _ in pts], [_finite(r.get("pre_update_logits_rel_err")) for _, r in pts], "o-")
    axes[0].set(title="YaRN: teacher-forced tokens/s", xlabel="tokens")
    axes[1].set(title="pre-update logits rel. error (TTT on vs off)", xlabel="tokens")
    if axes[0].lines:
        axes[0].legend()
    fig.tight_layout()
    save_figure(fig, plots / "yarn.png")
    plt.close(fig)

    warnings += _consistency_plot(cells_root, rows, plots / "consistency.png")

    # Figure-5 curves: the longest TTT-on long-form cell; the hybrid's learned-gate cell.
    longest = sorted((r for r in rows if r["family"] == "long_form" and r.get("ttt") == "on"),
                     key=lambda r: number(r.get("steps")) or 0)
    _figure5(cells_root, longest[-1:], plots / "figure5.png", "", hybrid=False)
    hybrid = [r for r in rows if r["family"] == "gate_override" and r.get("alpha") == "learned"]
    _figure5(cells_root, hybrid, plots / "figure5_hybrid.png", "TTT-MLP, learned gate: ", hybrid=True)
    return warnings


def _consistency_plot(cells_root: Path, rows: list[dict], path: Path) -> list[str]:
    """The gibberish detector: consistency WER (what the recogniser heard vs Moshi's text) per
    window against time, for the long-form generate cells (the short-form ones when the run has
    none), TTT on and off. The warnings: windows left out, named by file."""
    import matplotlib.pyplot as plt

    warnings = []
    fig, ax = plt.subplots(figsize=(7, 3.5))
    family = next((f for f in ("long_form", "short_form")
                   if any(r["family"] == f and r.get("asr_status") == "ok" for r in rows)), None)
    untrained = False
    for r in rows:
        if r["family"] != family or r.get("asr_status") != "ok":
            continue
        untrained |= r.get("codec_untrained") is True
        windows = cells_root / r["cell"] / "asr" / "asr.jsonl"
        rows_in, problem = _read_jsonl(windows)
        series = [(s["start_s"], s["consistency_wer"]) for s in rows_in
                  if number(s.get("start_s")) is not None and "consistency_wer" in s]
        left_out = len(rows_in) - len(series)
        if problem or left_out:
            warnings.append(f"{windows}: " + (problem or f"{left_out} of {len(rows_in)} window(s)"
                            " without a start_s number or a consistency_wer")
                            + f", left out of {path.name}")
        ax.plot([_finite(t) for t, _ in series], [_finite(w) for _, w in series], "o-",
                label=r["cell"].split("/", 1)[1])
    note = " (untrained codec: noise)" if untrained else ""
    ax.set(title=f"consistency WER vs time, {family or 'no generate cell'}{note}",
           xlabel="time (s)", ylabel="WER heard vs text stream")
    if ax.lines:
        ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return warnings


def _read_jsonl(path: Path) -> tuple[list[dict], str | None]:
    """(rows of a JSON-lines file for a plot, why some or all were left out, or None); an
    unreadable file is left out of the plot whole."""
    if not path.is_file():
        return [], None
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:  # JSONDecodeError, UnicodeDecodeError
        return [], f"unreadable ({type(exc).__name__})"
    objects = [r for r in rows if isinstance(r, dict)]
    return objects, (f"{len(rows) - len(objects)} line(s) not a JSON object"
                     if len(objects) < len(rows) else None)


def _figure5(cells_root: Path, cells: list[dict], path: Path, title: str, hybrid: bool) -> None:
    """Figure 5 of the first TTT layer of ``cells[0]`` over time: ℓ(W⁽⁰⁾), ℓ(W⁽ⁱ⁾) before and
    ℓ(W⁽ⁱ⁺¹⁾) after each update (left), and the next-chunk gain ℓ(W⁽⁰⁾) − ℓ(W⁽ⁱ⁾), the health
    signal (right). For In-Place TTT ℓ is linear in W, so after < before holds by construction
    and says nothing; only the gain does. For the hybrid neither holds by construction."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    if cells:
        tel = _plot_table(cells_root / cells[0]["cell"] / "cell" / "telemetry.csv")
        layer = tel["layer"].iloc[0] if len(tel) else None
        pts = tel[tel["layer"] == layer] if len(tel) else pd.DataFrame(columns=TELEMETRY_CURVES)
        x = pts["step"].map(_finite) / 12.5
        for key, style, name in (("inner_loss_initial", ":", "ℓ(W⁽⁰⁾)"),
                                 ("inner_loss_before", "--", "ℓ(W⁽ⁱ⁾) before"),
                                 ("inner_loss_after", "-", "ℓ(W⁽ⁱ⁺¹⁾) after")):
            axes[0].plot(x, pts[key].map(_finite), style, label=name)
        axes[0].legend(fontsize=7)
        note = ("TTT-MLP: after < before is not by construction" if hybrid else
                "In-Place: after < before holds by construction (ℓ linear in W)")
        axes[0].set(title=f"{title}inner losses, layer {layer}\n{note}", xlabel="time (s)")
        gain = pts["inner_gain"].map(_finite) if "inner_gain" in pts else x * math.nan
        axes[1].plot(x, gain, "o-", ms=2)
        axes[1].axhline(0.0, color="grey", lw=0.5)
        axes[1].set(title="next-chunk gain ℓ(W⁽⁰⁾) − ℓ(W⁽ⁱ⁾) (> 0: earlier chunks help this one)",
                    xlabel="time (s)")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _plot_table(path: Path) -> pd.DataFrame:
    """A cell's table for a plot; an unreadable one (its cell's row says so) is left out of the
    plot rather than failing every plot."""
    try:
        return read_table(path, missing_ok=True)
    except ValueError:
        return pd.DataFrame()


def _finite(value) -> float:
    """The number to draw: NaN (a gap) where the field holds no finite number."""
    x = number(value)
    return x if x is not None and math.isfinite(x) else math.nan
