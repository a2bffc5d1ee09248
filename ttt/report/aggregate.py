"""Collect the matrix's cells under ``results/cells`` into tables and plots.

A cell is ``results/cells/<family>/<key>~<value>/.../`` holding ``status.json`` (how its job
ended) and ``cell/metrics.json`` (when it completed, read as the typed :mod:`ttt.base.result`).
Which cells: the matrix's list (:mod:`ttt.report.cell_set`); folders it does not name go to
``orphans.csv``, never into a table. Failed cells keep their row, with why; a cell file that
cannot be read or does not fit its type costs its own row only (``status: corrupt``, the file and
field named), never the table or a plot.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

from ttt.base.files import read_json
from ttt.base.result import CellResult, ChunkGain, check_value
from ttt.base.result import load as load_result
from ttt.report.cell_set import cells_on_disk, default_matrix, orphans, read_matrix
from ttt.report.tables import cell_params, number, read_table, write_csv

TWIN_FREE = {"ttt", "lr", "chunk", "ablation", "alpha", "scenario", "stabiliser"}  # parameters an off-twin need not share
TRANSCRIPT_WORDS = 40  # words of each transcript shown side by side in gate_override.csv
DONE = ("ok", "diverged")


def collect(cells_root: str | os.PathLike, matrix: list[str] | None = None) -> list[dict]:
    """One row per cell of ``matrix`` (every cell folder under ``cells_root`` when None)."""
    root = Path(cells_root)
    return [_row(root, cell) for cell in (cells_on_disk(root) if matrix is None else matrix)]


def _row(root: Path, rel: str) -> dict:
    family, params = cell_params(rel)
    status_path = root / rel / "status.json"
    if not status_path.is_file():
        return {"family": family, "cell": rel, **params, "status": "missing",
                "error": f"{status_path}: not found (the cell has not run)"}
    try:
        status = _read_object(status_path)
    except ValueError as exc:
        return {"family": family, "cell": rel, **params, "status": "corrupt", "error": str(exc)}
    row: dict[str, Any] = {"family": family, "cell": rel, **params,
                           "status": status.get("status"), "error": status.get("error"),
                           "job_id": status.get("job_id")}
    metrics_path = status_path.parent / "cell" / "metrics.json"
    try:
        if metrics_path.is_file():
            row.update(_metrics_columns(metrics_path))
        elif status.get("status") in DONE:
            raise ValueError(f"{metrics_path}: missing, although status.json says "
                             f"{status.get('status')!r}")
        row.update(asr_columns(status_path.parent / "asr"))
        if family == "gate_override":
            row.update(_gate_columns(status_path.parent / "cell", params.get("alpha")))
    except ValueError as exc:  # one bad file costs its cell's row only
        row.update(status="corrupt", error=str(exc))
    return row


def _read_object(path: Path) -> dict:
    """A JSON object from ``path``; ValueError naming the file when unreadable or not an object."""
    data = read_json(path, path.name)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _metrics_columns(path: Path) -> dict:
    """cells.csv's columns from the typed cell result (ResultError, a ValueError, names the file
    and key when it does not fit)."""
    return _columns(load_result(path))


def _columns(m: CellResult) -> dict:
    tel, thr, ppl = m.ttt_telemetry, m.throughput, m.perplexity
    return {
        "ttt": "on" if m.ttt else "off", "mode": m.mode,
        "wer": m.wer.wer if m.wer else None,
        "perplexity_text": ppl.text if ppl else None, "perplexity_audio": ppl.audio if ppl else None,
        "ms_per_step": thr.ms_per_step_p50, "ms_per_step_p90": thr.ms_per_step_p90,
        "rtf": thr.rtf, "tokens_per_s": thr.tokens_per_s,
        "peak_mem_bytes": m.memory.run_peak,
        "updates": tel.updates if tel else None, "clip_events": tel.clip_events if tel else None,
        "final_w_norm": max(tel.final_w_norm.values()) if tel and tel.final_w_norm else None,
        "max_delta_norm": tel.max_delta_norm if tel else None,
        "max_w_rel_change": tel.max_w_rel_change if tel else None,
        "next_chunk_gain_rel": _mean_rel_gain(tel.next_chunk_gain) if tel else None,
        "pre_update_logits_rel_err": m.ab.pre_update_logits_rel_err if m.ab else None,
        "upstream_bitwise_equal": m.regression.bitwise_equal if m.regression else None,
        "diverged": m.diverged, "requeues": m.requeues, "steps": m.steps,
        "git_sha": m.provenance.git_sha, "device": m.provenance.device,
        **model_columns(m),
    }


def model_columns(m: CellResult) -> dict:
    """What a row was computed from: the model (spec, the folder its weights were read from, the
    content digest of its files) and every resolved TTT setting (``ttt_<key>``; empty when off)."""
    resolved = (m.resolved_ttt or {}) if m.ttt else {}
    return {"model": m.model, "model_path": m.model_path, "model_digest": m.model_digest,
            **{f"ttt_{k}": ",".join(map(str, v)) if isinstance(v, list) else v
               for k, v in resolved.items()}}


ASR_COLUMNS = ("consistency_wer", "asr_words_per_min", "asr_distinct_1", "asr_distinct_2",
               "asr_longest_repeated_ngram", "silence_fraction")


def asr_columns(asr_dir: Path) -> dict:
    """The ASR stage's per-cell numbers (``<cell>/asr/asr.json``); none for a cell without it.
    ValueError naming the file and field when a value read here, or a window of ``asr.jsonl``
    (the consistency plot's points), is not of its type."""
    path = asr_dir / "asr.json"
    if not path.is_file():
        return {}
    a = _read_object(path)
    where = str(path)
    status = check_value(str, a.get("status"), where, "status")
    if status != "ok":
        return {"asr_status": status}
    consistency = check_value(dict, a.get("consistency") or {}, where, "consistency")
    ind = check_value(dict, a.get("indicators") or {}, where, "indicators")
    speed = check_value(dict, a.get("speed") or {}, where, "speed")
    numbers = {"consistency_wer": check_value(float | None, consistency.get("wer"), where,
                                              "consistency.wer"),
               **{k: check_value(float | None, ind.get(k), where, f"indicators.{k}")
                  for k in ASR_COLUMNS[1:]}}
    _check_windows(asr_dir / "asr.jsonl")
    return {"asr_status": "ok", **numbers,
            "codec_untrained": check_value(bool | None, a.get("codec_untrained"), where,
                                           "codec_untrained"),
            "asr_x_realtime": check_value(float | None, speed.get("x_realtime"), where,
                                          "speed.x_realtime")}


def _check_windows(path: Path) -> None:
    """Every window of ``asr.jsonl`` is an object with a ``start_s`` number and a
    ``consistency_wer`` number or null (what the plot and the gates read)."""
    if not path.is_file():
        return
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            window = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} line {n}: not valid JSON ({exc.msg})") from None
        where = f"{path} line {n}"
        check_value(dict, window, where, "window")
        check_value(float, window.get("start_s"), where, "start_s")
        check_value(float | None, window.get("consistency_wer"), where, "consistency_wer")


