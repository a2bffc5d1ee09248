"""The ASR stage as a job: run in this process, or submitted through the launcher (submitit) where
the launcher is SLURM; and its command, ``python -m ttt asr``. Kept apart from ``ttt.asr`` (the
recogniser and the scores) so that evaluation never imports the launch layer."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from ttt.asr.recogniser import (UNTRAINED_CODEC, AsrConfig, AsrError, load_asr_config,
                                transcribe_file)
from ttt.asr.scoring import run_stage
from ttt.launch.launcher import _executor, read_launcher


def submit_stage(cell_dir: Path, out_dir: Path, cfg: AsrConfig, cache_dir, threads: int,
                 launcher: Mapping[str, Any], log_dir: Path, log=print) -> dict:
    """Run the stage as its own job through the launcher (submitit: a SLURM job with the
    launcher's GPUs, where ``device: auto`` then finds CUDA), and wait for it."""
    executor, cluster = _executor(launcher, Path(log_dir), f"ttt-asr-{Path(cell_dir).parent.name}")
    job = executor.submit(run_stage, str(cell_dir), str(out_dir), cfg, cache_dir, threads)
    log(f"asr: submitted job {job.job_id} ({cluster}); log: {job.paths.stdout}")
    try:
        return job.result()
    except Exception as exc:  # noqa: BLE001 - the job died (cancelled, timed out): say so, go on
        summary = {"status": "failed", "reason": f"job {job.job_id}: {str(exc).strip().splitlines()[-1]}"}
        out = Path(out_dir)
        tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / "asr.json").write_text(json.dumps(summary, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        return summary


def asr_command(args) -> int:
    """``python -m ttt asr``: exit 0 written (also for a cell without audio), 2 bad input."""
    import sys

    try:
        cfg = load_asr_config(args.config)
        if args.wav:
            heard = transcribe_file(args.wav, cfg, args.cache, args.threads,
                                    log=lambda m: print(m, file=sys.stderr))
            print(heard["text"])
            return 0
        if not args.cell or not args.out:
            raise AsrError("asr: give --cell DIR and --out DIR (or --wav FILE)")
        log = lambda m: print(m, file=sys.stderr)  # noqa: E731
        launcher = read_launcher(args.launcher) if args.launcher else None
        if launcher is not None and launcher["executor"] == "slurm":
            summary = submit_stage(Path(args.cell), Path(args.out), cfg, args.cache, args.threads,
                                   launcher, Path(args.out).parent / "asr_jobs", log)
        else:  # locally the stage runs in this process (no second interpreter to start)
            summary = run_stage(args.cell, args.out, cfg, args.cache, args.threads, log=log)
    except (AsrError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary["status"] == "ok":
        c = summary["consistency"]
        wer = "n/a" if c["wer"] is None else f"{c['wer']:.3f}"
        if summary.get("codec_untrained"):  # the verdict never judges it: say so here too
            wer = f"{UNTRAINED_CODEC} (measured {wer})"
        print(f"{args.cell}: consistency WER {wer}, "
              f"{summary['indicators']['asr_words']} words heard → {args.out}")
    else:
        print(f"{args.cell}: {summary['status']}: {summary['reason']} → {args.out}")
    return 0
