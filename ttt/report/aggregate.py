"""Collect every cell under ``results/cells`` into tables and plots.

A cell is ``results/cells/<family>/<key>~<value>/.../`` holding ``status.json`` (how its job
ended) and ``cell/metrics.json`` (when it completed). Failed cells keep their row, with why.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from ttt.base.files import read_json, write_csv

TWIN_FREE = {"ttt", "lr", "chunk", "ablation", "alpha"}  # parameters an off-twin need not share
TRANSCRIPT_WORDS = 40  # words of each transcript shown side by side in gate_override.csv


def collect(cells_root: str | os.PathLike) -> list[dict]:
    rows = []
    root = Path(cells_root)
    for status_path in sorted(root.glob("**/status.json")):
        rel = status_path.parent.relative_to(root)
        family, *parts = rel.parts
        params = dict(p.split("~", 1) for p in parts if "~" in p)
        try:
            status = _read_object(status_path)
        except ValueError as exc:
            rows.append({"family": family, "cell": str(rel), **params, "status": "corrupt",
                         "error": str(exc)})
            continue
        row: dict[str, Any] = {"family": family, "cell": str(rel), **params,
                               "status": status.get("status"), "error": status.get("error"),
                               "job_id": status.get("job_id")}
        metrics_path = status_path.parent / "cell" / "metrics.json"
        try:
            if metrics_path.is_file():
                row.update(_metrics_columns(_read_object(metrics_path), metrics_path))
            elif status.get("status") in ("ok", "diverged"):
                raise ValueError(f"{metrics_path}: missing, although status.json says "
                                 f"{status.get('status')!r}")
            row.update(asr_columns(status_path.parent / "asr"))
            if family == "gate_override":
                row.update(_gate_columns(status_path.parent / "cell", params.get("alpha")))
        except ValueError as exc:  # one bad file costs its cell's row only
            row.update(status="corrupt", error=str(exc))
        rows.append(row)
    return rows


def _read_object(path: Path) -> dict:
    """A JSON object from ``path``; ValueError naming the file when unreadable or not an object."""
    data = read_json(path, path.name)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _metrics_columns(m: dict, path: Path | None = None) -> dict:
    try:
        return _columns(m)
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: unexpected structure ({type(exc).__name__}: {exc})") from None


def _columns(m: dict) -> dict:
    tel = m.get("ttt_telemetry") or {}
    thr = m.get("throughput") or {}
    ppl = m.get("perplexity") or {}
    wer = m.get("wer") or {}
    ab = m.get("ab") or {}
    reg = m.get("regression") or {}
    return {
        "ttt": "on" if m.get("ttt") else "off", "mode": m.get("mode"),
        "wer": wer.get("wer"), "perplexity_text": ppl.get("text"), "perplexity_audio": ppl.get("audio"),
        "ms_per_step": thr.get("ms_per_step_p50"), "ms_per_step_p90": thr.get("ms_per_step_p90"),
        "rtf": thr.get("rtf"), "tokens_per_s": thr.get("tokens_per_s"),
        "peak_mem_bytes": _run_peak(m.get("memory") or {}),
        "updates": tel.get("updates"), "clip_events": tel.get("clip_events"),
        "final_w_norm": max(tel["final_w_norm"].values()) if tel.get("final_w_norm") else None,
        "max_delta_norm": tel.get("max_delta_norm"),
        "max_w_rel_change": tel.get("max_w_rel_change"),
        "next_chunk_gain_rel": _mean_rel_gain(tel.get("next_chunk_gain")),
        "pre_update_logits_rel_err": ab.get("pre_update_logits_rel_err"),
        "upstream_bitwise_equal": reg.get("bitwise_equal"),
        "diverged": m.get("diverged"), "requeues": m.get("requeues"), "steps": m.get("steps"),
        "git_sha": (m.get("provenance") or {}).get("git_sha"),
        "device": (m.get("provenance") or {}).get("device"),
        **model_columns(m),
    }


def model_columns(m: dict) -> dict:
    """What a row was computed from: the model (spec, the folder its weights were read from, the
    content digest of its files) and every resolved TTT setting (``ttt_<key>``; empty when off)."""
    cfg = m.get("config") or {}
    resolved = cfg.get("resolved_ttt") or {}
    return {"model": cfg.get("model"), "model_path": m.get("model_path"),
            "model_digest": cfg.get("model_digest"),
            **{f"ttt_{k}": ",".join(map(str, v)) if isinstance(v, list) else v
               for k, v in resolved.items() if m.get("ttt")}}


ASR_COLUMNS = ("consistency_wer", "asr_words_per_min", "asr_distinct_1", "asr_distinct_2",
               "asr_longest_repeated_ngram", "silence_fraction")


def asr_columns(asr_dir: Path) -> dict:
    """The ASR stage's per-cell numbers (``<cell>/asr/asr.json``); none for a cell without it."""
    path = asr_dir / "asr.json"
    if not path.is_file():
        return {}
    a = _read_object(path)
    if a.get("status") != "ok":
        return {"asr_status": a.get("status")}
    ind = a.get("indicators") or {}
    return {"asr_status": "ok", "consistency_wer": (a.get("consistency") or {}).get("wer"),
            **{k: ind.get(k) for k in ASR_COLUMNS[1:]},
            "codec_untrained": a.get("codec_untrained"),
            "asr_x_realtime": (a.get("speed") or {}).get("x_realtime")}


