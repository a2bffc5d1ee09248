"""The positive control's measurement: the held-out TTT-on vs TTT-off gain of a trained model on
conversations whose content recurs beyond the attention context (written by
:func:`ttt.data.demo.write_control_manifest`: recurrent ones copy their first part after a filler
longer than the context, plain ones have fresh words throughout, so whatever TTT gains on a plain
one is adaptation, not recall).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ttt.base.files import atomic_write, write_text
from ttt.base.paired_effect import REGIONS, difference_ci, paired_effect, pooled_nll
from ttt.data.demo import write_control_manifest


def _ppl(nll: np.ndarray) -> float:
    valid = nll[~np.isnan(nll)]
    return float(math.exp(valid.mean())) if valid.size else float("nan")


# ---- measurement ----------------------------------------------------------------------------

def token_nll(lm, codes) -> tuple[np.ndarray, np.ndarray]:
    """Per-position NLL of ``lm(codes)`` (the parallel form): text [T], audio [dep_q, T], NaN
    where moshi's masks are false. codes [1, 17, T]."""
    import torch

    from ttt.training.held_out import token_losses

    with torch.no_grad():
        text, audio = token_losses(lm, codes)
    return text[0].cpu().numpy(), audio[0].cpu().numpy()


def held_out_nll(lm, codes: list, ttt_off) -> list[dict]:
    """For each conversation: NLL arrays with TTT on (``lm`` as given) and off (inside
    ``ttt_off()``, the same weights with the original gated MLPs)."""
    rows = []
    for c in codes:
        c = c[None].to(next(lm.parameters()).device)
        on = token_nll(lm, c)
        with ttt_off():
            off = token_nll(lm, c)
        rows.append({"on": on, "off": off})
    return rows


def gain_table(rows: list[dict], recurrent: list[bool], context: int, resamples: int = 2000,
               seed: int = 0) -> dict:
    """Perplexity with TTT on and off, gain = ppl_off − ppl_on with a bootstrap 95 % CI over
    conversations, per stream (text, audio), region (all, before / beyond the context) and group
    (recurrent, plain), and the recurrent-minus-plain difference of gains with its CI. The same
    statistic and position split as the effect verdicts (``ttt.base.paired_effect``)."""
    rng = np.random.default_rng(seed)
    out = {}
    groups = {"recurrent": [i for i, r in enumerate(recurrent) if r],
              "plain": [i for i, r in enumerate(recurrent) if not r]}
    for s_index, stream in enumerate(("text", "audio")):
        for region in REGIONS:
            effects = {}
            for group, idx in groups.items():
                if not idx:
                    continue
                on = pooled_nll([rows[i]["on"][s_index] for i in idx], region, context)
                off = pooled_nll([rows[i]["off"][s_index] for i in idx], region, context)
                e = paired_effect(on, off, resamples=resamples, rng=rng)
                effects[group] = e
                out[f"{stream}.{region}.{group}"] = {
                    "ppl_on": e.ppl_on, "ppl_off": e.ppl_off, "gain": e.gain,
                    "rel_gain": e.rel_gain, "ci95": list(e.ci_gain), "conversations": e.conversations}
            if len(effects) == 2:
                rec, plain = effects["recurrent"], effects["plain"]
                out[f"{stream}.{region}.recurrent_minus_plain"] = {
                    "gain_difference": rec.gain - plain.gain,
                    "rel_gain_difference": rec.rel_gain - plain.rel_gain,
                    "ci95": list(difference_ci(rec, plain))}
    return out


def read_flags(manifest: str | os.PathLike) -> list[bool]:
    """The ``recurrent`` flag of every manifest line (False when absent)."""
    lines = [json.loads(x) for x in Path(manifest).read_text().splitlines() if x.strip()]
    return [bool(line.get("recurrent", False)) for line in lines]


def evaluate(checkpoint: str | os.PathLike, manifest: str | os.PathLike, *, cache_dir: str,
             device: str = "cpu", ttt: dict | None = None, untrained_seed: int | None = None,
             resamples: int = 2000) -> dict:
    """The held-out table of a checkpoint on a manifest of control conversations: TTT-on vs
    TTT-off gains by stream, region and group (``gain_table``). ``ttt`` overrides the
    checkpoint's TTT settings (e.g. the production flags lr 1e-3, τ 1e-5); with
    ``untrained_seed`` the same architecture freshly initialised is scored instead (TTT off)."""
    import torch
    from moshi.models import loaders

    from ttt.data.conversations import read_manifest
    from ttt.data.codes import conversation_codes
    from ttt.base.identity import file_digest
    from ttt.moshi.model import load_checkpoint
    from ttt.moshi.surgery import ttt_disabled

    bundle = load_checkpoint(checkpoint, ttt=ttt, device=device)
    lm = bundle.lm
    context = lm.transformer.layers[0].self_attn.context
    items = read_manifest(manifest)
    codes = [conversation_codes(bundle.mimi, bundle.tokenizer, item, Path(cache_dir) / "codes",
                                bundle.mimi_id)[0] for item in items]
    if untrained_seed is not None:
        torch.manual_seed(untrained_seed)
        kwargs = dict(bundle.sources.lm_kwargs)
        lm = loaders.get_moshi_lm(None, lm_kwargs=kwargs, device=device, dtype=torch.float32)
        from contextlib import nullcontext
        rows = held_out_nll(lm.eval(), codes, nullcontext)
    else:
        rows = held_out_nll(lm.eval(), codes, lambda: ttt_disabled(lm))
    flags = read_flags(manifest)
    table = gain_table(rows, flags, context, resamples=resamples)
    on_equals_off = all(np.array_equal(r["on"][0], r["off"][0], equal_nan=True)
                        and np.array_equal(r["on"][1], r["off"][1], equal_nan=True) for r in rows)
    max_diff = max(float(np.nanmax(np.abs(r["on"][k] - r["off"][k]))) for r in rows for k in (0, 1))
    return {"checkpoint": str(checkpoint), "manifest": str(manifest),
            "manifest_sha256": file_digest(Path(manifest)), "context": context,
            "frames": [int(c.shape[-1]) for c in codes], "ttt": bundle.ttt.to_dict() if bundle.ttt else None,
            "untrained_seed": untrained_seed, "on_equals_off": on_equals_off,
            "max_abs_nll_difference": max_diff, "table": table}


