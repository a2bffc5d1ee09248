"""Encoded conversations and their base checkpoint, packed small enough to carry to a machine that
cannot build them (the GPU machine has no Festival, and a useful set's audio is gigabytes).

Why it can stay honest: everything downstream finds codes by content. A packed manifest line keeps
its alignments and adds ``audio_sha256`` and ``audio_seconds`` (the wav's digest and length, which
decided how it was encoded) but drops the wav; the codes cache keys
on that digest and Mimi's (:func:`ttt.data.codes.audio_digest`), so the packed codes files serve
exactly those recordings under exactly that Mimi. The base's ``mimi.safetensors`` (hundreds of MB)
travels as the tensors it changes over a reference Mimi that every machine builds bit for bit
(``tiny-random``, drawn with numpy): ``unpack`` rebuilds it and refuses the result unless its
sha256 is the recorded one.

Layout of a pack: ``pack.json``; ``base/`` (the base's files but Mimi, ``mimi-delta.safetensors``);
``data/<name>/`` (``manifest.jsonl`` and the alignment jsons); ``cache/codes/`` (the codes files).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ttt.base.identity import file_digest

FORMAT = "ttt-codes-pack/1"
DELTA = "mimi-delta.safetensors"


def _sha256(path: Path) -> str:
    return file_digest(path, remember=False)


def mimi_delta(mimi_file: Path, reference_file: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``mimi_file`` that differ from the reference's (same keys, shapes, dtypes)."""
    mine, ref = load_file(str(mimi_file)), load_file(str(reference_file))
    if mine.keys() != ref.keys():
        raise ValueError(f"{mimi_file}: not a variant of the reference Mimi {reference_file} "
                         f"(keys differ: {sorted(mine.keys() ^ ref.keys())[:3]})")
    out = {}
    for key, value in mine.items():
        if value.shape != ref[key].shape or value.dtype != ref[key].dtype:
            raise ValueError(f"{mimi_file}: {key} is {list(value.shape)} {value.dtype}, the "
                             f"reference's {list(ref[key].shape)} {ref[key].dtype}")
        if not torch.equal(value, ref[key]):
            out[key] = value.contiguous()
    return out


