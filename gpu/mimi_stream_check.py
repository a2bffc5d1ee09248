"""Streamed vs one-call Mimi encode on a GPU (docs/checkpoints-and-data.md).

Why: the CPU measurements cover 60 s; this checks the same equality on the device that encodes the
long inputs (fp32, TF32 off, as ``ttt.control.gain encode``) and the peak GPU memory of both paths,
then streams a long stereo input (an hour by default) that one call could not hold.
Usage: ``python gpu/mimi_stream_check.py OUT.json [--compare-s 120] [--long-s 3600]``.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from moshi.models import loaders

from ttt.base.files import write_text
from ttt.data import mimi_encode
from ttt.data.conversations import SAMPLE_RATE
from ttt.data.demo import word_tone_turns
from ttt.moshi.tiny import DEMO_WORDS, randomize_mimi


def conversation(seconds: float, seed: int) -> torch.Tensor:
    """[2, samples] word-tone conversation with a partial last frame."""
    audio, _, _ = word_tone_turns(np.random.default_rng(seed), seconds, list(DEMO_WORDS),
                                  samples=int(seconds * SAMPLE_RATE) + 777)
    return torch.from_numpy(np.ascontiguousarray(audio.T))


def timed(mimi, audio, frames, device) -> tuple[torch.Tensor, float, float | None]:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with torch.no_grad():
        codes = mimi_encode.encode(mimi, audio, frames).cpu()
    if cuda:
        torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    return codes, time.perf_counter() - start, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out")
    parser.add_argument("--compare-s", type=float, default=120.0)
    parser.add_argument("--long-s", type=float, default=3600.0)
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run (no memory figures)")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)
    mimi = loaders.get_mimi(None, device="cpu", num_codebooks=8)
    randomize_mimi(mimi, 0)
    mimi = mimi.to(device).eval()
    audio = conversation(args.compare_s, seed=0)
    one, one_s, one_gib = timed(mimi, audio, None, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"device": name, "torch": torch.__version__,
              "chunk_frames": mimi_encode.CHUNK_FRAMES, "compare_s": args.compare_s,
              "one_call": {"seconds": one_s, "peak_gib": one_gib, "frames": one.shape[-1]}}
    for frames in (mimi_encode.CHUNK_FRAMES, 13):
        got, s, gib = timed(mimi, audio, frames, device)
        result[f"streamed_{frames}"] = {
            "seconds": s, "peak_gib": gib, "frames": got.shape[-1],
            "codes_differ": int((got != one).sum()), "codes": one.numel()}
    assert one.shape[-1] == math.ceil(audio.shape[-1] / mimi.frame_size)
    if args.long_s > 0:
        long_audio = conversation(args.long_s, seed=1)
        codes, s, gib = timed(mimi, long_audio, mimi_encode.CHUNK_FRAMES, device)
        result["long"] = {"audio_s": args.long_s, "seconds": s, "peak_gib": gib, "frames": codes.shape[-1]}
    write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
