"""Loss on the repeated frames of an offset set (:mod:`ttt.data.recurrence`), per row, for one
checkpoint: TTT as trained and, when the model has TTT layers, its TTT-off twin (the same weights,
no updates).

Why per row: the report (:mod:`ttt.control.suite_report`) resamples conversations and seeds,
so it needs every row's value, not a mean. Values are mean NLL in nats per valid token over the
copy span ``[start, end)``: the text stream (padding included: a model that recalls a copy also
knows where its words are not) and the 8 Moshi audio codebooks (Moshi's own channel, what the
model is trained to produce; moshi's masks drop the positions its delays leave undefined).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ttt.training.held_out import span_means, token_losses, twin_conditions


def span_nll(lm, rows: torch.Tensor, spans: list, batch: int = 32) -> dict[str, np.ndarray]:
    """{"text": [R], "audio": [R]} mean NLL over each row's span (NaN for a row without one)."""
    device = next(lm.parameters()).device
    text_out, audio_out = np.full(len(rows), np.nan), np.full(len(rows), np.nan)
    for lo in range(0, len(rows), batch):
        text, audio = token_losses(lm, rows[lo:lo + batch].to(device))
        for j in range(text.shape[0]):
            if spans[lo + j] is not None:
                text_out[lo + j], audio_out[lo + j] = span_means(text[j], audio[j], spans[lo + j])
    return {"text": text_out, "audio": audio_out}


def evaluate_set(checkpoint: str | os.PathLike, set_dir: str | os.PathLike, device: str = "cpu",
                 batch: int = 32) -> dict:
    """Every row's copy-span NLL under each condition of the checkpoint (``on``, ``off``)."""
    from ttt.data.recurrence import read_offset_set
    from ttt.moshi.model import load_checkpoint

    rows, manifest = read_offset_set(set_dir)
    lm = load_checkpoint(checkpoint, device=device).lm.eval()
    spans = [tuple(r["copy"]) for r in manifest["rows"]]
    result = {"checkpoint": str(checkpoint), "set": str(set_dir),
              "codes_sha256": manifest["codes_sha256"],
              "context": lm.transformer.layers[0].self_attn.context,
              "num_layers": len(lm.transformer.layers), "conditions": {}}
    for name, condition in twin_conditions(lm).items():
        with condition():
            nll = span_nll(lm, rows, spans, batch)
        result["conditions"][name] = {k: v.tolist() for k, v in nll.items()}
    return result


def main(argv: list[str] | None = None) -> int:
    import argparse

    from ttt.base.files import write_text

    parser = argparse.ArgumentParser(prog="python -m ttt.control.offsets", description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--set", required=True, help="offset set folder (ttt.data.recurrence)")
    parser.add_argument("--out", required=True, help="JSON to write")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    result = evaluate_set(args.checkpoint, args.set, args.device, args.batch)
    write_text(args.out, json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
