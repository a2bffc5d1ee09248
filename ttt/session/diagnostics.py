"""Attention-vs-TTT diagnostics (seed 004), for TTT layers of either variant.

What is compared, per TTT layer, on the tensors of the layer's last call:
- In-Place layers: ``attn`` = the self-attention update, ``ttt`` = the fast-weight MLP's output
  (the layer's feed-forward update), ``combined`` = their sum (what the two sublayers add to the
  residual stream).
- TTT-MLP hybrid: as the seeds logged it, ``attn`` = the residual stream after self-attention,
  ``ttt`` = the TTT branch before the gate, ``combined`` = attn + tanh(α)·ttt.

Cheap enough to leave on: the per-token path only keeps references to tensors the layers compute
anyway (forward hooks / the hybrid's ``last``; no copies, no kernels); statistics are computed on
the host's cadence (:meth:`Diagnostics.record`, every N steps). Under CUDA graphs the references
taken at capture point into the graph's memory, which each replay rewrites, so the statistics
still describe the latest step.
"""
from __future__ import annotations

import json

import torch
from torch import nn

from ttt.moshi.gating import TTTGating
from ttt.moshi.surgery import ttt_layers

LOG_PREFIX = "TTT-DIAGNOSTICS "
SPARSITY_REL = 1e-2  # |v| < 1% of the tensor's std counts as "near zero"


def _stats(v: torch.Tensor) -> dict[str, torch.Tensor]:
    std = v.std()
    return {"mean": v.mean(), "std": std, "sparsity": (v.abs() < SPARSITY_REL * std).float().mean()}


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)


def _w_norm(module) -> torch.Tensor | None:
    """‖W‖_F per batch row as telemetry reports it (:func:`ttt.session.telemetry.ttt_state`),
    read alone: the record needs no other telemetry value (each would be one more copy per layer
    at every record); None when the layer is not streaming."""
    if hasattr(module, "telemetry"):  # the TTT-MLP hybrid computes its own
        return module.telemetry().get("w_norm")
    state = module._streaming_state
    return None if state is None else state.w_norm


class Diagnostics:
    """Hooks on every TTT layer of ``lm``; :meth:`record` turns the last call into numbers."""

    def __init__(self, lm: nn.Module) -> None:
        self.lm = lm
        self.layers = ttt_layers(lm)
        self.last: dict[int, dict[str, torch.Tensor]] = {i: {} for i in self.layers}
        self.previous: dict[int, dict[str, torch.Tensor]] = {}
        self.handles = []
        for i, module in self.layers.items():
            if isinstance(module, TTTGating):
                attn = lm.transformer.layers[i].self_attn
                self.handles.append(attn.register_forward_hook(self._keep(i, "attn")))
                self.handles.append(module.register_forward_hook(self._keep(i, "ttt")))

    def _keep(self, layer: int, name: str):
        def hook(_module, _inputs, output):
            self.last[layer][name] = output.detach()  # a reference: no copy on the token path
        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _tensors(self, i: int, module) -> dict[str, torch.Tensor] | None:
        if isinstance(module, TTTGating):
            got = self.last[i]
            if "attn" not in got or "ttt" not in got:
                return None
            return {"attn": got["attn"], "ttt": got["ttt"], "combined": got["attn"] + got["ttt"]}
        return module.last

    @torch.no_grad()
    def record(self, row: int = 0) -> dict[int, dict[str, float]]:
        """Per layer, batch row ``row``: magnitudes (Frobenius, and mean per-token L2) and the
        TTT/attention ratio, cosine similarities, mean/std/sparsity, change of the last token's
        vectors since the previous record, gate statistics (hybrid) and the fast-weight norm."""
        on_device: dict[int, dict[str, torch.Tensor | None]] = {}
        last_norm: dict[int, torch.Tensor] = {}
        for i, module in self.layers.items():
            t = self._tensors(i, module)
            if t is None:
                continue
            t = {k: v[row].float() for k, v in t.items()}  # [T, d]
            rec: dict[str, torch.Tensor | None] = {}  # None: computed on the host from the others
            for name, v in t.items():
                rec[f"{name}_norm"] = v.norm()
                rec[f"{name}_norm_per_token"] = v.norm(dim=-1).mean()
                rec.update({f"{name}_{k}": x for k, x in _stats(v).items()})
            rec["ttt_attn_ratio"] = None
            rec["cos_attn_ttt"] = _cos(t["attn"], t["ttt"])
            rec["cos_attn_combined"] = _cos(t["attn"], t["combined"])
            rec["cos_ttt_combined"] = _cos(t["ttt"], t["combined"])
            now = {k: t[k][-1].clone() for k in ("attn", "ttt")}
            before = self.previous.get(i)
            if before is not None:
                rec["attn_delta"] = (now["attn"] - before["attn"]).norm()
                rec["ttt_delta"] = (now["ttt"] - before["ttt"]).norm()
                rec["ttt_delta_rel"] = None
                last_norm[i] = now["ttt"].norm()
            self.previous[i] = now
            if not isinstance(module, TTTGating):
                alpha = (module.gating_alpha if module.cfg.gate_override is None
                         else torch.full_like(module.gating_alpha, module.cfg.gate_override))
                rec.update(alpha_mean=alpha.mean(), alpha_std=alpha.std(), alpha_min=alpha.min(),
                           alpha_max=alpha.max(), gate_tanh_mean=module.gate().mean())
            w_norm = _w_norm(module)
            if w_norm is not None:
                rec["w_norm"] = w_norm[row]
            on_device[i] = rec
        # one device → host transfer for the whole record (was one sync per number)
        flat = [v.reshape(1).float() for rec in on_device.values() for v in rec.values()
                if v is not None] + [v.reshape(1).float() for v in last_norm.values()]
        values = iter(torch.cat(flat).tolist() if flat else [])
        out: dict[int, dict[str, float]] = {}
        for i, rec in on_device.items():
            out[i] = {k: None if v is None else next(values) for k, v in rec.items()}
        for i, got in out.items():
            got["ttt_attn_ratio"] = got["ttt_norm"] / max(got["attn_norm"], 1e-30)
            if i in last_norm:
                got["ttt_delta_rel"] = got["ttt_delta"] / max(next(values), 1e-30)
        return out


def diagnostics_line(record: dict[int, dict[str, float]], step: int, **fields) -> str:
    """``TTT-DIAGNOSTICS {json}``: ``step``, extra ``fields`` (cell, item) and per layer the
    numbers of :meth:`Diagnostics.record`."""
    layers = {str(i): rec for i, rec in record.items()}
    return LOG_PREFIX + json.dumps({**fields, "step": int(step), "layers": layers},
                                   separators=(",", ":"))
