"""The ``teacher_forced`` cell mode: the conversation streamed in blocks through the model, its
per-token losses as sliding perplexity, the stream watched by :class:`StreamMonitor`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ttt.base.files import write_csv
from ttt.eval.cell_outputs import telemetry_summary, write_plots
from ttt.eval.checks import ab_twin, upstream_regression
from ttt.data.conversations import FRAME_RATE
from ttt.eval.metrics import perplexity, sliding_perplexity, teacher_forced_nll
from ttt.eval.modes import CellRun, mode
from ttt.eval.phases import peak_memory
from ttt.moshi.surgery import ttt_layers
from ttt.session.diagnostics import Diagnostics
from ttt.session.monitor import MonitoredInput, MonitorSettings, MonitorSinks, StreamMonitor

TOKEN_NLL_FILE = "token_nll.npz"


@mode("teacher_forced", conversations_only=True)
def run_teacher_forced(run: CellRun, inputs: list[torch.Tensor] | None = None) -> dict:
    """``inputs``: the code tensors of the run's items when the caller has them (the cell benchmark)."""
    cfg, lm = run.cfg, run.bundle.lm
    chunk = run.bundle.ttt.chunk_size if ttt_layers(lm) else None
    block = teacher_forced_block(cfg.block, chunk)
    window = max(1, int(round(cfg.window_s * FRAME_RATE)))
    rows, per_step, frames, sinks = [], [], 0, MonitorSinks()
    settings = MonitorSettings(chunk=chunk, log_every=20 * block, frame_rate=FRAME_RATE,
                               diagnostics_every=cfg.diagnostics_every,
                               clip_saturation=cfg.clip_saturation)
    diag = Diagnostics(lm) if cfg.diagnostics_every and ttt_layers(lm) else None
    diverged, text_all, audio_all, offset, first = False, [], [], 0, None
    with run.phases("prepare"):
        if inputs is None:
            inputs = [run.codes(item).to(cfg.device) for item in run.items]
        run.bundle.release_mimi()  # encoded (or cached): its weights leave the device
        warm_up(lm, inputs[0], chunk, diag, block)
    for n, codes in enumerate(inputs):
        T = codes.shape[-1]
        watched = MonitoredInput(
            T, log=lambda m, n=n: run.log(f"[{cfg.cell}] item {n + 1}/{len(inputs)}: {m}"),
            offset=offset, row_fields={"item": n}, log_fields={"cell": cfg.cell, "item": n})
        monitor = StreamMonitor(lm, settings, watched, sinks, diag)
        with run.phases("run"):
            nll = teacher_forced_nll(lm, codes, block=block, on_block=monitor.observe,
                                     head=chunk if cfg.ab and n == 0 else 0)
        per_step += monitor.per_step_ms()
        frames += sum(monitor.block_steps)
        diverged = monitor.diverged
        if n == 0 and not diverged:
            first = nll
        text_all.append(nll.text[0])
        audio_all.append(nll.audio[0])
        for start, ppl in sliding_perplexity(nll.text[0], window):
            audio_ppl = perplexity(nll.audio[0][:, start:start + window])
            rows.append({"item": n, "start_s": (offset + start) / FRAME_RATE, "text_ppl": ppl,
                         "audio_ppl": audio_ppl})
        offset += T
        if diverged:
            run.log(f"[{cfg.cell}] diverged at item {n + 1}: stopping, partial results kept")
            break
    text = np.concatenate(text_all)
    audio_tokens = np.concatenate([a.reshape(-1) for a in audio_all])
    with run.phases("run"):
        ab = ab_twin(lm, inputs[0], chunk, block, first) if cfg.ab and ttt_layers(lm) else None
        regression = (upstream_regression(cfg, run.bundle, run.first_block())
                      if cfg.check_upstream else None)
    if diag is not None:
        diag.close()
    telemetry, block_ms = sinks.telemetry, sinks.block_ms
    with run.phases("write"):
        write_token_nll(run.tmp / TOKEN_NLL_FILE, text_all, audio_all,
                        lm.transformer.layers[0].self_attn.context)
        write_csv(run.tmp / "timeseries.csv", rows)
        write_csv(run.tmp / "telemetry.csv", telemetry)
        write_csv(run.tmp / "diagnostics.csv", sinks.diagnostics)
        write_plots(run.tmp, rows, telemetry)
    total_ms = sum(block_ms)
    return {
        "perplexity": {"text": perplexity(text), "audio": perplexity(audio_tokens)},
        "wer": None,
        "throughput": {"frames_per_s": 1000 * frames / total_ms if total_ms else None,
                       "tokens_per_s": 1000 * frames / total_ms if total_ms else None,
                       "block": block,
                       "ms_per_block_p50": float(np.percentile(block_ms, 50)),
                       "ms_per_block_p90": float(np.percentile(block_ms, 90)),
                       "ms_per_step_p50": float(np.percentile(per_step, 50)),
                       "ms_per_step_p90": float(np.percentile(per_step, 90)),
                       "rtf": float(np.percentile(per_step, 50)) / (1000 / FRAME_RATE)},
        "memory": {"run_peak_bytes": peak_memory(cfg.device)},
        "ttt_telemetry": telemetry_summary(telemetry),
        "diverged": diverged,
        "steps": offset,
        "ab": ab,
        "regression": regression,
    }


