"""What every cell mode writes beside its tables: metrics.json, the telemetry summary in it, and
the perplexity and telemetry plots."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ttt.base.files import save_figure
from ttt.data.conversations import FRAME_RATE
from ttt.session.telemetry import next_chunk_gain


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def telemetry_summary(telemetry: list[dict]) -> dict | None:
    """metrics.json's ``ttt_telemetry`` from the per-chunk rows. Counters are cumulative within
    one input (each input streams from a fresh state), so totals add each input's last row."""
    if not telemetry:
        return None
    per_input = {(row.get("item"), row["layer"]): row for row in telemetry}
    last = {row["layer"]: row for row in telemetry}
    return {"updates": int(sum(r["updates"] for r in per_input.values())),
            "clip_events": int(sum(r["clip_events"] for r in per_input.values())),
            "final_w_norm": {str(k): r["w_norm"] for k, r in last.items()},
            "max_delta_norm": max(r["last_delta_norm"] for r in telemetry),
            "max_w_rel_change": max(r["w_drift"] / r["w_norm"] if r["w_norm"] else 0.0
                                    for r in telemetry),
            "next_chunk_gain": next_chunk_gain(telemetry)}

def write_plots(tmp: Path, rows: list[dict], telemetry: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if rows:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.plot([r["start_s"] for r in rows], [r["text_ppl"] for r in rows], label="text")
        ax.plot([r["start_s"] for r in rows], [r["audio_ppl"] for r in rows], label="audio")
        ax.set(xlabel="time (s)", ylabel="perplexity (window)", title="Sliding perplexity")
        ax.legend()
        fig.tight_layout()
        save_figure(fig, tmp / "perplexity.png")
        plt.close(fig)
    if not telemetry:
        return
    layers = sorted({r["layer"] for r in telemetry})
    panels = [("w_norm", "‖W‖_F"), ("clip_events", "clip events (cumulative)"),
              ("inner_loss", "Figure-5 inner loss"),
              ("inner_gain", "next-chunk gain ℓ(W⁽⁰⁾) − ℓ(W⁽ⁱ⁾)")]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.2))
    for ax, (key, title) in zip(axes, panels):
        for layer in layers:
            rs = [r for r in telemetry if r["layer"] == layer]
            x = [r["step"] / FRAME_RATE for r in rs]
            if key == "inner_loss":
                ax.plot(x, [r["inner_loss_initial"] for r in rs], ":", label=f"L{layer} W0")
                ax.plot(x, [r["inner_loss_before"] for r in rs], "--", label=f"L{layer} before")
                ax.plot(x, [r["inner_loss_after"] for r in rs], label=f"L{layer} after")
            else:
                ax.plot(x, [r.get(key) for r in rs], label=f"layer {layer}")
        if key == "inner_gain":
            ax.axhline(0.0, color="grey", lw=0.5)
        ax.set(xlabel="time (s)", title=title)
        ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, tmp / "telemetry.png")
    plt.close(fig)
