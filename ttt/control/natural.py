"""TTT on against TTT off on a natural-conversation set (``ttt.data.natural``), for several TTT
settings of one checkpoint, and the evidence of why TTT helps or hurts there.

Teacher-forced, the parallel form (``ttt.control.gain.token_nll``), conversation bootstrap
(``ttt.base.paired_effect``). Regions: before / beyond the attention context, and beyond it split
Moshi's channel speaking a *repeat* of an earlier turn (from the manifest's ``turns``) or
*fresh speech*; repeats are compared with the plain conversations' fresh speech. Per text-token class (padding, end-of-padding/unknown, whole
words, single letters) the mean NLL change says whether the harm sits on text the tokenizer
cannot spell; ``drift`` is ‖W⁽ⁱ⁾ − W⁽⁰⁾‖/‖W⁽⁰⁾‖ of every TTT layer at the end of each conversation.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from ttt.base.files import write_text
from ttt.base.paired_effect import difference_ci, paired_effect
from ttt.data.conversations import FRAME_RATE, PAD_ID

REGIONS = ("before_context", "beyond_context", "repeat", "fresh_speech")


def parse_setting(text: str) -> dict:
    """'lr=0.003,decay=0.9' → {'lr': 0.003, 'decay': 0.9}; 'default' → {} (null → None)."""
    if text == "default":
        return {}
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if not key or not value:
            raise ValueError(f"setting {text!r}: expected KEY=VALUE[,KEY=VALUE]")
        out[key] = None if value == "null" else int(value) if value.isdigit() else float(value)
    return out


def speech_frames(line: dict, frames: int, repeated: bool) -> np.ndarray:
    """Frames where Moshi's channel (speaker 0) says a turn that repeats an earlier one
    (``repeated``) or a fresh turn, from the manifest's ``turns``."""
    mask = np.zeros(frames, dtype=bool)
    for turn in line.get("turns", []):
        if turn["speaker"] == 0 and (turn["repeat_of"] is not None) == repeated:
            mask[math.floor(turn["start"] * FRAME_RATE):math.ceil(turn["end"] * FRAME_RATE - 1e-6)] = True
    return mask


def region_mask(region: str, line: dict, frames: int, context: int) -> np.ndarray:
    beyond = np.arange(frames) >= context
    if region == "repeat":
        return beyond & speech_frames(line, frames, True)
    if region == "fresh_speech":
        return beyond & speech_frames(line, frames, False)
    return {"before_context": ~beyond, "beyond_context": beyond}[region]


