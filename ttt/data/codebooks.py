"""Mimi's quantizer codebooks fitted to the latents of the control's own audio, by k-means per
residual level, and the statistics that say whether the codes carry the audio.

Why: no package ships Mimi's trained weights, and the random Mimi's codebooks (N(0, 0.01²) draws
far from where its encoder puts latents) barely use their codes: one code filled 99 % of silent
frames and 75 % of frames with sound, and two different conversations shared 80.7 % of their
codes frame by frame. Fitting the codebooks to the latents the (still random) encoder produces
makes different audio give different codes; the decoder stays random, so audio decoded from the
codes is still noise.

Levels as Mimi quantizes: level 0 is ``rvq_first`` (the "semantic" codebook) on its input
projection of the latent; levels 1-7 are ``rvq_rest``'s residual codebooks, each fitted to what
the levels before it left over. K-means is Lloyd's algorithm in float64 from a seeded sample of
the latents; centroid sums are accumulated on the CPU in a fixed order, so a fit is bitwise
deterministic on a given device (tests). A centroid that loses all its frames keeps its place.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from ttt.data.conversations import FRAME_RATE, MAIN, load_audio, read_manifest


def levels(quantizer) -> list[tuple[torch.nn.Module, torch.nn.Module, int]]:
    """(input projection, codebook, index within its residual stack) of each level, in code order."""
    out = [(quantizer.rvq_first.input_proj, quantizer.rvq_first.vq.layers[0]._codebook, 0)]
    for i, layer in enumerate(quantizer.rvq_rest.vq.layers):
        out.append((quantizer.rvq_rest.input_proj, layer._codebook, i))
    return out


@torch.no_grad()
def latents(mimi, manifest: str | os.PathLike, conversations: int, batch: int = 16) -> torch.Tensor:
    """[N, D] unquantized latents (float32, CPU) of both channels of the manifest's first
    ``conversations`` conversations, frames in order."""
    device = next(mimi.parameters()).device
    items = read_manifest(manifest)[:conversations]
    out = []
    for lo in range(0, len(items), batch):
        for item in items[lo:lo + batch]:  # one at a time: lengths may differ
            audio = torch.from_numpy(load_audio(item.path)).to(device)  # [2, samples]
            emb = mimi._encode_to_unquantized_latent(audio[:, None])   # [2, D, T]
            out.append(emb.permute(0, 2, 1).reshape(-1, emb.shape[1]).float().cpu())
    return torch.cat(out)


def kmeans(x: torch.Tensor, k: int, iters: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids [k, D] float64, assignment [N]) of Lloyd's k-means on ``x`` [N, D] (any device);
    initial centroids: ``k`` distinct rows drawn by numpy's generator from ``seed``."""
    x = x.double()
    x_cpu = x.cpu()
    # fewer frames than codes (tiny dry runs only): repeated rows, whose copies stay unused
    pick = np.sort(np.random.default_rng(seed).choice(x.shape[0], k, replace=x.shape[0] < k))
    centroids = x[torch.as_tensor(pick, device=x.device)].clone()
    x_sq = (x * x).sum(1, keepdim=True)
    for _ in range(iters + 1):
        dist = x_sq - 2 * x @ centroids.T + (centroids * centroids).sum(1)[None]
        assign = dist.argmin(1)
        if _ == iters:
            break
        a_cpu = assign.cpu()
        sums = torch.zeros(k, x.shape[1], dtype=torch.float64).index_add_(0, a_cpu, x_cpu)
        counts = torch.bincount(a_cpu, minlength=k).double()
        keep = counts == 0
        new = sums / counts.clamp_min(1)[:, None]
        new[keep] = centroids[keep.to(centroids.device)].cpu()
        centroids = new.to(x.device)
    return centroids, assign


@torch.no_grad()
def fit_codebooks(mimi, x: torch.Tensor, iters: int = 15, seed: int = 0) -> list[dict]:
    """Fit the levels Mimi uses (``mimi.num_codebooks``: 8 of the quantizer's 32; all when it
    does not say) to latents ``x`` [N, D] in place; returns, per level, the share of codes used
    and the mean squared residual after the level. Levels are fitted in order on the residual of
    the earlier ones, so the unused ones change no code; leaving them random keeps a fitted Mimi
    a small delta over its base (ttt/data/codes_pack.py)."""
    device = next(mimi.parameters()).device
    x = x.to(device)
    report, residual = [], None
    used = levels(mimi.quantizer)[:getattr(mimi, "num_codebooks", None)]
    for level, (proj, codebook, index) in enumerate(used):
        if index == 0:  # a new stack: its projection of the latent
            residual = proj(x.T[None].to(proj.weight.dtype if hasattr(proj, "weight") else x.dtype))[0].T.double()
        centroids, assign = kmeans(residual, codebook.codebook_size, iters, seed + level)
        codebook.embedding_sum.copy_(centroids.to(codebook.embedding_sum.dtype))
        codebook.cluster_usage.fill_(1.0)
        codebook._initialized.fill_(1.0)
        codebook._embedding = None  # the cached embedding is recomputed from the new sums
        residual = residual - centroids[assign]
        report.append({"level": level, "codes_used": int(torch.unique(assign).numel()),
                       "residual_mse": float((residual * residual).mean())})
    return report


# ---- do the codes carry the audio? ----------------------------------------------------------

def entropy_bits(codes: torch.Tensor, card: int) -> float:
    p = torch.bincount(codes.flatten(), minlength=card).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum()) + 0.0  # no -0.0 for a single code


