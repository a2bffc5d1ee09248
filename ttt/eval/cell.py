"""Run one matrix cell end to end: model, data, mode, metrics, telemetry, outputs.

A cell writes into a temporary sibling of its output directory and renames it into place when
done, so a cell directory is either complete or absent (a failed run leaves nothing behind).
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch

from ttt.base.memory import refuse_unless_fits
from ttt.base.outdir import check_output, check_writable_dir, claim_output, remove_dead_temporaries
from ttt.base.result import SCHEMA_VERSION, checked
from ttt.base.config import MODES, CellConfig, load_cell_config
from ttt.eval.cell_outputs import write_json
from ttt.eval.checks import embedding_plumbing
from ttt.data.conversations import DataError, read_manifest
from ttt.data.demo import write_demo_manifest
from ttt.eval.modes import CellRun, lookup
from ttt.eval.phases import Phases, Resident, peak_memory, reset_peak_memory
# The mode modules register their modes when imported (ttt/eval/modes.py).
import ttt.eval.playback  # noqa: F401
import ttt.eval.streamed  # noqa: F401
import ttt.eval.teacher_forced  # noqa: F401
from ttt.eval.streamed import refuse_foreign_snapshots, replay_dir
from ttt.moshi.checkpoints import resolve_checkpoint
from ttt.moshi.model import CheckpointError, load_checkpoint
from ttt.moshi.surgery import ttt_layers
from ttt.moshi.tiny import DEMO_WORDS


def run_cell(cfg: CellConfig, out_dir: str | os.PathLike, log=print, fresh: bool = False) -> dict:
    """Run ``cfg`` and write its directory atomically; returns metrics.json's content. One run per
    ``out_dir`` (an OS lock, see outdir.py). A streamed cell resumes from its snapshots unless
    ``fresh`` (they are discarded; a snapshot of another config, model or input is refused)."""
    out = Path(out_dir)
    check_output(out)
    check_device(cfg.device)
    check_writable_dir(Path(cfg.cache_dir), "cache_dir")
    with claim_output(out):
        if fresh and replay_dir(out).exists():
            shutil.rmtree(replay_dir(out))
            log(f"[{cfg.cell}] --fresh: discarded the snapshots in {replay_dir(out)}")
        return _run_claimed(cfg, out, log)


def _run_claimed(cfg: CellConfig, out: Path, log) -> dict:
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    torch.manual_seed(cfg.seed)
    cache = Path(cfg.cache_dir)
    phases = Phases(cfg.device)
    mode = lookup(cfg.mode)
    with phases("prepare"):
        items = cell_items(cfg, cache)
        sources = resolve_checkpoint(cfg.model, cfg.base, cache / "models")
        refuse_foreign_snapshots(cfg, out, sources)
    with phases("load"), Resident() as resident:
        # a mode that runs no model step: TTT off, so nothing claims fast weights that never ran
        ttt_cfg = cfg.ttt if mode.runs_model else {"enabled": False}
        bundle = load_checkpoint(sources, ttt=ttt_cfg, yarn=cfg.yarn, device=cfg.device,
                                 dtype=getattr(torch, cfg.dtype), seed=cfg.seed, base=cfg.base,
                                 cache_root=cache / "models")
    refuse_unless_fits(ttt_buffer_bytes(bundle.lm), cfg.device,
                       f"ttt.chunk_size {bundle.ttt.chunk_size}" if bundle.ttt else "ttt")
    load = {"load_s": round(phases.totals["load"], 3), "memory": load_memory(cfg.device, resident)}
    reset_peak_memory(cfg.device)  # the run's peak, without the load transient
    for stale in remove_dead_temporaries(out):  # left by a preempted or killed attempt
        log(f"[{cfg.cell}] removed {stale.name}, left by a dead run")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        run = CellRun(cfg, bundle, items, cache, tmp, out, log, phases)
        metrics = mode.run(run)
        metrics.setdefault("requeues", 0)
        metrics["memory"] = {**load["memory"], "run_peak_bytes": metrics["memory"]["run_peak_bytes"]}
        metrics["load_s"] = load["load_s"]
        with phases("run"):
            ttt = bool(ttt_layers(bundle.lm))
            plumbing = embedding_plumbing(bundle.lm, run.first_block()) if ttt else None
        metrics.update(cell=cfg.cell, family=cfg.family, mode=cfg.mode,
                       model_path=str(Path(bundle.directory).resolve()),
                       ttt=ttt,
                       model_layers=len(bundle.lm.transformer.layers),
                       plumbing=plumbing,
                       config={**cfg.to_dict(),
                               "resolved_ttt": bundle.ttt.to_dict() if bundle.ttt else None,
                               "resolved_yarn": bundle.yarn.to_dict() if bundle.yarn else None},
                       provenance=_provenance(cfg, started))
        with phases("write"):
            metrics["timing"] = phases.seconds()  # metrics.json's own writing is the rest
            metrics["schema_version"] = SCHEMA_VERSION
            # Typed and checked before it is written: a renamed or mistyped metric fails here,
            # in the cell's own tests, not as a blank column in a report later.
            metrics = checked(metrics, str(out / "metrics.json")).to_dict()
            write_json(tmp / "metrics.json", metrics)
            tmp.rename(out)
        shutil.rmtree(replay_dir(out), ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return metrics


def load_memory(device: str, resident: Resident) -> dict:
    """metrics.json ``memory`` of the load, labelled by what was measured: on CUDA the
    allocator's peak; on the CPU what stayed resident (RSS growth) and the anonymous peak, not
    the process's peak RSS (file pages of the mapped checkpoint and the imports inflated it)."""
    if device.startswith("cuda"):
        return {"measure": "cuda_allocated", "load_peak_bytes": peak_memory(device)}
    return {"measure": "cpu_resident", "load_peak_bytes": resident.anon_peak,
            "load_anon_peak_bytes": resident.anon_peak, "load_rss_delta_bytes": resident.rss_delta}