def pooled(nlls: list[np.ndarray], masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    sums, counts = [], []
    for nll, mask in zip(nlls, masks):
        part = np.asarray(nll, dtype=np.float64)[..., mask]
        valid = ~np.isnan(part)
        sums.append(part[valid].sum())
        counts.append(valid.sum())
    return np.array(sums), np.array(counts, dtype=np.float64)


def effect_table(on: list, off: list, lines: list[dict], context: int, resamples: int = 2000) -> dict:
    """{stream.region.kind: ppl_off, ppl_on, rel_gain, ci} and recurrent − plain differences."""
    rng = np.random.default_rng(0)
    repeat: dict = {}
    kind_of = [line.get("kind") or ("recurrent" if line.get("recurrent") else "plain") for line in lines]
    kinds = {k: [i for i, kind in enumerate(kind_of) if kind == k] for k in ("recurrent", "plain")}
    out = {}
    for s, stream in enumerate(("text", "audio")):
        for region in REGIONS:
            effects = {}
            for kind, idx in kinds.items():
                masks = [region_mask(region, lines[i], len(off[i][0]), context) for i in idx]
                if not idx or not any(m.any() for m in masks):
                    continue
                e = paired_effect(pooled([on[i][s] for i in idx], masks),
                                  pooled([off[i][s] for i in idx], masks), resamples=resamples, rng=rng)
                effects[kind] = e
                out[f"{stream}.{region}.{kind}"] = {
                    "ppl_off": e.ppl_off, "ppl_on": e.ppl_on, "rel_gain": e.rel_gain,
                    "ci95": list(e.ci_rel_gain), "answer": e.answer(), "tokens": e.tokens}
            if len(effects) == 2:
                rec, plain = effects["recurrent"], effects["plain"]
                out[f"{stream}.{region}.recurrent_minus_plain"] = {
                    "gain_difference": rec.gain - plain.gain, "ci95": list(difference_ci(rec, plain))}
            if region == "repeat" and "recurrent" in effects:
                idx = kinds["recurrent"]
                masks = [region_mask(region, lines[i], len(off[i][0]), context) for i in idx]
                repeat[stream] = (pooled([on[i][s] for i in idx], masks),
                                  pooled([off[i][s] for i in idx], masks))
            if region == "fresh_speech" and kinds["plain"] and stream in repeat:
                idx = kinds["plain"]
                masks = [region_mask(region, lines[i], len(off[i][0]), context) for i in idx]
                fresh = (pooled([on[i][s] for i in idx], masks), pooled([off[i][s] for i in idx], masks))
                out[f"{stream}.repeat_minus_plain_fresh_speech"] = relative_difference(
                    *repeat[stream], *fresh, rng, resamples)
    return out


def relative_difference(on_a, off_a, on_b, off_b, rng, resamples: int = 2000) -> dict:
    """Relative gain (1 − ppl_on/ppl_off) of group a minus that of group b, with a percentile
    bootstrap over each group's conversations (relative, since the groups' perplexities differ)."""
    def rel(on, off, pick=None):
        (son, con), (soff, coff) = on, off
        if pick is None:
            return 1 - np.exp(son.sum() / con.sum() - soff.sum() / coff.sum())
        return 1 - np.exp(son[pick].sum(1) / con[pick].sum(1) - soff[pick].sum(1) / coff[pick].sum(1))
    na, nb = len(on_a[0]), len(on_b[0])
    draws = (rel(on_a, off_a, rng.integers(0, na, (resamples, na)))
             - rel(on_b, off_b, rng.integers(0, nb, (resamples, nb))))
    return {"rel_gain_difference": float(rel(on_a, off_a) - rel(on_b, off_b)),
            "ci95": [float(x) for x in np.nanquantile(draws, [0.025, 0.975])]}


def by_position(on: list, off: list, context: int, width: int = 150) -> list[dict]:
    """Text perplexity off / on and the relative gain with its CI per ``width``-frame bin past the
    context, over every conversation: does the harm grow with the conversation's length?"""
    frames = min(len(o[0]) for o in off)
    out = []
    for lo in range(context, frames, width):
        masks = [np.arange(len(o[0])) >= lo for o in off]
        masks = [m & (np.arange(len(m)) < lo + width) for m in masks]
        e = paired_effect(pooled([x[0] for x in on], masks), pooled([x[0] for x in off], masks), rng=0)
        out.append({"frames": [lo, min(lo + width, frames)], "ppl_off": e.ppl_off, "ppl_on": e.ppl_on,
                    "rel_gain": e.rel_gain, "ci95": list(e.ci_rel_gain)})
    return out


def token_classes(tokenizer, text_codes: list[np.ndarray], on: list, off: list, context: int) -> dict:
    """Share of beyond-context text tokens per class and their mean NLL change (on − off, nats)."""
    pieces = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size())]
    def kind(t: int) -> str:
        if t == PAD_ID:
            return "padding"
        if t == 0:
            return "end_of_padding_or_unknown"
        piece = pieces[t] if t < len(pieces) else ""
        return "word" if piece.startswith("\u2581") and len(piece) > 1 else "letter_or_space"
    diffs: dict[str, list] = {}
    for codes, a, b in zip(text_codes, on, off):
        for t in range(context, len(codes)):
            if not (np.isnan(a[0][t]) or np.isnan(b[0][t])):
                diffs.setdefault(kind(int(codes[t])), []).append(a[0][t] - b[0][t])
    total = sum(len(v) for v in diffs.values())
    return {k: {"share": len(v) / total, "nll_on_minus_off": float(np.mean(v))} for k, v in sorted(diffs.items())}