def _mean_rel_gain(gains: dict | None) -> float | None:
    """The layers' mean relative next-chunk gain (``telemetry.next_chunk_gain``'s ``rel``)."""
    values = [g["rel"] for g in (gains or {}).values()]
    return sum(values) / len(values) if values else None


def _gate_columns(cell: Path, alpha: str | None) -> dict:
    """Effective TTT weight tanh(α) (forced, or the learned α's mean from the diagnostics) and the
    beginning of the transcript, so the α rows read side by side (seed 002's table)."""
    gate = None
    if alpha not in (None, "learned"):
        gate = math.tanh(float(alpha))
    else:
        diag = [r for r in _read_csv(cell / "diagnostics.csv") if r.get("gate_tanh_mean")]
        gate = _num(diag[-1]["gate_tanh_mean"]) if diag else None
    path = cell / "transcript.txt"
    try:
        words = [line.split("] ", 1)[1].strip() for line in path.read_text().splitlines()
                 if "] " in line] if path.is_file() else []
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    return {"gate_tanh": gate, "transcript": " ".join(words[:TRANSCRIPT_WORDS])}


def pair_twins(rows: list[dict]) -> list[dict]:
    """Add the TTT-off twin's numbers and the deltas to every TTT-on row of a family."""
    out = []
    offs = [r for r in rows if r.get("ttt") == "off"]
    for row in rows:
        row = dict(row)
        if row.get("ttt") == "on":
            shared = {k: v for k, v in row.items() if k in _param_keys(rows) and k not in TWIN_FREE}
            twins = [o for o in offs if o["family"] == row["family"]
                     and all(o.get(k) == v for k, v in shared.items())]
            if twins:
                twin = twins[0]
                row["twin"] = twin["cell"]
                for key in ("perplexity_text", "perplexity_audio", "wer", "ms_per_step", *ASR_COLUMNS):
                    a, b = row.get(key), twin.get(key)
                    row[f"{key}_off"] = b
                    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                        row[f"{key}_delta"] = a - b
                if row.get("ms_per_step") and twin.get("ms_per_step"):
                    row["ms_per_step_ratio"] = row["ms_per_step"] / twin["ms_per_step"]
        out.append(row)
    return out


def _param_keys(rows: list[dict]) -> set[str]:
    keys = set()
    for r in rows:
        keys |= {p.split("~", 1)[0] for p in r["cell"].split("/")[1:] if "~" in p}
    return keys


# An lr_grid cell whose text perplexity exceeds its TTT-off twin's by this factor counts as
# diverged: past it the fast weights harm the model. The MLP input is normed, so a too-large lr
# rarely overflows; the output saturates instead (the trained default at lr 1 is 1.35× off, the
# untrained one still below off), so the boundary is where TTT starts to hurt, not an overflow.
BLOWUP_PPL_RATIO = 1.1


def _blown_up(r: dict) -> bool:
    ppl, off = r.get("perplexity_text"), r.get("perplexity_text_off")
    if not isinstance(ppl, (int, float)):
        return False
    return not math.isfinite(ppl) or (isinstance(off, (int, float)) and ppl > BLOWUP_PPL_RATIO * off)


def mark_lr_grid(rows: list[dict]) -> list[dict]:
    """Best learning rate per chunk size (lowest text perplexity among non-diverged cells) and
    the divergence boundary (smallest lr that diverged for that chunk size: marked diverged by
    the cell, or perplexity above BLOWUP_PPL_RATIO × TTT off, ``blown_up``)."""
    grid = [r for r in rows if r.get("ttt") == "on" and "lr" in r and "chunk" in r]
    for r in grid:
        r["blown_up"] = _blown_up(r)
    for chunk in {r["chunk"] for r in grid}:
        cells = [r for r in grid if r["chunk"] == chunk]
        ok = [r for r in cells if not r.get("diverged") and not r["blown_up"]
              and r.get("status") == "ok" and isinstance(r.get("perplexity_text"), float)]
        best = min(ok, key=lambda r: r["perplexity_text"]) if ok else None
        diverged = sorted(float(r["lr"]) for r in cells if r.get("diverged") or r["blown_up"])
        for r in cells:
            r["best_lr_for_chunk"] = r is best
            r["divergence_boundary_lr"] = diverged[0] if diverged else None
    return rows