def pack(base_dir: Path, reference: str, manifests: dict[str, Path], cache_dir: Path, out: Path) -> dict:
    """Write the pack ``out`` (built beside, renamed into place) and return its ``pack.json``.
    Every conversation's codes must already be cached for ``base_dir``'s Mimi."""
    from ttt.data.codes import LazyMimi, TrainBase, _codes_key
    from ttt.data.conversations import check_audio, read_manifest
    from ttt.moshi.model import resolve_model

    base_dir, cache_dir = Path(base_dir), Path(cache_dir)
    reference_dir = Path(resolve_model(reference, cache_dir / "models"))
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "base").mkdir(parents=True)
    (tmp / "cache" / "codes").mkdir(parents=True)
    for f in base_dir.iterdir():
        if f.is_file() and f.name != "mimi.safetensors" and not f.name.startswith("."):
            shutil.copyfile(f, tmp / "base" / f.name)
    delta = mimi_delta(base_dir / "mimi.safetensors", reference_dir / "mimi.safetensors")
    save_file(delta, str(tmp / "base" / DELTA))
    base = TrainBase(str(base_dir), base_dir, "cpu")
    lazy = LazyMimi(lambda: base.mimi, base.sources.num_codebooks)
    info = {"format": FORMAT, "reference": reference,
            "reference_mimi_sha256": _sha256(reference_dir / "mimi.safetensors"),
            "mimi_sha256": _sha256(base_dir / "mimi.safetensors"), "delta_tensors": sorted(delta),
            "manifests": {}}
    for name, manifest in manifests.items():
        manifest = Path(manifest)
        folder = tmp / "data" / name
        folder.mkdir(parents=True)
        items = read_manifest(manifest)
        lines = [json.loads(x) for x in manifest.read_text().splitlines() if x.strip()]
        if len(lines) != len(items):
            raise ValueError(f"{manifest}: {len(lines)} lines but {len(items)} conversations")
        for line, item in zip(lines, items):
            key = _codes_key(lazy, item, base.mimi_id)[:32]
            codes = cache_dir / "codes" / f"{key}.safetensors"
            if not codes.is_file():
                raise ValueError(f"{item.path}: codes not cached in {cache_dir / 'codes'} for this "
                                 "base's Mimi (encode the manifest first: python -m ttt.control encode)")
            shutil.copyfile(codes, tmp / "cache" / "codes" / codes.name)
            target = folder / line["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.path.with_suffix(".json"), target.with_suffix(".json"))
            line["audio_sha256"] = _sha256(item.path)
            line["audio_seconds"] = check_audio(item.path, item.channels)  # how it was encoded
        (folder / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        info["manifests"][name] = {"source": str(manifest), "conversations": len(lines)}
    (tmp / "pack.json").write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return info


def unpack(pack_dir: Path, cache_dir: Path | None = None) -> Path:
    """Rebuild ``pack_dir/base/mimi.safetensors`` from the reference Mimi and the delta; returns
    the base folder. Refuses (ValueError naming the file) a reference or result whose sha256 is
    not the recorded one: then the codes would belong to another Mimi."""
    from ttt.moshi.model import resolve_model

    pack_dir = Path(pack_dir)
    info_path = pack_dir / "pack.json"
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{info_path}: not a codes pack ({exc})") from None
    if info.get("format") != FORMAT:
        raise ValueError(f"{info_path}: format {info.get('format')!r}, expected {FORMAT}")
    base = pack_dir / "base"
    target = base / "mimi.safetensors"
    if target.is_file() and _sha256(target) == info["mimi_sha256"]:
        return base
    cache_dir = Path(cache_dir) if cache_dir is not None else pack_dir / "cache"
    reference = Path(resolve_model(info["reference"], cache_dir / "models")) / "mimi.safetensors"
    if _sha256(reference) != info["reference_mimi_sha256"]:
        raise ValueError(f"{reference}: the reference Mimi {info['reference']!r} built here differs "
                         "from the packing machine's (sha256)")
    tensors = load_file(str(reference))
    tensors.update(load_file(str(base / DELTA)))
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp))
    if _sha256(tmp) != info["mimi_sha256"]:
        tmp.unlink()
        raise ValueError(f"{base / DELTA}: the rebuilt Mimi's sha256 is not the recorded one")
    tmp.rename(target)
    return base


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ttt.data.codes_pack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="pack encoded manifests and their base",
                       description="example: python -m ttt.data.codes_pack pack --base W/fitted "
                                   "--manifest train=W/data/train/manifest.jsonl --out PACK")
    p.add_argument("--base", required=True, help="the base checkpoint folder the codes were encoded with")
    p.add_argument("--reference", default="tiny-random", help="the Mimi the base's is a variant of")
    p.add_argument("--manifest", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("--cache-dir", default="results/cache")
    p.add_argument("--out", required=True)
    u = sub.add_parser("unpack", help="rebuild a pack's base Mimi (checked by sha256)",
                       description="example: python -m ttt.data.codes_pack unpack PACK")
    u.add_argument("pack")
    u.add_argument("--cache-dir", default=None, help="where the reference is built (default PACK/cache)")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            pairs = [m.split("=", 1) for m in args.manifest]
            if any(len(x) != 2 or not x[0] for x in pairs):
                raise ValueError(f"--manifest: expected NAME=PATH, got {args.manifest}")
            info = pack(Path(args.base), args.reference, {k: Path(v) for k, v in pairs},
                        Path(args.cache_dir), Path(args.out))
            print(json.dumps({k: v for k, v in info.items() if k != "delta_tensors"}))
        else:
            print(unpack(Path(args.pack), args.cache_dir))
    except (ValueError, OSError) as exc:
        parser.exit(2, f"error: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
