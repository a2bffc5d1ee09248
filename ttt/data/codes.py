"""Moshi's 17 input streams of a conversation (text at 12.5 Hz, 8 Moshi + 8 user Mimi codebooks),
with Mimi codes cached by content, and the codes of a whole manifest under a base checkpoint's Mimi
(what training and the control suite read)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ttt.base.files import atomic_write
from ttt.base.identity import file_digest, value_digest
from ttt.data import mimi_encode
from ttt.data.conversations import (CODES_FORMAT, SAMPLE_RATE, DataError, Item, check_audio, load_audio,
                                    read_manifest, text_stream)
from ttt.moshi.checkpoints import resolve_checkpoint
from ttt.moshi.model import load_mimi


def encode_chunk_frames(item: Item) -> int | None:
    """How ``item``'s audio is encoded: None in one Mimi call, else frames per streamed chunk
    (decided by the file's own length, read from its header, or recorded for a codes-only item)."""
    if item.audio_seconds is not None and not item.path.exists():
        return mimi_encode.chunk_frames(item.audio_seconds)
    return mimi_encode.chunk_frames(check_audio(item.path, item.channels))


def _codes_key(mimi, item: Item, mimi_id: str) -> str:
    """What a cached code file was computed from: Mimi's weights, the audio, the settings, and
    for streamed audio the chunk (one-shot keys are those of earlier runs: their files stay valid)."""
    # The audio is hashed every time (remember=False): cheap next to encoding it, and no stamp
    # of an overwritten file can then serve another recording's codes.
    spec = {"format": CODES_FORMAT, "mimi": mimi_id, "audio": audio_digest(item),
            "channels": item.channels, "codebooks": getattr(mimi, "num_codebooks", None),
            "sample_rate": SAMPLE_RATE}
    frames = encode_chunk_frames(item)
    if frames is not None:
        spec["encode"] = {"method": "streamed", "chunk_frames": frames}
    return value_digest(spec)


def audio_digest(item: Item) -> str:
    """The audio's content digest: the file's, checked against a recorded ``audio_sha256``; the
    recorded one alone for a codes-only item (no file: encoded elsewhere)."""
    if item.audio_sha256 is not None and not item.path.exists():
        return item.audio_sha256
    digest = file_digest(item.path, remember=False)
    if item.audio_sha256 is not None and digest != item.audio_sha256:
        raise DataError(f"{item.path}: content differs from the manifest's audio_sha256 "
                        f"({digest[:12]}… vs {item.audio_sha256[:12]}…)")
    return digest


@torch.no_grad()
def mimi_codes(mimi, item: Item, cache_dir: Path, mimi_id: str) -> torch.Tensor:
    """[2, n_q, frames] codes (left, right), computed once per audio content, Mimi weights
    (``mimi_id``: their content digest) and settings; audio over ``ONE_SHOT_MAX_S`` is encoded
    in streamed chunks (bounded memory, :mod:`ttt.data.mimi_encode`). Stored as safetensors
    (nothing executable is loaded from the cache); an unreadable cached file is discarded and
    recomputed."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = cache_dir / f"{_codes_key(mimi, item, mimi_id)[:32]}.safetensors"
    if cached.is_file():
        try:
            codes = load_file(str(cached))["codes"]
            if codes.dtype == torch.long and codes.dim() == 3 and codes.shape[0] == 2:
                return codes
            raise ValueError(f"codes of shape {list(codes.shape)}, {codes.dtype}")
        except Exception as exc:  # noqa: BLE001 - any unreadable cache file is recomputed
            print(f"warning: {cached}: discarding a corrupt cached codes file "
                  f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})", file=sys.stderr)
            cached.unlink(missing_ok=True)
    if not item.path.exists():
        raise DataError(f"{item.path}: codes-only conversation whose codes are not in {cache_dir} "
                        f"for this Mimi (rebuild the pack's base, or encode the audio)")
    audio = torch.from_numpy(load_audio(item.path, channels=item.channels))
    if item.channels == 1:  # the user speaks; Moshi's channel is silent
        audio = torch.cat([torch.zeros_like(audio), audio])
    codes = mimi_encode.encode(mimi, audio, encode_chunk_frames(item)).cpu().long().contiguous()
    atomic_write(cached, lambda tmp: save_file({"codes": codes}, str(tmp)))
    return codes


def conversation_codes(mimi, tokenizer, item: Item, cache_dir: Path, mimi_id: str) -> torch.Tensor:
    """[1, 17, T] input of ``lm(codes)``: text, 8 Moshi codebooks (left), 8 user (right)."""
    audio = mimi_codes(mimi, item, cache_dir, mimi_id)
    frames = audio.shape[-1]
    text = text_stream(item.alignments, tokenizer, frames)
    return torch.cat([text[None], audio[0], audio[1]], dim=0)[None]


class TrainBase:
    """Tokenizer and Mimi of the base checkpoint; Mimi (385 MB for the random one) is loaded only
    when a conversation's codes are not cached yet."""

    def __init__(self, spec: str, directory: Path, device: str, mimi=None) -> None:
        import sentencepiece
        self.spec, self.sources, self.device, self._mimi = spec, resolve_checkpoint(directory), device, mimi
        self.tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(self.sources.tokenizer))
        self.mimi_id = file_digest(self.sources.mimi)

    @property
    def mimi(self):
        if self._mimi is None:
            self._mimi = load_mimi(self.sources, self.device)
        return self._mimi


def load_codes(manifest: str, base: TrainBase, cache_dir: str) -> list[torch.Tensor]:
    """[17, T] codes of every conversation of a manifest (Mimi codes cached by content)."""
    items = read_manifest(manifest)
    if any(i.reference is not None for i in items):
        raise ValueError(f"{manifest}: training needs stereo conversations with alignments")
    cache = Path(cache_dir) / "codes"
    mimi = LazyMimi(lambda: base.mimi, base.sources.num_codebooks)
    return [conversation_codes(mimi, base.tokenizer, item, cache, base.mimi_id)[0]
            for item in items]


class LazyMimi:
    """Stands for a Mimi that ``load()`` returns, called on first use: a conversation whose codes
    are cached never loads it. ``num_codebooks`` (part of the codes cache key) is known without it."""

    def __init__(self, load, num_codebooks: int) -> None:
        self._load, self.num_codebooks = load, num_codebooks

    def __getattr__(self, name):
        return getattr(self._load(), name)