def write_token_nll(path: Path, text: list[np.ndarray], audio: list[np.ndarray], context: int) -> None:
    """Every scored token's NLL, per conversation (``text_<n>`` [T], ``audio_<n>`` [dep_q, T],
    NaN where unscored) and the attention context in frames: the effect verdicts pair them with
    the TTT-off twin's conversation by conversation, before and beyond the context, and chunk by
    chunk along the stream (``ttt.base.paired_effect``)."""
    arrays = {f"text_{n}": t.astype(np.float32) for n, t in enumerate(text)}
    arrays.update({f"audio_{n}": a.astype(np.float32) for n, a in enumerate(audio)})
    with open(path, "wb") as f:
        np.savez_compressed(f, context=np.int64(context), **arrays)


def teacher_forced_block(block: int, chunk: int | None) -> int:
    """Steps per teacher-forced block: ``block`` rounded down to a multiple of the TTT chunk (at
    least one chunk), so telemetry rows fall on update boundaries."""
    return block if not chunk else max(chunk, block // chunk * chunk)


def warm_up(lm, codes: torch.Tensor, chunk: int | None, diag=None, block: int | None = None) -> None:
    """Run the block shapes a timed pass can meet (3, 2 and 1 steps, and two whole TTT chunks
    with a tail) once in a throwaway streaming session, with one diagnostics record, so
    torch.compile's first compile and its dynamic-shape recompile (a shorter last block) and the
    first whole-chunk TTT block happen here and not inside the timed run (the first TTT-on pass
    of a process paid ≈ 0.3 s more than later ones at 7B on an H100). On CUDA the whole-chunk
    block is the pass's own first block (``block`` frames, rings of the pass's size, then it
    stops), so the allocator's growth, cuDNN's attention plans and cuBLAS's choices for the
    pass's shapes are paid here too, outside the timed run (not measured on a GPU yet)."""
    teacher_forced_nll(lm, codes[:, :, :5], block=3)
    teacher_forced_nll(lm, codes[:, :, :1], block=1)
    if chunk and codes.shape[-1] > chunk:
        def record(_end, _nll, stop=False):
            if diag is not None:
                diag.record()
            return stop
        if codes.is_cuda and block:  # the pass's first block, KV rings sized as in the pass
            teacher_forced_nll(lm, codes, block=block, on_block=lambda e, x: record(e, x, stop=True))
        else:
            n = min(codes.shape[-1], 2 * chunk + 2)
            teacher_forced_nll(lm, codes[:, :, :n], block=n, on_block=record)
        if diag is not None:
            diag.previous.clear()  # the first real record compares with nothing, as before