def speech_frames(alignments, frames: int, channel: int) -> np.ndarray:
    """[frames] bool: frames of ``channel`` (0 = Moshi = MAIN, 1 = user) overlapping a word."""
    mask = np.zeros(frames, dtype=bool)
    for _word, (start, end), speaker in alignments:
        if (speaker == MAIN) == (channel == 0):
            mask[int(start * FRAME_RATE):min(frames, int(np.ceil(end * FRAME_RATE)))] = True
    return mask


def code_statistics(audio_codes: list[torch.Tensor], alignments: list, silence: torch.Tensor,
                    card: int) -> dict:
    """``audio_codes``: [2, 8, T] per conversation (left, right). Per level: entropy of code use
    (bits; log2(card) is uniform use); the share of speech frames whose level-0 code is
    silence's (``silence``: the level-0 code of digital silence); the share of (frame, level,
    channel) codes two different conversations (consecutive pairs) have in common."""
    stacked = torch.cat([c.permute(1, 0, 2).reshape(c.shape[1], -1) for c in audio_codes], 1)
    is_silence, speech = [], 0
    for c, align in zip(audio_codes, alignments):
        for ch in range(2):
            mask = torch.from_numpy(speech_frames(align, c.shape[-1], ch))
            is_silence.append(int((c[ch, 0][mask] == silence).sum()))
            speech += int(mask.sum())
    shared = []
    for a, b in zip(audio_codes, audio_codes[1:]):
        t = min(a.shape[-1], b.shape[-1])
        shared.append(float((a[..., :t] == b[..., :t]).double().mean()))
    return {"entropy_bits": [entropy_bits(stacked[level], card) for level in range(stacked.shape[0])],
            "entropy_uniform_bits": float(np.log2(card)),
            "speech_frames_with_silence_code0": sum(is_silence) / max(speech, 1),
            "silence_code0": int(silence), "speech_frames": speech,
            "codes_shared_by_two_conversations": float(np.mean(shared)) if shared else None}


@torch.no_grad()
def silence_code(mimi) -> int:
    """Level-0 code of 2 s of digital silence (its most frequent frame code)."""
    device = next(mimi.parameters()).device
    codes = mimi.encode(torch.zeros(1, 1, 48_000, device=device))[0, 0]
    return int(torch.mode(codes.cpu()).values)


def write_fitted_base(base_dir: Path, mimi, out: Path, info: dict) -> Path:
    """``out``: the base checkpoint's files with ``mimi.safetensors`` replaced by the fitted Mimi
    and ``codebooks.json`` (how it was fitted), built beside and renamed into place."""
    from safetensors.torch import save_file

    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in base_dir.iterdir():
        if f.is_file() and f.name != "mimi.safetensors":
            shutil.copyfile(f, tmp / f.name)
    save_file({k: v.detach().contiguous().cpu() for k, v in mimi.state_dict().items()},
              str(tmp / "mimi.safetensors"))
    (tmp / "codebooks.json").write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import time

    from ttt.base.files import write_text
    from ttt.base.identity import file_digest
    from ttt.data.codes import mimi_codes
    from ttt.moshi.model import load_checkpoint, resolve_model

    parser = argparse.ArgumentParser(prog="python -m ttt.data.codebooks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="a base checkpoint whose Mimi codebooks are fitted to a manifest's audio")
    f.add_argument("--base", default="tiny-random")
    f.add_argument("--manifest", required=True)
    f.add_argument("--conversations", type=int, default=100, help="first N conversations' latents")
    f.add_argument("--iters", type=int, default=15)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", required=True, help="new base checkpoint folder")
    s = sub.add_parser("stats", help="code statistics of a manifest under each base → JSON")
    s.add_argument("--base", action="append", required=True)
    s.add_argument("--manifest", required=True)
    s.add_argument("--out", required=True)
    for p in (f, s):
        p.add_argument("--cache-dir", default="results/cache")
        p.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False  # the codes must not depend on TF32
    if args.command == "fit":
        directory = resolve_model(args.base, Path(args.cache_dir) / "models")
        mimi = load_checkpoint(directory, device=args.device).mimi
        t0 = time.perf_counter()
        x = latents(mimi, args.manifest, args.conversations)
        t1 = time.perf_counter()
        report = fit_codebooks(mimi, x, args.iters, args.seed)
        info = {"base": args.base, "base_mimi_sha256": file_digest(Path(directory) / "mimi.safetensors"),
                "manifest": str(args.manifest), "conversations": args.conversations,
                "latent_frames": int(x.shape[0]), "iters": args.iters, "seed": args.seed,
                "levels": report, "latents_s": round(t1 - t0, 2),
                "fit_s": round(time.perf_counter() - t1, 2)}
        write_fitted_base(Path(directory), mimi, Path(args.out), info)
        print(json.dumps({k: v for k, v in info.items() if k != "levels"}))
        return 0
    result = {}
    for spec in args.base:
        directory = resolve_model(spec, Path(args.cache_dir) / "models")
        bundle = load_checkpoint(directory, device=args.device)
        items = read_manifest(args.manifest)
        codes = [mimi_codes(bundle.mimi, item, Path(args.cache_dir) / "codes", bundle.mimi_id)
                 for item in items]
        result[spec] = code_statistics(codes, [i.alignments for i in items],
                                       torch.tensor(silence_code(bundle.mimi)),
                                       bundle.mimi.quantizer.cardinality)
    write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