def mark_ablation(rows: list[dict]) -> list[dict]:
    """Ablation rows (paper Fig. 3c) add their difference to the full target:
    ``<metric>_vs_full`` = variant − full, for text and audio perplexity."""
    full = next((r for r in rows if r["family"] == "ablation" and r.get("ablation") == "full"), None)
    for r in rows:
        if r["family"] != "ablation" or r.get("ttt") != "on" or full is None:
            continue
        for key in ("perplexity_text", "perplexity_audio"):
            a, b = r.get(key), full.get(key)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                r[f"{key}_vs_full"] = a - b
    return rows


def aggregate(cells_root: str | os.PathLike, tables: str | os.PathLike, plots: str | os.PathLike,
              families: list[str]) -> list[dict]:
    tables, plots = Path(tables), Path(plots)
    tables.mkdir(parents=True, exist_ok=True)
    plots.mkdir(parents=True, exist_ok=True)
    rows = mark_ablation(mark_lr_grid(pair_twins(collect(cells_root))))
    write_csv(tables / "cells.csv", rows)
    for family in families:
        write_csv(tables / f"{family}.csv", [r for r in rows if r["family"] == family])
    make_plots(Path(cells_root), rows, plots)
    return rows


def make_plots(cells_root: Path, rows: list[dict], plots: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # LR × chunk heatmap of text perplexity (TTT on).
    grid = [r for r in rows if r["family"] == "lr_grid" and r.get("ttt") == "on"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if grid:
        lrs = sorted({float(r["lr"]) for r in grid})
        chunks = sorted({int(r["chunk"]) for r in grid})
        values = [[_num(next((r.get("perplexity_text") for r in grid if float(r["lr"]) == lr
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
    fig.savefig(plots / "lr_grid.png", dpi=100)
    plt.close(fig)

    # Long-form: ‖W‖ and sliding perplexity vs time.
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    for r in rows:
        if r["family"] != "long_form":
            continue
        cell = cells_root / r["cell"] / "cell"
        series = _plot_rows(cell / "timeseries.csv")
        if series and "text_ppl" in series[0]:
            axes[1].plot([_num(s["start_s"]) for s in series], [_num(s["text_ppl"]) for s in series],
                         label=r["cell"].split("/", 1)[1])
        if r.get("ttt") == "on":
            tel = _plot_rows(cell / "telemetry.csv")
            for layer in sorted({t["layer"] for t in tel}):
                pts = [t for t in tel if t["layer"] == layer]
                axes[0].plot([_num(t["step"]) / 12.5 for t in pts], [_num(t["w_norm"]) for t in pts],
                             label=f"{r['cell'].split('/', 1)[1]} L{layer}")
    axes[0].set(title="‖W‖_F vs time (long form)", xlabel="time (s)")
    axes[1].set(title="sliding text perplexity (long form)", xlabel="time (s)")
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(plots / "long_form.png", dpi=100)
    plt.close(fig)

    # YaRN: throughput and pre-update logits error vs length.
    yarn = [r for r in rows if r["family"] == "yarn" and "tokens" in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    for ttt in ("off", "on"):
        pts = sorted((int(r["tokens"]), r) for r in yarn if r.get("ttt") == ttt)
        axes[0].plot([p for p, _ in pts], [_num(r.get("tokens_per_s")) for _, r in pts], "o-", label=f"TTT {ttt}")
        if ttt == "on":
            axes[1].plot([p for p, _ in pts], [_num(r.get("pre_update_logits_rel_err")) for _, r in pts], "o-")
    axes[0].set(title="YaRN: teacher-forced tokens/s", xlabel="tokens")
    axes[1].set(title="pre-update logits rel. error (TTT on vs off)", xlabel="tokens")
    if axes[0].lines:
        axes[0].legend()
    fig.tight_layout()
    fig.savefig(plots / "yarn.png", dpi=100)
    plt.close(fig)

    _consistency_plot(cells_root, rows, plots / "consistency.png")

    # Figure-5 curves: the longest TTT-on long-form cell; the hybrid's learned-gate cell.
    longest = sorted((r for r in rows if r["family"] == "long_form" and r.get("ttt") == "on"),
                     key=lambda r: _num(r.get("steps")) or 0)
    _figure5(cells_root, longest[-1:], plots / "figure5.png", "", hybrid=False)
    hybrid = [r for r in rows if r["family"] == "gate_override" and r.get("alpha") == "learned"]
    _figure5(cells_root, hybrid, plots / "figure5_hybrid.png", "TTT-MLP, learned gate: ", hybrid=True)


def _consistency_plot(cells_root: Path, rows: list[dict], path: Path) -> None:
    """The gibberish detector: consistency WER (what the recogniser heard vs Moshi's text) per
    window against time, for the long-form generate cells (the short-form ones when the run has
    none), TTT on and off."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    family = next((f for f in ("long_form", "short_form")
                   if any(r["family"] == f and r.get("asr_status") == "ok" for r in rows)), None)
    untrained = False
    for r in rows:
        if r["family"] != family or r.get("asr_status") != "ok":
            continue
        untrained |= r.get("codec_untrained") is True
        series = [(s["start_s"], s["consistency_wer"]) for s in
                  _read_jsonl(cells_root / r["cell"] / "asr" / "asr.jsonl")]
        ax.plot([_num(t) for t, _ in series], [_num(w) for _, w in series], "o-",
                label=r["cell"].split("/", 1)[1])
    note = " (untrained codec: noise)" if untrained else ""
    ax.set(title=f"consistency WER vs time, {family or 'no generate cell'}{note}",
           xlabel="time (s)", ylabel="WER heard vs text stream")
    if ax.lines:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file for a plot; an unreadable one is left out of the plot."""
    if not path.is_file():
        return []
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return []
    return [r for r in rows if isinstance(r, dict)]


def _figure5(cells_root: Path, cells: list[dict], path: Path, title: str, hybrid: bool) -> None:
    """Figure 5 of the first TTT layer of ``cells[0]`` over time: ℓ(W⁽⁰⁾), ℓ(W⁽ⁱ⁾) before and
    ℓ(W⁽ⁱ⁺¹⁾) after each update (left), and the next-chunk gain ℓ(W⁽⁰⁾) − ℓ(W⁽ⁱ⁾), the health
    signal (right). For In-Place TTT ℓ is linear in W, so after < before holds by construction
    and says nothing; only the gain does. For the hybrid neither holds by construction."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    if cells:
        tel = _plot_rows(cells_root / cells[0]["cell"] / "cell" / "telemetry.csv")
        layer = tel[0]["layer"] if tel else None
        pts = [t for t in tel if t["layer"] == layer]
        x = [_num(t["step"]) / 12.5 for t in pts]
        for key, style, name in (("inner_loss_initial", ":", "ℓ(W⁽⁰⁾)"),
                                 ("inner_loss_before", "--", "ℓ(W⁽ⁱ⁾) before"),
                                 ("inner_loss_after", "-", "ℓ(W⁽ⁱ⁺¹⁾) after")):
            axes[0].plot(x, [_num(t[key]) for t in pts], style, label=name)
        axes[0].legend(fontsize=7)
        note = ("TTT-MLP: after < before is not by construction" if hybrid else
                "In-Place: after < before holds by construction (ℓ linear in W)")
        axes[0].set(title=f"{title}inner losses, layer {layer}\n{note}", xlabel="time (s)")
        gain = [_num(t.get("inner_gain")) for t in pts]
        axes[1].plot(x, gain, "o-", ms=2)
        axes[1].axhline(0.0, color="grey", lw=0.5)
        axes[1].set(title="next-chunk gain ℓ(W⁽⁰⁾) − ℓ(W⁽ⁱ⁾) (> 0: earlier chunks help this one)",
                    xlabel="time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_rows(path: Path) -> list[dict]:
    """A table's complete rows for a plot: an unreadable table (its cell's row says so) or a
    truncated last row is left out rather than failing every plot."""
    try:
        rows = _read_csv(path)
    except ValueError:
        return []
    return [r for r in rows if None not in r and all(v is not None for v in r.values())]


def _read_csv(path: Path) -> list[dict]:
    """Rows of a cell's table; ValueError naming the file when it cannot be read."""
    if not path.is_file():
        return []
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: unreadable table ({type(exc).__name__})") from None


def _num(value) -> float | None:
    try:
        x = float(value)
        return x if math.isfinite(x) else None
    except (TypeError, ValueError):
        return None


def _run_peak(memory: dict) -> int | None:
    """The run's peak without the load transient (older cells recorded only ``peak_bytes``)."""
    return memory.get("run_peak_bytes", memory.get("peak_bytes"))

