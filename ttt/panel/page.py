"""Human listening panel (seed 000 item 11): blind A/B pages from paired audio (the server that
takes ratings back: :mod:`ttt.panel.server`; reading and aggregating them: :mod:`ttt.panel.ratings`).

Numbers alone did not tell the seeds' authors that their model had stopped talking; their ears
did. ``build_panel`` cuts clips at fixed conversation offsets from each system's audio (a
``generate`` cell's ``out.wav``) and writes a self-contained page that names no system: clips
have opaque ids, and the mapping lives in ``key.json`` beside the page, which raters never get.
Each rater's item order and A/B sides derive from the panel seed and the rater id through a PRNG
implemented identically in :mod:`ttt.panel.ratings` and in the page, so ``collect_ratings`` recomputes
and checks them before unblinding. Outputs are written to temporary names and renamed into place.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import math
import os
import secrets
import shutil
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ttt.panel.ratings import KEY_FORMAT, RATER_RE, VERSION, PanelError, rater_plan
from ttt.base.files import write_audio, write_text

FADE_S = 0.01  # a cut in mid-waveform clicks; the click would tell clips apart, not systems
TEMPLATE = Path(__file__).parent / "templates" / "panel.html"


@dataclass(frozen=True)
class System:
    label: str
    wav: Path


def parse_system(spec: str) -> System:
    """``LABEL=PATH``; PATH is a wav file or a generate cell directory holding ``out.wav``."""
    label, sep, path = spec.partition("=")
    if not sep or not label or not path:
        raise PanelError(f"--system {spec!r}: expected LABEL=PATH (a wav or a generate cell directory)")
    p = Path(path)
    return System(label, p / "out.wav" if p.is_dir() else p)


def heard_in_clip(system: System, digest: str, offset_s: float, clip_s: float) -> str | None:
    """What the ASR stage heard in the clip's span (``<cell>/asr/words.jsonl`` beside a generate
    cell's ``cell/``), for the results side only; None without ASR output for exactly this audio
    (its sha256 must match: stale transcripts are never shown)."""
    asr = system.wav.parent.parent / "asr"
    try:
        summary = json.loads((asr / "asr.json").read_text())
        if summary.get("status") != "ok" or (summary.get("audio") or {}).get("sha256") != digest:
            return None
        words = [json.loads(line) for line in (asr / "words.jsonl").read_text().splitlines() if line]
    except (OSError, ValueError):
        return None
    return " ".join(w["word"] for w in words if offset_s <= w["start"] < offset_s + clip_s)


def read_audio(system: System) -> tuple[np.ndarray, int]:
    """Mono float samples of a system's audio; a missing or unreadable file is a PanelError."""
    import soundfile as sf

    if not system.wav.is_file():
        raise PanelError(f"{system.wav}: audio of system {system.label!r} not found "
                         "(did its generate cell complete?)")
    try:
        samples, rate = sf.read(str(system.wav), dtype="float32", always_2d=True)
    except RuntimeError as exc:
        raise PanelError(f"{system.wav}: not readable audio ({exc})") from None
    return samples.mean(axis=1), int(rate)


