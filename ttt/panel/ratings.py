"""Listening-panel ratings: the per-rater plan and reading ratings back (seed 000 item 11).

Each rater's item order and A/B sides derive from the panel seed and the rater id through a PRNG
implemented identically here and in the page (``templates/panel.html``), so
:func:`collect_ratings` recomputes and checks them before unblinding; then MOS per system and
offset with t confidence intervals and A/B preferences with an exact sign test. The page itself
is built by :mod:`ttt.panel.page`.
"""
from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path


from ttt.base.files import atomic_write, read_json, write_csv
from ttt.base.outdir import check_parent


KEY_FORMAT = "listening-panel-key"
RATINGS_FORMAT = "listening-panel-ratings"
VERSION = 1
RATER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # always fullmatch: "$" allows a "\n"
CHOICES = ("A", "B", "tie")


class PanelError(ValueError):
    """Bad panel input or a malformed ratings file; the message names the file or key."""


# ---------------------------------------------------------------------------------------------
# The per-rater plan: FNV-1a → mulberry32, the same bits as the page's JavaScript.

M32 = 0xFFFFFFFF


def fnv1a32(text: str) -> int:
    """32-bit FNV-1a of the UTF-8 bytes: the rater's PRNG seed, cheap to write identically in JS."""
    h = 0x811C9DC5
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 0x01000193) & M32
    return h


def _imul(a: int, b: int) -> int:
    return (a * b) & M32


def mulberry32(state: int):
    """Floats in [0, 1), bit for bit the page's ``mulberry32`` (JS's Math.imul and >>> on uint32)."""
    a = state & M32
    while True:
        a = (a + 0x6D2B79F5) & M32
        t = _imul(a ^ (a >> 15), a | 1)
        t = ((t + _imul(t ^ (t >> 7), t | 61)) & M32) ^ t
        yield ((t ^ (t >> 14)) & M32) / 4294967296


def rater_plan(seed: int, items: Sequence[dict], rater: str) -> dict:
    """Item order (Fisher–Yates over the key's item list) then, per pair item in key order,
    whether its sides are swapped. ``items`` are the key's items, in key order."""
    rng = mulberry32(fnv1a32(f"{seed}:{rater}"))
    order = [it["id"] for it in items]
    for i in range(len(order) - 1, 0, -1):
        j = math.floor(next(rng) * (i + 1))
        order[i], order[j] = order[j], order[i]
    swap = {it["id"]: next(rng) < 0.5 for it in items if it["kind"] == "pair"}
    return {"order": order, "swap": swap}


def pair_sides(item: dict, swapped: bool) -> tuple[str, str]:
    """Clip ids shown as (A, B) for a pair item."""
    x, y = item["clips"]
    return (y, x) if swapped else (x, y)


# ---------------------------------------------------------------------------------------------
# Reading ratings back.

def load_key(path: str | os.PathLike) -> dict:
    path = Path(path)
    key = read_json(path, "panel key", PanelError)
    if not isinstance(key, dict) or key.get("format") != KEY_FORMAT or key.get("version") != VERSION:
        raise PanelError(f"{path}: not a listening-panel key ({KEY_FORMAT} v{VERSION})")
    return key


def read_ratings(path: str | os.PathLike) -> dict:
    """Parse one returned ratings file; structural problems are PanelErrors naming the file."""
    path = Path(path)
    return check_ratings(read_json(path, "ratings file", PanelError), path)


def check_ratings(doc, path) -> dict:
    """``doc`` (parsed JSON) if it is structurally a ratings file; else a PanelError naming ``path``."""
    if not isinstance(doc, dict) or doc.get("format") != RATINGS_FORMAT:
        raise PanelError(f"{path}: not a listening-panel ratings file (format must be {RATINGS_FORMAT!r})")
    if doc.get("version") != VERSION:
        raise PanelError(f"{path}: version {doc.get('version')!r} not supported (expected {VERSION})")
    for field, kind in (("panel", str), ("panel_id", str), ("rater", str), ("seed", int),
                        ("order", list), ("ratings", list)):
        if not isinstance(doc.get(field), kind) or isinstance(doc.get(field), bool):
            raise PanelError(f"{path}: key {field!r} missing or not a {kind.__name__}")
    if not RATER_RE.fullmatch(doc["rater"]):
        raise PanelError(f"{path}: rater {doc['rater']!r} is not a valid rater id")
    return doc