def _mean_rel_gain(gains: dict[str, ChunkGain]) -> float | None:
    """The layers' mean relative next-chunk gain (``telemetry.next_chunk_gain``'s ``rel``)."""
    values = [g.rel for g in gains.values()]
    return sum(values) / len(values) if values else None


def _gate_columns(cell: Path, alpha: str | None) -> dict:
    """Effective TTT weight tanh(α) (forced, or the learned α's mean from the diagnostics) and the
    beginning of the transcript, so the α rows read side by side (seed 002's table)."""
    gate = None
    if alpha not in (None, "learned"):
        gate = math.tanh(float(alpha))
    else:
        diag = read_table(cell / "diagnostics.csv", "diagnostics table", missing_ok=True)
        means = [m for m in diag.get("gate_tanh_mean", []) if m != ""]
        gate = number(means[-1]) if means else None
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
    return {key for r in rows for key in cell_params(r["cell"])[1]}


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
              families: list[str], matrix: str | os.PathLike | None = None,
              warn: Callable[[str], Any] = print) -> list[dict]:
    """Write ``cells.csv``, one table per family, ``orphans.csv`` and the plots; the rows. The
    cells are ``matrix``'s (a cell list file), by default ``tables/matrix.txt`` when the workflow
    wrote one; ValueError (one line) for a malformed list, before anything is written."""
    tables, plots = Path(tables), Path(plots)
    matrix = matrix if matrix is not None else default_matrix(tables)
    cells = read_matrix(matrix) if matrix is not None else None
    if cells is None:
        warn(f"warning: no matrix cell list ({tables / 'matrix.txt'}): every cell folder under "
             f"{cells_root} is tabled")
    tables.mkdir(parents=True, exist_ok=True)
    plots.mkdir(parents=True, exist_ok=True)
    rows = mark_ablation(mark_lr_grid(pair_twins(collect(cells_root, cells))))
    write_csv(tables / "cells.csv", rows)
    for family in families:
        write_csv(tables / f"{family}.csv", [r for r in rows if r["family"] == family])
    stale = [] if cells is None else orphans(cells_root, cells)
    write_csv(tables / "orphans.csv", [_orphan(Path(cells_root), c) for c in stale],
              columns=["cell", "family", "status"])
    if stale:
        warn(f"warning: {len(stale)} cell folder(s) under {cells_root} are not in the matrix, "
             f"left out of every table (listed in {tables / 'orphans.csv'}): "
             + ", ".join(stale[:5]) + (" …" if len(stale) > 5 else ""))
    from ttt.report.plots import make_plots
    for line in make_plots(Path(cells_root), rows, plots):
        warn(f"warning: {line}")
    return rows


def _orphan(root: Path, cell: str) -> dict:
    try:
        status = _read_object(root / cell / "status.json").get("status")
    except ValueError:
        status = "corrupt"
    return {"cell": cell, "family": cell_params(cell)[0], "status": status}
