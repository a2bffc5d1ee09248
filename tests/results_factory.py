"""Constructed ``results/`` folders, written like real runs (status.json, cell/metrics.json,
timeseries.csv, telemetry.csv, the job log with TTT-TELEMETRY lines, tables/cells.csv through
ttt.report.aggregate), so the verdict gates and the run comparison can be tested on planted faults."""
from __future__ import annotations

import copy
import json
from pathlib import Path

from ttt.report.aggregate import collect, mark_ablation, mark_lr_grid, pair_twins
from ttt.base.files import write_csv

TTT = {"enabled": True, "variant": "inplace", "layers": None, "start_layer": 1, "layer_frequency": 2,
       "chunk_size": 16, "lr": 0.001, "conv_kernel_size": 2, "conv_padding": "right",
       "delta_clip_fro_norm": 1.0, "target_source": "embeddings", "init_std": 0.5,
       "target_conv": True, "target_projection": True}
LAYERS = (1, 3)
STEPS = 160  # 10 chunks of 16


def telemetry_rows(layers=LAYERS, steps=STEPS, chunk=16, w0=5.0, drift=0.0, clips=0,
                   w_change=1e-3, gain=0.1):
    """Per chunk per layer, cumulative counters; ‖W‖ = w0 + drift · (fraction of the run),
    ‖W − W₀‖ = w_change per applied update; chunk i ≥ 1 has ℓ(W⁽⁰⁾) − ℓ(W⁽ⁱ⁾) = gain."""
    rows = []
    for n, step in enumerate(range(chunk, steps + 1, chunk), 1):
        for layer in layers:
            before = 1.0 - (gain if n >= 2 else 0.0)
            rows.append({"w_norm": w0 + layer * 0.1 + drift * step / steps, "w_drift": w_change * n,
                         "clip_events": min(n, clips), "updates": n, "last_delta_norm": 0.5,
                         "chunk_fill": 0, "inner_loss_initial": 1.0, "inner_loss_before": before,
                         "inner_loss_after": before - 0.1, "inner_gain": 1.0 - before,
                         "item": 0, "step": step, "layer": layer})
    return rows


def windows(ppl, n=6, noise=0.0):
    return [{"item": 0, "start_s": 2.0 * i, "text_ppl": ppl * (1 + noise * (-1) ** i),
             "audio_ppl": 10 * ppl * (1 + noise * (-1) ** i)} for i in range(n)]


