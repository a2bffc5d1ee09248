"""A TTT-on cell and its TTT-off twin, token by token: the per-token NLLs a teacher-forced cell
writes (``token_nll.npz``), paired conversation by conversation, for the effect verdicts and the
usefulness series along the stream."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ttt.base.paired_effect import PairedEffect, paired_effect, pooled_nll
from ttt.report.verdicts.loading import Cell
from ttt.report.verdicts.registry import Scope, check

TOKEN_NLL = "token_nll.npz"  # written by ttt.eval.teacher_forced
STREAMS = ("text", "audio")


def token_nll(c: Cell) -> dict | None:
    """{"context": frames, "text": [[T] per conversation], "audio": [[dep_q, T] ...]}, or None
    when the cell wrote none (not teacher-forced, or results of a version before it). A file that
    cannot be read marks the cell corrupt, named."""
    if "token_nll" not in c._cache:
        path = c.root / "cell" / TOKEN_NLL
        out = None
        if path.is_file():
            try:
                with np.load(path) as z:
                    n = sum(1 for k in z.files if k.startswith("text_"))
                    out = {"context": int(z["context"]),
                           "text": [z[f"text_{i}"] for i in range(n)],
                           "audio": [z[f"audio_{i}"] for i in range(n)]}
            except (OSError, ValueError, KeyError) as exc:
                c._unreadable(ValueError(f"{path}: unreadable ({exc})"))
        c._cache["token_nll"] = out
    return c._cache["token_nll"]


@dataclass(frozen=True)
class Pair:
    """The conversations both cells scored (the on cell's context: YaRN may widen it)."""

    on: dict
    off: dict
    conversations: int
    context: int

    def effect(self, stream: str, region: str, g: dict, part: tuple[float, float] = (0.0, 1.0)
               ) -> PairedEffect:
        """TTT's gain on ``stream`` over ``region``, resampling conversations (``g``: the gate's
        ``confidence`` and ``resamples``). ``part``: a fraction of each conversation's region
        (e.g. its last half), for the trend along the stream."""
        on = [_part(x, part, self.context, region) for x in self.on[stream][:self.conversations]]
        off = [_part(x, part, self.context, region) for x in self.off[stream][:self.conversations]]
        return paired_effect(pooled_nll(on, "all", 0), pooled_nll(off, "all", 0),
                             confidence=g["confidence"], resamples=g["resamples"])

    def max_rel_difference(self) -> float:
        """Largest relative difference of a conversation's mean NLL, on against off, over both
        streams: the outputs' change as perplexity sees it. Per token it would be fragile (fp32
        rounds a near-zero NLL to a large relative error: 8.6e-4 on silent audio tokens while the
        weights moved 1.5e-8 under the production flags)."""
        worst = 0.0
        for stream in STREAMS:
            for a, b in zip(self.on[stream], self.off[stream]):
                ok = ~(np.isnan(a) | np.isnan(b))
                if ok.any():
                    ma, mb = float(a[ok].astype(np.float64).mean()), float(b[ok].astype(np.float64).mean())
                    worst = max(worst, abs(ma - mb) / max(abs(mb), 1e-30))
        return worst


def _part(nll: np.ndarray, part: tuple[float, float], context: int, region: str) -> np.ndarray:
    from ttt.base.paired_effect import region_slice
    x = nll[..., region_slice(region, nll.shape[-1], context)]
    n = x.shape[-1]
    return x[..., int(round(part[0] * n)):int(round(part[1] * n))]


def pair_of(c: Cell, twin: Cell | None) -> tuple[Pair | None, str]:
    """(the pair, "") or (None, why there is none)."""
    if twin is None:
        return None, "no completed TTT-off twin"
    on, off = token_nll(c), token_nll(twin)
    if on is None or off is None:
        return None, (f"no {TOKEN_NLL} in {c.name if on is None else twin.name} (not a "
                      "teacher-forced cell, or results of an older version: rerun it)")
    n = min(len(on["text"]), len(off["text"]))
    shapes = [(a.shape, b.shape) for a, b in zip(on["text"][:n], off["text"][:n])]
    if any(a != b for a, b in shapes):
        return None, f"{c.name} and {twin.name} scored different conversations (lengths differ)"
    return Pair(on, off, n, on["context"]), ""


def chunk_series(pair: Pair, chunk: int, frame_rate: float) -> list[dict]:
    """Per conversation and chunk of ``chunk`` frames: TTT's gain in nats/token (off − on) on
    each stream, the chunk's stream time and whether it lies beyond the attention context."""
    rows = []
    for item in range(pair.conversations):
        T = pair.on["text"][item].shape[-1]
        for start in range(0, T, chunk):
            row = {"item": item, "chunk": start // chunk, "start_s": start / frame_rate,
                   "beyond_context": start >= pair.context}
            for stream in STREAMS:
                a = pair.on[stream][item][..., start:start + chunk]
                b = pair.off[stream][item][..., start:start + chunk]
                ok = ~(np.isnan(a) | np.isnan(b))
                row[f"{stream}_gain"] = float((b[ok] - a[ok]).mean()) if ok.any() else None
            rows.append(row)
    return rows


def twin_pairs(s: Scope, threshold: str, out: list):
    """(name, cell, twin, pair) for each done TTT-on cell with a done twin and token NLLs to pair.
    A teacher-forced cell that cannot be paired gets a "not judged" check in ``out``, saying why,
    so a gate never drops a cell silently."""
    for c in s.cells:
        twin = s.twin(c)
        if not (c.done and c.ttt_on and twin is not None):
            continue
        pair, why = pair_of(c, twin)
        name = f"{c.name} vs {twin.name}"
        if pair is None:
            if c.result.mode == "teacher_forced":
                out.append(check(name, None, threshold, None, why))
            continue
        yield name, c, twin, pair