def check_device(device: str) -> None:
    """One line, before any loading, instead of torch's traceback deep inside the model build."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} but CUDA is not available on {platform.node()} "
                         "(run the cell on a GPU node, or set device: cpu)")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise ValueError(f"device: {device!r} but this host has {torch.cuda.device_count()} "
                         "CUDA device(s)")


# Writing a demo conversation and reading it back holds about four stereo float32 copies of it at
# once (measured: 773 kB per second of audio at peak, over 600 s).
DEMO_PEAK_BYTES_PER_S = 4 * 2 * 4 * 24000


def ttt_buffer_bytes(lm) -> int:
    """Bytes of the chunk buffers one streaming session allocates in the TTT layers (batch 1):
    In-Place keeps C rows of Z and X₀ per layer, TTT-MLP C rows of keys and targets per head."""
    total = 0
    for layer in ttt_layers(lm).values():
        size = next(layer.parameters()).element_size()
        if hasattr(layer, "dims"):
            d, hid = layer.dims
            total += layer.cfg.chunk_size * (d + hid) * size
        else:
            total += 2 * layer.cfg.chunk_size * layer.num_heads * layer.head_dim * size
    return total


def cell_items(cfg: CellConfig, cache: Path):
    """The inputs of a cell (demo conversations are written on first use; a mode may ship its own
    demo, as playback does its recording in ttt/assets/playback/)."""
    mode = lookup(cfg.mode)
    if "manifest" in cfg.data:
        items = read_manifest(cfg.data["manifest"])
        if mode.conversations_only and any(i.reference is not None for i in items):
            raise DataError(f"{cfg.data['manifest']}: {cfg.mode} needs stereo conversations "
                            "with alignments, not mono recordings with text")
        return items
    if mode.demo is not None:
        return read_manifest(mode.demo)
    demo = dict(cfg.data["demo"])
    durations = [float(d) for d in demo.get("durations", [20.0])]
    refuse_unless_fits(int(DEMO_PEAK_BYTES_PER_S * max(durations)), "cpu",
                       f"data.demo.durations {max(durations):g} s")
    seed = int(demo.get("seed", 0))
    return read_manifest(write_demo_manifest(cache / "demo", durations, seed, DEMO_WORDS,
                                             recurrent=bool(demo.get("recurrent", False))))


def git_sha(directory: Path) -> str | None:
    """The commit of the checkout holding ``directory``, with ``+dirty`` when tracked files differ
    from it: a run of edited code must not pass for a run of the commit."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=directory,
                              timeout=10).stdout.strip()
    try:
        sha = git("rev-parse", "HEAD")
        return (sha + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
                if sha else None)
    except (OSError, subprocess.SubprocessError):
        return None


def _provenance(cfg: CellConfig, started: str) -> dict:
    import moshi

    from ttt import __version__
    sha = git_sha(Path(__file__).parent)
    device = torch.cuda.get_device_name() if cfg.device.startswith("cuda") else platform.processor() or "cpu"
    return {"git_sha": sha, "versions": {"torch": torch.__version__, "moshi": moshi.__version__,
                                         "ttt": __version__},
            "device": device, "seed": cfg.seed, "started_at": started,
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


__all__ = ["CellConfig", "load_cell_config", "run_cell", "CheckpointError", "DataError"]