def encode_batched(bundle, manifest, cache_dir: str, batch: int) -> None:
    """Fill the codes cache that ``ttt.data.codes.load_codes`` reads, ``batch`` equal-length
    conversations per Mimi call (streamed in chunks past ``ONE_SHOT_MAX_S``, as ``mimi_codes``), in
    strict fp32 (no TF32: the codes must equal a CPU encode's)."""
    import torch

    from safetensors.torch import save_file

    from ttt.data.codes import _codes_key, encode_chunk_frames
    from ttt.data.conversations import load_audio, read_manifest
    from ttt.data.mimi_encode import encode

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cache = Path(cache_dir) / "codes"
    cache.mkdir(parents=True, exist_ok=True)
    todo = [(item, cache / f"{_codes_key(bundle.mimi, item, bundle.mimi_id)[:32]}.safetensors")
            for item in read_manifest(manifest)]
    todo = [(item, path) for item, path in todo if not path.is_file()]
    for lo in range(0, len(todo), batch):
        part = todo[lo:lo + batch]
        audio = [torch.from_numpy(load_audio(item.path)) for item, _ in part]
        plans = [encode_chunk_frames(item) for item, _ in part]
        if len({(a.shape, plan) for a, plan in zip(audio, plans)}) > 1:  # unequal: one at a time
            groups = [[i] for i in range(len(part))]
        else:
            groups = [list(range(len(part)))]
        codes = []
        with torch.no_grad():
            for group in groups:
                x = torch.stack([audio[i] for i in group]).reshape(-1, audio[group[0]].shape[-1])
                out = encode(bundle.mimi, x, plans[group[0]]).cpu()
                codes += list(out.reshape(len(group), 2, *out.shape[1:]))
        for (item, path), c in zip(part, codes):
            atomic_write(path, lambda tmp: save_file({"codes": c.long().contiguous()}, str(tmp)))


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from ttt.moshi.tiny import DEMO_WORDS

    parser = argparse.ArgumentParser(prog="python -m ttt.control", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data", help="write control conversations and their manifest")
    d.add_argument("--out", required=True)
    d.add_argument("--count", type=int, required=True)
    d.add_argument("--duration", type=float, default=24.0)
    d.add_argument("--recurrent-fraction", type=float, default=0.5)
    d.add_argument("--part", type=float, default=8.0, help="recurring part A (s)")
    d.add_argument("--gap", type=float, default=4.0, help="filler between copies (s), > context")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--workers", type=int, default=1)
    e = sub.add_parser("evaluate", help="held-out TTT-on vs TTT-off gains → JSON")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--manifest", required=True)
    e.add_argument("--out", required=True, help="JSON to write")
    e.add_argument("--cache-dir", default="results/cache")
    e.add_argument("--device", default="cpu")
    e.add_argument("--lr", type=float, default=None, help="override the TTT lr")
    e.add_argument("--tau", type=float, default=None, help="override delta_clip_fro_norm")
    e.add_argument("--untrained-seed", type=int, default=None)
    c = sub.add_parser("encode", help="cache the Mimi codes of manifests (as ttt train reads them)")
    c.add_argument("manifests", nargs="+")
    c.add_argument("--base", default="tiny-random")
    c.add_argument("--cache-dir", default="results/cache")
    c.add_argument("--device", default="cpu")
    c.add_argument("--batch", type=int, default=1, help="conversations per Mimi call")
    args = parser.parse_args(argv)
    if args.command == "encode":
        from ttt.moshi.model import load_checkpoint, resolve_model
        from ttt.data.codes import TrainBase, load_codes
        directory = resolve_model(args.base, Path(args.cache_dir) / "models")
        bundle = load_checkpoint(directory, device=args.device)
        base = TrainBase(args.base, directory, args.device, bundle.mimi)
        for manifest in args.manifests:
            encode_batched(bundle, manifest, args.cache_dir, args.batch)
            print(manifest, len(load_codes(manifest, base, args.cache_dir)), "conversations")
        return 0
    if args.command == "data":
        path = write_control_manifest(args.out, count=args.count, duration=args.duration,
                                      recurrent_fraction=args.recurrent_fraction, part_s=args.part,
                                      gap_s=args.gap, seed=args.seed, words=DEMO_WORDS,
                                      workers=args.workers)
        print(path)
        return 0
    override = {k: v for k, v in (("lr", args.lr), ("delta_clip_fro_norm", args.tau)) if v is not None}
    result = evaluate(args.checkpoint, args.manifest, cache_dir=args.cache_dir, device=args.device,
                      ttt=override or None, untrained_seed=args.untrained_seed)
    write_text(args.out, json.dumps(result, indent=1) + "\n")
    for key, row in result["table"].items():
        print(key, json.dumps(row), file=sys.stdout)
    return 0