def unblind(path: Path, doc: dict, key: dict) -> tuple[list[dict], list[dict]]:
    """Check a ratings file against its key and the rater's plan; return its MOS rows and its
    preference rows with system names. Any inconsistency is a PanelError naming the file."""
    def bad(msg):
        raise PanelError(f"{path}: {msg}")

    if doc["panel"] != key["panel"]:
        bad(f"ratings of panel {doc['panel']!r}, but the key is panel {key['panel']!r}'s")
    if doc["panel_id"] != key["panel_id"] or doc["seed"] != key["seed"]:
        bad(f"rated build {doc['panel_id']} (seed {doc['seed']}), but the key is build "
            f"{key['panel_id']} (seed {key['seed']}) of panel {key['panel']!r}")
    items = {it["id"]: it for it in key["items"]}
    plan = rater_plan(key["seed"], key["items"], doc["rater"])
    if doc["order"] != plan["order"]:
        bad(f"item order does not match seed {key['seed']} and rater {doc['rater']!r}")
    seen, mos, pref = set(), [], []
    for n, r in enumerate(doc["ratings"]):
        where = f"ratings[{n}]"
        if not isinstance(r, dict) or not isinstance(r.get("item"), str) or r["item"] not in items:
            bad(f"{where}: unknown or missing item id {r.get('item') if isinstance(r, dict) else r!r}")
        item = items[r["item"]]
        if item["id"] in seen:
            bad(f"{where}: item {item['id']} rated twice")
        seen.add(item["id"])
        if item["kind"] == "mos":
            score = r.get("score")
            if r.get("clip") != item["clip"]:
                bad(f"{where}: clip {r.get('clip')!r} is not item {item['id']}'s clip")
            if score is not None and (isinstance(score, bool) or score not in (1, 2, 3, 4, 5)
                                      or not isinstance(score, int)):
                bad(f"{where}: score {score!r} must be an integer 1-5 or null")
            c = key["clips"][item["clip"]]
            mos.append({"rater": doc["rater"], "system": c["system"], "offset_s": c["offset_s"],
                        "score": score})
        else:
            a, b = pair_sides(item, plan["swap"][item["id"]])
            if (r.get("a"), r.get("b")) != (a, b):
                bad(f"{where}: A/B sides of item {item['id']} do not match seed {key['seed']} "
                    f"and rater {doc['rater']!r}")
            choice = r.get("choice")
            if choice is not None and choice not in CHOICES:
                bad(f"{where}: choice {choice!r} must be one of {list(CHOICES)} or null")
            sa, sb = key["clips"][a]["system"], key["clips"][b]["system"]
            winner = {"A": sa, "B": sb, "tie": "tie", None: None}[choice]
            pref.append({"rater": doc["rater"], "offset_s": key["clips"][a]["offset_s"],
                         "systems": (sa, sb), "winner": winner})
    if seen != set(items):
        bad(f"{len(set(items) - seen)} item(s) absent (a saved page lists every item, rated or not)")
    return mos, pref


def t_quantile_975(df: int) -> float:
    """Two-sided 95 % Student-t critical value, by bisection on the exact integer-df CDF."""
    lo, hi = 0.0, 1000.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_central(mid, df) < 0.95 else (lo, mid)
    return (lo + hi) / 2


