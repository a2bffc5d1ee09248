"""The checks a cell runs beside its measured pass, each on the cell's own model and input:
the TTT-off twin (A/B), the regression against upstream moshi's loader, and the X₀ plumbing."""
from __future__ import annotations

import contextlib
import gc
from pathlib import Path

import torch

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


def upstream_regression(cfg, bundle, codes: torch.Tensor) -> dict:
    """This cell's model vs the same checkpoint loaded by upstream moshi's own loader, on
    ``codes`` (the first block of the first input, :meth:`CellRun.first_block`): the TTT-off
    regression guard (seed 000 item 9).

    The two models are never on the device together (a 7B cell must run where upstream runs):
    ours scores the block first and its logits go to the host; on a GPU our model then waits in
    host memory while upstream's is loaded straight from the file (built on the meta device, the
    stored tensors assigned: no random-weight model is ever built), run and freed; then ours comes
    back, bitwise the same. The device's peak is one model and one forward, as upstream's alone."""
    with torch.no_grad():
        ours = _logits_on_host(bundle.lm(codes))
    with off_device(bundle.lm, cfg.device):
        plain, loader = _upstream_lm(cfg, bundle.sources)
        with torch.no_grad():
            theirs = _logits_on_host(plain(codes))
        del plain
        _release(cfg.device)
    diffs = [(a - b).abs().nan_to_num().max().item() for a, b in zip(ours, theirs)]
    equal = all(torch.equal(a.nan_to_num(), b.nan_to_num()) for a, b in zip(ours, theirs))
    return {"bitwise_equal": equal, "max_abs_diff": max(diffs), "steps": codes.shape[-1],
            "upstream_loader": loader}


def _logits_on_host(out) -> tuple[torch.Tensor, torch.Tensor]:
    """(text logits, audio logits) of an ``LMOutput``, copied to the host: all the comparison keeps."""
    return out.text_logits.cpu(), out.logits.cpu()


def _upstream_lm(cfg, src):
    """Upstream's LM for this checkpoint, on ``cfg.device``, and how it was loaded. A checkpoint
    trained with TTT carries tensors moshi's loader refuses: moshi's own ``LMModel`` (built on the
    meta device, as ``get_moshi_lm`` builds it for a file) then takes every other tensor, cast as
    ``get_moshi_lm`` casts them, strictly (no key missing, nothing added)."""
    from moshi.models import loaders
    from safetensors import safe_open
    from safetensors.torch import load_file

    kwargs = dict(src.lm_kwargs)
    if src.lora is not None:  # moshi's own LoRA path: LoRALinear modules, fused after loading
        kwargs.update(lora=True, lora_scaling=src.lora_scaling, lora_rank=_lora_rank(src.lora))
    dtype = getattr(torch, cfg.dtype)
    with safe_open(str(src.lm_weights), "pt") as f:
        stored = set(f.keys())
    with torch.device("meta"):  # LMModel builds text_linear, depformer_in on the CPU first
        plain = loaders.get_moshi_lm(None, lm_kwargs=kwargs, device="meta", dtype=dtype)
    ttt_only = stored - set(plain.state_dict())
    if not ttt_only or src.lora is not None:
        del plain
        plain = loaders.get_moshi_lm(str(src.lm_weights), lm_kwargs=kwargs, device=cfg.device,
                                     dtype=dtype, lora_weights=src.lora, fuse_lora=True)
        return plain, "moshi.models.loaders.get_moshi_lm"
    state = load_file(str(src.lm_weights), device=str(cfg.device))
    for key in ttt_only:
        del state[key]
    for key, value in state.items():  # get_moshi_lm's own casts
        if value.dtype.is_floating_point:
            state[key] = value.float() if key.startswith(("condition_provider.", "fuser.")) \
                else value.to(dtype)
    plain.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*plain.named_parameters(), *plain.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{src.lm_weights}: upstream's LMModel has {len(left)} tensor(s) the "
                           f"checkpoint does not fill, e.g. {left[0]}")
    return plain.eval(), f"LMModel.load_state_dict(strict), {len(ttt_only)} TTT tensors left out"


@contextlib.contextmanager
def off_device(lm, device: str):
    """``lm`` waits in host memory inside the block when ``device`` is an accelerator (nothing
    moves on the CPU); its derived-weight caches (casts of W^(0), the fused target matrix) are
    dropped, they are rebuilt on first use. Back on ``device`` afterwards, bitwise the same."""
    if torch.device(device).type == "cpu":
        yield
        return
    lm.to("cpu")
    for module in lm.modules():
        module.__dict__.pop("_derived_cache", None)
    _release(device)
    try:
        yield
    finally:
        lm.to(device)


def _release(device: str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def embedding_plumbing(lm, seq: torch.Tensor) -> dict | None:
    """Seed 000 item 3: the X₀ each TTT layer of ``lm`` receives equals the summed token
    embeddings recomputed from moshi's own tables (audio codebooks, then text; before
    conditioning), on ``seq`` (the first block of the first input). ``max_abs_diff`` 0.0 means
    bitwise identical."""
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

