"""Subprocess for the replay test: stream a tiny TTT moshi through TTTLMGen with sampling.

python replay_worker.py full N            → run N steps
python replay_worker.py first N K PATH    → run K steps, save a snapshot to PATH, stop
python replay_worker.py resume N PATH     → new process: restore PATH, run to N
Prints JSON: the tokens of every step and the final telemetry.
"""
import json
import os
import sys

os.environ.setdefault("NO_TORCH_COMPILE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

import ttt  # noqa: E402
from ttt.session.snapshot import load_snapshot, restore, save_snapshot, snapshot  # noqa: E402
from conftest import randomize_ttt_params, random_sequence, tiny_lm  # noqa: E402


def main(argv):
    mode, n = argv[0], int(argv[1])
    cfg = ttt.TTTConfig(layers=(1, 3), chunk_size=5, lr=0.5, delta_clip_fro_norm=0.05,
                        target_source=os.environ.get("REPLAY_TARGET_SOURCE", "embeddings"))
    lm = randomize_ttt_params(ttt.apply_ttt(tiny_lm(0), cfg))
    gen = ttt.TTTLMGen(lm, temp=1.0, temp_text=1.0)
    user = random_sequence(1, n, seed=21)[:, 9:]
    torch.manual_seed(1234)
    tokens, start = [], 0
    with gen.streaming(1):
        if mode == "resume":
            extra = restore({"gen": gen, "lm": lm}, load_snapshot(argv[2]))
            start, tokens = extra["step"], extra["tokens"]
        for t in range(start, n):
            out = gen.step(user[:, :, t:t + 1])
            tokens.append(None if out is None else out.flatten().tolist())
            if mode == "first" and t + 1 == int(argv[2]):
                save_snapshot(argv[3], snapshot({"gen": gen, "lm": lm},
                                                extra={"step": t + 1, "tokens": tokens}))
                break
        telemetry = {i: {k: v.tolist() for k, v in s.items()} for i, s in ttt.ttt_state(lm).items()}
    print(json.dumps({"tokens": tokens, "telemetry": telemetry}))


if __name__ == "__main__":
    main(sys.argv[1:])