def _t_central(t: float, df: int) -> float:
    """P(|T| < t) for integer df: the finite sums of Abramowitz & Stegun 26.7.3 (odd df) and
    26.7.4 (even df), exact where a series approximation would need a tolerance."""
    theta = math.atan(t / math.sqrt(df))
    s, c, c2 = math.sin(theta), math.cos(theta), math.cos(theta) ** 2
    total, term = 1.0, 1.0
    if df % 2 == 1:
        if df == 1:
            return 2 / math.pi * theta
        for k in range(1, (df - 3) // 2 + 1):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + s * c * total)
    for k in range(1, (df - 2) // 2 + 1):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def sign_test(wins_a: int, wins_b: int) -> float | None:
    """Two-sided exact sign test (ties already excluded): 2·P(X ≤ min) under Binomial(n, ½)."""
    n = wins_a + wins_b
    if n == 0:
        return None
    k = min(wins_a, wins_b)
    tail = Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2 ** n)
    return float(min(Fraction(1), 2 * tail))


def mos_table(panel: str, rows: list[dict], labels: Sequence[str], offsets: Sequence[float]) -> list[dict]:
    out = []
    for label in labels:
        for off in offsets:
            cell = [r for r in rows if r["system"] == label and r["offset_s"] == off]
            scores = [r["score"] for r in cell if r["score"] is not None]
            n = len(scores)
            mean = sum(scores) / n if n else None
            sd = math.sqrt(sum((x - mean) ** 2 for x in scores) / (n - 1)) if n > 1 else None
            half = t_quantile_975(n - 1) * sd / math.sqrt(n) if n > 1 else None
            out.append({"panel": panel, "system": label, "offset_s": off, "n": n,
                        "missing": len(cell) - n, "raters": len({r["rater"] for r in cell}),
                        "mos": mean, "sd": sd,
                        "ci95_low": mean - half if half is not None else None,
                        "ci95_high": mean + half if half is not None else None})
    return out


def preference_table(panel: str, rows: list[dict], labels: Sequence[str],
                     offsets: Sequence[float]) -> list[dict]:
    """Per system pair (in the key's system order) and offset, plus all offsets pooled."""
    out = []
    for a, b in itertools.combinations(labels, 2):
        mine = [r for r in rows if set(r["systems"]) == {a, b}]
        for off in [*offsets, "all"]:
            sel = [r for r in mine if off == "all" or r["offset_s"] == off]
            wa = sum(r["winner"] == a for r in sel)
            wb = sum(r["winner"] == b for r in sel)
            ties = sum(r["winner"] == "tie" for r in sel)
            n = wa + wb + ties
            out.append({"panel": panel, "system_a": a, "system_b": b, "offset_s": off,
                        "a_wins": wa, "b_wins": wb, "ties": ties, "missing": len(sel) - n, "n": n,
                        "a_rate": wa / n if n else None, "b_rate": wb / n if n else None,
                        "tie_rate": ties / n if n else None, "sign_test_p": sign_test(wa, wb)})
    return out


def collect_ratings(paths: Sequence[str | os.PathLike], out: str | os.PathLike,
                    preference_out: str | os.PathLike | None = None,
                    plot_out: str | os.PathLike | None = None,
                    keys: Sequence[str | os.PathLike] = (),
                    listening: str | os.PathLike = "results/listening") -> dict:
    """Unblind every ratings file (files, or folders of ``*.json``) against its panel's key and
    write the MOS and preference tables and the MOS-vs-time plot. Nothing is written unless every
    file is valid."""
    for target in (out, preference_out, plot_out):
        if target:
            check_parent(Path(target), PanelError)
    files = _ratings_files(paths)
    by_panel: dict[str, dict] = {}
    for k in keys:
        key = load_key(k)
        by_panel[key["panel"]] = key
    mos_rows, pref_rows, seen = [], [], {}
    per_panel: dict[str, tuple[list, list]] = {}
    for path in files:
        doc = read_ratings(path)
        if doc["panel"] not in by_panel and not RATER_RE.fullmatch(doc["panel"]):
            raise PanelError(f"{path}: panel {doc['panel']!r} is not a panel name (letters, "
                             "digits, '_', '.', '-'; no folder may be named)")
        if doc["panel"] not in by_panel:
            by_panel[doc["panel"]] = load_key(Path(listening) / doc["panel"] / "key.json")
        key = by_panel[doc["panel"]]
        who = (doc["panel"], doc["rater"])
        if who in seen:
            raise PanelError(f"{path}: rater {doc['rater']!r} already rated panel "
                             f"{doc['panel']!r} in {seen[who]} (one file per rater)")
        seen[who] = path
        m, p = unblind(path, doc, key)
        per_panel.setdefault(doc["panel"], ([], []))
        per_panel[doc["panel"]][0].extend(m)
        per_panel[doc["panel"]][1].extend(p)
    for panel, (m, p) in sorted(per_panel.items()):
        key = by_panel[panel]
        labels, offsets = list(key["systems"]), key["offsets_s"]
        heard = {(c["system"], c["offset_s"]): (key.get("heard") or {}).get(cid)
                 for cid, c in key["clips"].items()}
        mos_rows += [{**r, "heard": heard.get((r["system"], r["offset_s"]))}
                     for r in mos_table(panel, m, labels, offsets)]
        pref_rows += preference_table(panel, p, labels, offsets)
    out = Path(out)
    preference_out = Path(preference_out) if preference_out else out.with_name("preference.csv")
    write_csv(out, mos_rows)
    write_csv(preference_out, pref_rows)
    if plot_out:
        plot_mos(mos_rows, Path(plot_out))
    return {"files": len(files), "mos": mos_rows, "preference": pref_rows}


def _ratings_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.json"))
            if not found:
                raise PanelError(f"{p}: no ratings files (*.json) in this folder")
            files += found
        else:
            files.append(p)
    if not files:
        raise PanelError("no ratings files given")
    return files


def plot_mos(rows: list[dict], path: Path) -> None:
    """MOS vs conversation time, one line per system with its 95 % CI: does quality hold up?"""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unit = 60 if max((r["offset_s"] for r in rows), default=0) >= 120 else 1
    panels = sorted({r["panel"] for r in rows})
    fig, ax = plt.subplots(figsize=(6, 3.8))
    lines = [(p, s) for p in panels for s in dict.fromkeys(r["system"] for r in rows if r["panel"] == p)]
    span = max((r["offset_s"] for r in rows), default=0) / unit or 1
    for k, (panel, label) in enumerate(lines):
        dodge = 0.012 * span * (k - (len(lines) - 1) / 2)  # keep the CI bars apart
        pts = [r for r in rows if r["panel"] == panel and r["system"] == label and r["mos"] is not None]
        x = [r["offset_s"] / unit + dodge for r in pts]
        y = [r["mos"] for r in pts]
        err = [[r["mos"] - r["ci95_low"] if r["ci95_low"] is not None else 0 for r in pts],
               [r["ci95_high"] - r["mos"] if r["ci95_high"] is not None else 0 for r in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=4,
                    label=label if len(panels) == 1 else f"{panel}: {label}")
    ax.set(xlabel=f"conversation time ({'min' if unit == 60 else 's'})", ylabel="MOS (1–5, 95 % CI)",
           ylim=(0.8, 5.2), title="Listening panel: naturalness vs time")
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".")))
    plt.close(fig)
