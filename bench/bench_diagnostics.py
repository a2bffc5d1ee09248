"""Cost of the attention-vs-TTT diagnostics, and of the TTT-MLP hybrid, side by side in ONE run.

Streaming generation through ``ttt.TTTLMGen`` (CUDA graphs on a GPU): TTT off; In-Place TTT and
the TTT-MLP hybrid on every 6th layer (``--every``), each without diagnostics and with
:class:`ttt.session.diagnostics.Diagnostics` recorded every 100, 10 and 1 steps. Prints ms/step p50 and
the ratio to the same model without diagnostics (cases interleaved over ``--rounds``).

    python bench/bench_diagnostics.py                                  # 7B config, bf16, CUDA
    python bench/bench_diagnostics.py --config tiny --device cpu --dtype float32 --steps 40
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from pathlib import Path

import torch
from moshi.models import loaders

import ttt
from ttt.session.diagnostics import Diagnostics
from ttt.moshi.tiny import TINY_LM_KWARGS

EVERY = (None, 100, 10, 1)


def session_ms(lm, steps: int, warmup: int, every: int | None, device: str) -> list[float]:
    gen = ttt.TTTLMGen(lm)
    diag = Diagnostics(lm) if every else None
    g = torch.Generator(device=device).manual_seed(0)
    user = torch.randint(0, lm.card, (1, 8, steps + warmup), device=device, generator=g)
    times = []
    with torch.no_grad(), gen.streaming(1):
        for t in range(steps + warmup):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            gen.step(user[:, :, t:t + 1])
            if diag is not None and (t + 1) % every == 0:
                diag.record()
            if device == "cuda":
                torch.cuda.synchronize()
            if t >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    if diag is not None:
        diag.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=["7b", "tiny"], default="7b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--every", type=int, default=6, help="TTT on every N-th layer")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    kwargs = dict(loaders._lm_kwargs) if args.config == "7b" else dict(TINY_LM_KWARGS)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    lm = loaders.get_moshi_lm(None, lm_kwargs=kwargs, device=args.device, dtype=dtype).eval()
    variants = {"off": None,
                "inplace": ttt.TTTConfig(layer_frequency=args.every, chunk_size=256),
                "ttt_mlp": ttt.TTTConfig(variant="ttt_mlp", layer_frequency=args.every,
                                         chunk_size=16, lr=0.1)}
    times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, cfg in variants.items():
            if cfg is not None:
                ttt.apply_ttt(lm, cfg)
            for every in (EVERY if cfg is not None else (None,)):
                key = f"{name}/diag_every_{every or 'off'}"
                times.setdefault(key, []).extend(session_ms(lm, args.steps, args.warmup, every,
                                                            args.device))
            if cfg is not None:
                ttt.remove_ttt(lm)
    p50 = {k: statistics.median(v) for k, v in times.items()}
    out = {"device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
           "torch": torch.__version__, "config": args.config, "dtype": args.dtype,
           "steps_per_round": args.steps, "rounds": args.rounds, "ms_per_step_p50": p50,
           "ratio_vs_same_model_without_diagnostics": {
               k: p50[k] / p50[k.split("/")[0] + "/diag_every_off"] for k in p50},
           "ratio_vs_ttt_off": {k: p50[k] / p50["off/diag_every_off"] for k in p50}}
    print(json.dumps(out, indent=2))
    if args.out or args.device == "cuda":
        path = Path(args.out or f"bench/results/{dt.date.today()}-diagnostics-"
                    f"{out['device'].replace(' ', '_')}.json")
        path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