def cut_clip(samples: np.ndarray, rate: int, offset_s: float, clip_s: float) -> np.ndarray | None:
    """``clip_s`` seconds from ``offset_s`` with short fades, or None when the audio ends first
    (a clip must never be shorter than the others: its length would identify it)."""
    start, n = round(offset_s * rate), round(clip_s * rate)
    if start + n > len(samples):
        return None
    clip = samples[start:start + n].copy()
    fade = min(int(FADE_S * rate), n // 2)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        clip[:fade] *= ramp
        clip[-fade:] *= ramp[::-1]
    return clip


def clip_id(seed: int, label: str, offset_s: float, clip_s: float, audio_digest: str) -> str:
    """Opaque but reproducible, and new whenever the clip's sound changes (so old ratings cannot
    match a rebuilt page). The source digest is not on the page: a rater cannot recompute which
    label produced an id."""
    text = f"{seed}|{label}|{offset_s:g}|{clip_s:g}|{audio_digest}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _item_id(kind: str, clips: Iterable[str]) -> str:
    return f"{kind[0]}{hashlib.sha256(('|'.join(clips)).encode()).hexdigest()[:10]}"


def make_items(clips: dict[str, dict], labels: Sequence[str], offsets: Sequence[float]) -> list[dict]:
    """One rating item per clip and one preference item per system pair and offset, sorted by id
    so that key order reveals nothing either."""
    by = {(c["system"], c["offset_s"]): cid for cid, c in clips.items()}
    items = [{"id": _item_id("mos", [cid]), "kind": "mos", "clip": cid} for cid in clips]
    for off in offsets:
        for a, b in itertools.combinations(labels, 2):
            pair = sorted([by[(a, off)], by[(b, off)]])
            items.append({"id": _item_id("pair", pair), "kind": "pair", "clips": pair})
    return sorted(items, key=lambda it: it["id"])


def page_data(key: dict) -> dict:
    """What the page may know: ids, files and the seed; never systems, sources or offsets."""
    return {"panel": key["panel"], "panel_id": key["panel_id"], "seed": key["seed"],
            "clips": {cid: f"clips/{cid}.wav" for cid in sorted(key["clips"])},
            "items": key["items"]}


def render_page(data: dict) -> str:
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return TEMPLATE.read_text().replace("__PANEL_DATA__", blob)


def qa_notes(key: dict) -> str:
    """The QA-notes template (seed 000 §4): what was built, the links, and room for the ears."""
    systems = "\n".join(f"| `{s}` | `{v['source']}` | {v['duration_s']:.1f} s |"
                        for s, v in key["systems"].items())
    raters = "\n".join(f"- `{r}`: `index.html?rater={r}`" for r in key["raters"]) or \
        "- (none listed: raters type their own id on the page)"
    name = key["panel"]
    heard = "\n".join(
        f"| `{cid}` | `{c['system']}` | {c['offset_s']:g} s | "
        f"{'n/a' if key.get('heard', {}).get(cid) is None else key['heard'][cid].replace('|', '/')} |"
        for cid, c in sorted(key["clips"].items(), key=lambda kv: (kv[1]["system"], kv[1]["offset_s"])))
    return f"""# Listening panel `{name}` — QA notes

Built {key["created_at"]}; seed {key["seed"]}; clips of {key["clip_s"]:g} s at
{", ".join(f"{o:g}" for o in key["offsets_s"])} s into the conversation;
{len(key["clips"])} clips, {len(key["items"])} items per rater.

- Page: [index.html](index.html). Send raters [{name}-raters.zip]({name}-raters.zip) (the page and
  its clips only). Never send `key.json` or this file: they name the systems.
- Or serve it: `python -m ttt panel serve results/listening/{name}`; ratings are then posted into
  `ratings/`. Raters who open the page from the zip send back the downloaded
  `ratings-{name}-<rater>.json`; put those files in `ratings/`.
- Results: `python -m ttt panel collect results/listening/{name}/ratings --out results/tables/mos.csv`
  → [MOS table](../../tables/mos.csv), [preferences](../../tables/preference.csv),
  [MOS vs conversation time](../../plots/mos.png) (or `snakemake` once `ratings/` has files).

## Systems (blind to raters)

| system | audio | length |
|---|---|---|
{systems}

## What the recogniser heard in each clip (results side: never shown to raters)

The ASR stage's words (`results/cells/<cell>/asr/`) inside each clip's span, to link what was
heard by ears to what was recognised (empty: nothing recognised; n/a: no ASR output for this audio).

| clip | system | offset | heard |
|---|---|---|---|
{heard}

## Raters

{raters}

## Listening conditions

- [ ] headphones, quiet room, volume set once on the first clip and left alone
- [ ] every clip played to the end before rating (the ratings file counts plays per item)

## Observations

| rater | date | what was heard (collapse, silence, word salad, artefacts) |
|---|---|---|
|  |  |  |

## Conclusion

MOS gap (TTT on − off) at each offset, preference p-values, and whether the numbers agree with
what was heard:
"""


def build_panel(name: str, systems: Sequence[System], offsets_s: Sequence[float], clip_s: float,
                seed: int, out_dir: str | os.PathLike, raters: Sequence[str] = ()) -> dict:
    """Write ``index.html``, ``clips/``, ``key.json``, the raters' zip and (when absent) the
    QA notes into ``out_dir``; returns the key."""
    _check_build_args(name, systems, offsets_s, clip_s, seed, raters)
    out = Path(out_dir)
    offsets = [float(o) for o in offsets_s]
    tmp = out / f".build.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "clips").mkdir(parents=True)
    try:
        clips, sources, heard = {}, {}, {}
        for system in systems:
            samples, rate = read_audio(system)
            digest = hashlib.sha256(system.wav.read_bytes()).hexdigest()
            sources[system.label] = {"source": str(system.wav), "sha256": digest,
                                     "duration_s": len(samples) / rate, "sample_rate": rate}
            for off in offsets:
                clip = cut_clip(samples, rate, off, clip_s)
                if clip is None:
                    raise PanelError(f"{system.wav}: system {system.label!r} has "
                                     f"{len(samples) / rate:.2f} s of audio, too short for a "
                                     f"{clip_s:g} s clip at offset {off:g} s (panel offsets_s/clip_s)")
                cid = clip_id(seed, system.label, off, clip_s, digest)
                write_audio(tmp / "clips" / f"{cid}.wav", clip, rate)
                clips[cid] = {"system": system.label, "offset_s": off}
                heard[cid] = heard_in_clip(system, digest, off, clip_s)
        labels = [s.label for s in systems]
        items = make_items(clips, labels, offsets)
        panel_id = hashlib.sha256(json.dumps([seed, clip_s, sorted(clips.items()), items],
                                             sort_keys=True).encode()).hexdigest()[:16]
        _refuse_orphaning_ratings(out, panel_id)
        key = {"format": KEY_FORMAT, "version": VERSION, "panel": name, "panel_id": panel_id,
               "seed": seed, "clip_s": float(clip_s), "offsets_s": offsets, "systems": sources,
               "clips": clips, "heard": heard, "items": items, "raters": list(raters),
               "plans": {r: rater_plan(seed, items, r) for r in raters},
               "tokens": _rater_tokens(out, raters),
               "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        (tmp / "key.json").write_text(json.dumps(key, indent=1) + "\n")
        (tmp / "index.html").write_text(render_page(page_data(key)))
        _write_zip(tmp / f"{name}-raters.zip", tmp, ["index.html"] +
                   [f"clips/{cid}.wav" for cid in sorted(clips)])
        _install(tmp, out, [f"{name}-raters.zip", "key.json", "index.html"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if raters:
        write_text(out / "rater-links.txt", "".join(
            f"{r}\tindex.html?rater={r}&token={key['tokens'][r]}\n" for r in raters))
    notes = out / "QA-notes.md"
    if not notes.exists():  # the notes are the QA person's once written: a rebuild keeps them
        write_text(notes, qa_notes(key))
    return key


def _rater_tokens(out: Path, raters: Sequence[str]) -> dict[str, str]:
    """A random token per rater (the server requires it on POST); a rebuild keeps the tokens
    already handed out, so the links raters hold stay valid."""
    try:
        old = json.loads((out / "key.json").read_text()).get("tokens") or {}
    except (OSError, ValueError, AttributeError):
        old = {}
    return {r: old[r] if isinstance(old.get(r), str) and len(old[r]) >= 22 else
            secrets.token_urlsafe(18) for r in raters}


def _check_build_args(name, systems, offsets_s, clip_s, seed, raters) -> None:
    if not RATER_RE.fullmatch(name):
        raise PanelError(f"panel name {name!r}: use letters, digits, '_', '.', '-'")
    labels = [s.label for s in systems]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise PanelError(f"systems {labels}: need at least two, with distinct labels")
    if not offsets_s or any(not _finite(o) or o < 0 for o in offsets_s) \
            or len(set(offsets_s)) != len(offsets_s):
        raise PanelError(f"offsets_s {list(offsets_s)}: need distinct finite offsets >= 0 (s)")
    if not _finite(clip_s) or clip_s <= 0:
        raise PanelError(f"clip_s {clip_s!r}: must be a finite number > 0 (s)")
    if not isinstance(seed, int) or seed < 0:
        raise PanelError(f"seed {seed!r}: must be an integer >= 0")
    for r in raters:
        if not RATER_RE.fullmatch(str(r)):
            raise PanelError(f"raters: {r!r} is not a valid rater id (letters, digits, '_', '.', '-')")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _refuse_orphaning_ratings(out: Path, panel_id: str) -> None:
    """A rebuild that changes the clips would leave returned ratings pointing at a page that no
    longer exists; refuse instead of silently invalidating them."""
    for path in sorted((out / "ratings").glob("*.json")):
        try:
            old = json.loads(path.read_text()).get("panel_id")
        except (OSError, ValueError, AttributeError):
            continue
        if old != panel_id:
            raise PanelError(f"{path}: ratings for another build of this panel ({old}); the new "
                             f"clips differ ({panel_id}). Move ratings/ away or use a new panel name")


def _write_zip(path: Path, root: Path, names: Sequence[str]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n in names:
            z.write(root / n, n)


def _install(tmp: Path, out: Path, files: Sequence[str]) -> None:
    """Move a finished build into place: clips first, the page last."""
    out.mkdir(parents=True, exist_ok=True)
    old = out / f".clips.old{os.getpid()}"
    if (out / "clips").exists():
        os.replace(out / "clips", old)
    os.replace(tmp / "clips", out / "clips")
    shutil.rmtree(old, ignore_errors=True)
    for f in files:
        os.replace(tmp / f, out / f)