def token_nll(mean, conversations=4, frames=160, context=32, spread=0.0, late=None, seed=0):
    """Per-token NLL arrays as a teacher-forced cell writes them: text [T] and audio [8, T] per
    conversation around ``mean`` nats (audio 2× it); ``spread``: each conversation's own offset
    (a different conversation, a different level); ``late``: the mean on the last half instead."""
    import numpy as np
    rng = np.random.default_rng(seed)
    text, audio = [], []
    for n in range(conversations):
        level = np.full(frames, mean + spread * rng.standard_normal())
        if late is not None:
            level[frames // 2:] += late - mean
        text.append(level + 0.01 * rng.standard_normal(frames))
        audio.append(np.tile(2 * level, (8, 1)) + 0.01 * rng.standard_normal((8, frames)))
        text[-1][0] = np.nan  # unscored positions exist
    return {"context": context, "text": text, "audio": audio}


def log_lines(cell, telemetry):
    steps = sorted({r["step"] for r in telemetry})
    lines = ["submitit INFO - Starting"]
    for step in steps[::3] + [steps[-1]] if steps else []:
        layers = {str(r["layer"]): {"updates": r["updates"], "clip_events": r["clip_events"],
                                    "w_norm": r["w_norm"], "last_delta_norm": r["last_delta_norm"]}
                  for r in telemetry if r["step"] == step}
        lines.append(f"[{cell}] item 1/1: step {step}/{STEPS}")
        lines.append("TTT-TELEMETRY " + json.dumps({"cell": cell, "item": 0, "step": step,
                                                     "layers": layers}))
    return lines


def speed(ms):
    """metrics.json's ``throughput`` at ``ms`` per step (p50)."""
    return {"ms_per_step_p50": ms, "ms_per_step_p90": ms * 1.1, "rtf": ms / 80,
            "tokens_per_s": 1000 / ms}


def cell_spec(path, on, ppl=20.0, ms=1.0, ttt=None, **extra):
    """A completed teacher-forced cell; ``extra`` overrides metrics keys or gives files,
    ``ttt`` overrides resolved TTT keys."""
    telemetry = telemetry_rows() if on else []
    metrics = {
        "cell": path, "family": path.split("/")[0], "mode": "teacher_forced", "ttt": on,
        "model_path": "/models/tiny", "model_layers": 4, "steps": STEPS, "load_s": 0.5,
        "timing": {"prepare_s": 0.1, "load_s": 0.5, "run_s": 2.0, "write_s": 0.1},
        "config": {"cell": path, "dtype": "float32",
                   "resolved_ttt": {**TTT, **(ttt or {})} if on else None, "resolved_yarn": None},
        "perplexity": {"text": ppl, "audio": 10 * ppl}, "wer": None,
        "throughput": speed(ms),
        "memory": {"load_peak_bytes": 900_000, "run_peak_bytes": 1_000_000},
        "ttt_telemetry": {"updates": 20, "clip_events": 0, "final_w_norm": {"1": 5.1, "3": 5.3},
                          "max_delta_norm": 0.5, "max_w_rel_change": 0.002,
                          "next_chunk_gain": {str(layer): {"mean": 0.1, "rel": 0.1, "positive": 1.0,
                                                           "chunks": 9} for layer in LAYERS}}
        if on else None,
        "diverged": False, "requeues": 0, "ab": None, "regression": None,
        "plumbing": {"layers": list(LAYERS), "max_abs_diff": 0.0, "steps": 16} if on else None,
        "provenance": {"git_sha": "abc", "device": "cpu"},
    }
    spec = {"path": path, "status": "ok", "metrics": metrics, "timeseries": windows(ppl),
            "telemetry": telemetry, "log": None, "token_nll": None}
    for key, value in extra.items():
        if key in spec:
            spec[key] = value
        else:
            metrics[key] = value
    return spec


# The production flags of the system we replace: each update ≤ lr·τ = 1e-8 in Frobenius norm.
PRODUCTION = {"lr": 1e-3, "delta_clip_fro_norm": 1e-5}
STRESS = "telemetry/tau~1e-05/ttt~on"


def inert_spec(path, ppl=20.0, nll=None):
    """A TTT-on cell under the production flags: every update clipped, ‖W − W₀‖/‖W₀‖ ~ 1e-9
    (below fp32 resolution), windows (and ``nll``, the twin's token NLLs) equal to the TTT-off
    twin's, no next-chunk gain."""
    return cell_spec(path, True, ppl=ppl, ttt=PRODUCTION, token_nll=nll,
                     telemetry=telemetry_rows(clips=99, w_change=1e-8, gain=0.0))


def healthy_specs():
    """A small matrix where every gate passes: long form and YaRN where TTT helps (4 conversations,
    0.1 and 0.05 nats/token better than the twin), the YaRN A/B, the
    TTT-off regression cell, the τ-stress family (clips, no effect), an lr grid whose best lr lies
    inside it and whose largest lr blows perplexity up beyond 2× TTT off."""
    specs = [
        cell_spec("long_form/duration~60/ttt~on", True, ppl=19.0, ms=1.01, token_nll=token_nll(2.9)),
        cell_spec("long_form/duration~60/ttt~off", False, ppl=20.0, ms=1.0, token_nll=token_nll(3.0)),
        cell_spec("yarn/tokens~64/ttt~on", True, ppl=19.5, ms=2.02, token_nll=token_nll(2.95),
                  ab={"pre_update_logits_rel_err": 0.0}),
        cell_spec("yarn/tokens~64/ttt~off", False, ppl=20.0, ms=2.0, token_nll=token_nll(3.0)),
        cell_spec("regression/ttt~off", False, regression={"bitwise_equal": True, "max_abs_diff": 0.0,
                                                           "steps": 16}),
        inert_spec(STRESS),
        cell_spec("telemetry/tau~1e-05/ttt~off", False, ppl=20.0),
        cell_spec("lr_grid/lr~0.001/chunk~16/ttt~on", True, ppl=19.0),
        cell_spec("lr_grid/lr~0.01/chunk~16/ttt~on", True, ppl=18.0),
        cell_spec("lr_grid/lr~0.1/chunk~16/ttt~on", True, ppl=45.0),
        cell_spec("lr_grid/ttt~off", False, ppl=20.0),
    ]
    return specs


def write_results(root: Path, specs: list[dict]) -> Path:
    """Write the cells and aggregate tables/cells.csv (no plots)."""
    for spec in specs:
        d = root / "cells" / spec["path"]
        (d / "jobs").mkdir(parents=True, exist_ok=True)
        job = str(abs(hash(spec["path"])) % 100000)
        log = d / "jobs" / f"{job}_0_log.out"
        status = {"job_id": job, "executor": "local", "log": str(log), "status": spec["status"]}
        if spec["status"] in ("ok", "diverged"):
            cell = d / "cell"
            cell.mkdir(exist_ok=True)
            (cell / "metrics.json").write_text(json.dumps(spec["metrics"], indent=1))
            write_csv(cell / "timeseries.csv", spec["timeseries"])
            write_csv(cell / "telemetry.csv", spec["telemetry"])
            if spec.get("token_nll") is not None:
                write_token_nll_file(cell / "token_nll.npz", spec["token_nll"])
            lines = spec["log"] if spec["log"] is not None else log_lines(spec["path"], spec["telemetry"])
            log.write_text("\n".join(lines) + "\n")
        else:
            status["error"] = "RuntimeError: boom"
        (d / "status.json").write_text(json.dumps(status))
    aggregate_tables(root)
    return root


def write_token_nll_file(path: Path, nll: dict) -> None:
    """As ttt.eval.teacher_forced.write_token_nll writes it (that module needs torch)."""
    import numpy as np
    arrays = {f"text_{n}": t.astype(np.float32) for n, t in enumerate(nll["text"])}
    arrays.update({f"audio_{n}": a.astype(np.float32) for n, a in enumerate(nll["audio"])})
    np.savez_compressed(path, context=np.int64(nll["context"]), **arrays)


def aggregate_tables(root: Path) -> None:
    (root / "tables").mkdir(parents=True, exist_ok=True)
    rows = mark_ablation(mark_lr_grid(pair_twins(collect(root / "cells"))))
    write_csv(root / "tables" / "cells.csv", rows)


def modified(specs, path, **changes):
    """A deep copy of ``specs`` where cell ``path`` gets ``changes`` (metrics keys or files)."""
    specs = copy.deepcopy(specs)
    spec = next(s for s in specs if s["path"] == path)
    for key, value in changes.items():
        if key in spec:
            spec[key] = value
        else:
            spec["metrics"][key] = value
    return specs
