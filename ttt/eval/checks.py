"""The checks a cell runs beside its measured pass, each on the cell's own model and input:
the TTT-off twin (A/B), the regression against upstream moshi's loader, and the X₀ plumbing."""
from __future__ import annotations

from pathlib import Path

import torch

from ttt.eval.data import conversation_codes
from ttt.eval.metrics import perplexity, teacher_forced_nll
from ttt.moshi.surgery import ttt_disabled, ttt_layers


def ab_twin(lm, codes: torch.Tensor, chunk: int, block: int, on=None) -> dict:
    """TTT-off twin on the same input in the same job: pre-update logits error and the deltas.
    ``on``: the cell's own TTT-on pass over this input (complete, with the first chunk's text
    logits), reused instead of run again. The pre-update logits are the first chunk's of each
    pass's first block (the same forward as the scored one), not a pass of their own."""
    with torch.no_grad():
        if on is None or on.head_text_logits is None:
            on = teacher_forced_nll(lm, codes, block=block, head=chunk)
        with ttt_disabled(lm):
            off = teacher_forced_nll(lm, codes, block=block, head=chunk)
    on_logits, off_logits = on.head_text_logits, off.head_text_logits
    ok = torch.isfinite(off_logits)
    err = ((on_logits - off_logits).abs()[ok].max() / off_logits.abs()[ok].max()).item()
    out = {"pre_update_logits_rel_err": err,
           "text_ppl_on": perplexity(on.text), "text_ppl_off": perplexity(off.text),
           "audio_ppl_on": perplexity(on.audio), "audio_ppl_off": perplexity(off.audio)}
    out["text_ppl_delta"] = out["text_ppl_on"] - out["text_ppl_off"]
    out["audio_ppl_delta"] = out["audio_ppl_on"] - out["audio_ppl_off"]
    return out


def upstream_regression(cfg, bundle, items, cache) -> dict:
    """This cell's model vs the same checkpoint loaded by upstream moshi's own loader, on the first
    block of the first input: the TTT-off regression guard (seed 000 item 9)."""
    from moshi.models import loaders
    from safetensors import safe_open
    from safetensors.torch import load_file

    src = bundle.sources
    kwargs = dict(src.lm_kwargs)
    if src.lora is not None:  # moshi's own LoRA path: LoRALinear modules, fused after loading
        kwargs.update(lora=True, lora_scaling=src.lora_scaling, lora_rank=_lora_rank(src.lora))
    dtype = getattr(torch, cfg.dtype)
    with safe_open(str(src.lm_weights), "pt") as f:
        stored = set(f.keys())
    with torch.device("meta"):
        upstream_keys = set(loaders.get_moshi_lm(None, lm_kwargs=kwargs, device="meta").state_dict())
    ttt_only = stored - upstream_keys
    if ttt_only and src.lora is None:
        # A checkpoint trained with TTT: moshi's loader refuses its TTT tensors, so moshi's own
        # LMModel takes every other tensor, strictly (no key missing, nothing added).
        plain = loaders.get_moshi_lm(None, lm_kwargs=kwargs, device=cfg.device, dtype=dtype)
        state = load_file(str(src.lm_weights), device=str(cfg.device))
        plain.load_state_dict({k: v for k, v in state.items() if k not in ttt_only}, strict=True)
        loader = f"LMModel.load_state_dict(strict), {len(ttt_only)} TTT tensors left out"
    else:
        plain = loaders.get_moshi_lm(str(src.lm_weights), lm_kwargs=kwargs, device=cfg.device,
                                     dtype=dtype, lora_weights=src.lora, fuse_lora=True)
        loader = "moshi.models.loaders.get_moshi_lm"
    codes = conversation_codes(bundle.mimi, bundle.tokenizer, items[0], cache / "codes",
                               bundle.mimi_id)[:, :, :cfg.block].to(cfg.device)
    with torch.no_grad():
        ours, theirs = bundle.lm(codes), plain(codes)
    diffs = [(a - b).abs().nan_to_num().max().item() for a, b in
             ((ours.text_logits, theirs.text_logits), (ours.logits, theirs.logits))]
    equal = all(torch.equal(a.nan_to_num(), b.nan_to_num()) for a, b in
                ((ours.text_logits, theirs.text_logits), (ours.logits, theirs.logits)))
    return {"bitwise_equal": equal, "max_abs_diff": max(diffs), "steps": codes.shape[-1],
            "upstream_loader": loader}


def embedding_plumbing(cfg, bundle, items, cache) -> dict | None:
    """Seed 000 item 3: the X₀ each TTT layer receives equals the summed token embeddings
    recomputed from moshi's own tables (audio codebooks, then text; before conditioning), on the
    first block of the first input. ``max_abs_diff`` 0.0 means bitwise identical."""
    lm = bundle.lm
    seq = conversation_codes(bundle.mimi, bundle.tokenizer, items[0], cache / "codes",
                             bundle.mimi_id)[:, :, :cfg.block].to(cfg.device)
    seen = {}
    handles = [layer.register_forward_pre_hook(
        lambda module, _args, i=i: seen.__setitem__(i, module._tap.x0))
        for i, layer in ttt_layers(lm).items()
        if hasattr(layer, "_tap") and layer.cfg.target_source == "embeddings"]  # reads X₀
    if not handles:
        return None
    try:
        with torch.no_grad():
            lm.forward_text(seq)
            x0 = sum(lm.emb[c](seq[:, c + lm.audio_offset]) for c in range(lm.num_audio_codebooks))
            x0 = x0 + lm.text_emb(seq[:, 0])
    finally:
        for handle in handles:
            handle.remove()
    diffs = [float("inf") if got is None or got.shape != x0.shape else
             (got.float() - x0.float()).abs().max().item() for got in seen.values()]
    return {"layers": sorted(seen), "max_abs_diff": max(diffs) if diffs else None,
            "steps": seq.shape[-1]}


def _lora_rank(path: Path) -> int:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return next(f.get_slice(k).get_shape()[0] for k in f.keys() if k.endswith(".lora_A.weight"))