def fast_weight_offsets(lm, codes) -> list[dict]:
    """Per TTT layer of ``lm(codes)`` (batch of one): ``offset`` = W⁽ⁿ⁾ − W⁽⁰⁾ after the ``n``
    chunks that are followed by a token (the fast weight the last tokens see), rebuilt chunk by
    chunk from the layer's own Z and X₀ (captured by a hook) as ΔW = V̂ᵀZ with the configured lr,
    clip and decay/reset; with the captured ``z`` and ``out`` (a test checks out = Z (W⁽⁰⁾ + offset)ᵀ
    on the last tokens against the model's dual form)."""
    import torch

    from ttt.core.inplace_math import chunk_delta, chunk_target, clip_scale
    from ttt.core.stabiliser import keep_factor
    from ttt.moshi.gating import TTTGating

    captured = []
    hooks = [m.register_forward_hook(lambda mod, args, out: captured.append(
        (mod, mod._z(args[0]), mod._target_input(args[0]), out)))
        for m in lm.modules() if isinstance(m, TTTGating)]
    try:
        with torch.no_grad():
            lm(codes)
    finally:
        for h in hooks:
            h.remove()
    result = []
    with torch.no_grad():
        for mod, z, x0, out in captured:
            cfg, C = mod.cfg, mod.cfg.chunk_size
            n = (z.shape[1] - 1) // C
            conv, projection = mod._target_weights(torch.float32)
            v = chunk_target(x0[0, :n * C].reshape(n, C, -1), conv, projection, cfg.conv_padding)
            delta = chunk_delta(z[0, :n * C].reshape(n, C, -1), v)
            scale, _, _ = clip_scale(delta, cfg.clip)
            offset = torch.zeros_like(mod.w_down, dtype=torch.float32)
            for j in range(n):
                offset = (offset + cfg.lr * scale[j] * delta[j]) * keep_factor(
                    torch.tensor([j + 1]), cfg.decay, cfg.reset_every)[0]
            result.append({"offset": offset, "updates": n, "z": z[0], "out": out[0],
                           "w0": mod.w_down.detach().float()})
    return result


def fast_weight_drift(lm, codes) -> list[float]:
    """‖W⁽ⁿ⁾ − W⁽⁰⁾‖/‖W⁽⁰⁾‖ at the end of ``codes``, per TTT layer."""
    return [float(r["offset"].norm() / r["w0"].norm()) for r in fast_weight_offsets(lm, codes)]


def main(argv: list[str] | None = None) -> int:
    import argparse

    import torch

    from ttt.control.gain import held_out_nll
    from ttt.data.codes import conversation_codes
    from ttt.data.conversations import read_manifest
    from ttt.moshi.model import load_checkpoint
    from ttt.moshi.surgery import ttt_disabled

    parser = argparse.ArgumentParser(prog="python -m ttt.control.natural", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--manifest", required=True, help="a ttt.data.natural manifest.jsonl")
    parser.add_argument("--out", required=True, help="JSON to write")
    parser.add_argument("--cache-dir", default="results/cache")
    parser.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda)")
    parser.add_argument("--setting", action="append", default=None,
                        help="TTT overrides, e.g. lr=0.003,decay=0.9 (repeatable; default: 'default')")
    args = parser.parse_args(argv)
    try:
        settings = [(s, parse_setting(s)) for s in (args.setting or ["default"])]
        lines = [json.loads(x) for x in Path(args.manifest).read_text().splitlines() if x.strip()]
        items = read_manifest(args.manifest)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    torch.set_grad_enabled(False)
    result = {"manifest": args.manifest, "checkpoint": args.checkpoint, "settings": {}}
    codes = off = None
    for name, override in settings:
        bundle = load_checkpoint(args.checkpoint, ttt=override or None, device=args.device)
        lm = bundle.lm.eval()
        context = lm.transformer.layers[0].self_attn.context
        if codes is None:
            codes = [conversation_codes(bundle.mimi, bundle.tokenizer, item, Path(args.cache_dir) / "codes",
                                        bundle.mimi_id)[0].cpu() for item in items]
            off = [r["off"] for r in held_out_nll(lm, codes, lambda: ttt_disabled(lm))]
        on = [r["on"] for r in held_out_nll(lm, codes, lambda: ttt_disabled(lm))]
        table = effect_table(on, off, lines, context)
        classes = token_classes(bundle.tokenizer, [c[0].numpy() for c in codes], on, off, context)
        drift = np.array([fast_weight_drift(lm, c[None].to(args.device)) for c in codes])
        result["settings"][name] = {"ttt": bundle.ttt.to_dict(), "table": table, "token_classes": classes,
                                    "text_by_position": by_position(on, off, context),
                                    "drift_end_mean_per_layer": drift.mean(0).tolist()}
        text = [table.get(f"text.{k}", {}) for k in ("beyond_context.plain", "repeat.recurrent",
                                                      "repeat_minus_plain_fresh_speech")]
        print(name, "text gain beyond, plain", round(text[0].get("rel_gain", math.nan), 4), text[0].get("ci95"),
              "| repeats", round(text[1].get("rel_gain", math.nan), 4), text[1].get("ci95"),
              "| repeats - plain fresh speech", round(text[2].get("rel_gain_difference", math.nan), 4),
              text[2].get("ci95"),
              "| drift", np.round(drift.mean(0), 3).tolist(), flush=True)
    write_text(args.out, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
