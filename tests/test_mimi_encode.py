"""Long audio is Mimi-encoded in streamed chunks (bounded memory): the codes equal upstream's
one-call encode, frame for frame, and the codes cache never mixes the two paths."""
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from moshi.models import loaders

from ttt.base.identity import file_digest, value_digest
from ttt.data import mimi_encode
from ttt.data.conversations import CODES_FORMAT, SAMPLE_RATE, load_audio, read_manifest
from ttt.data.codes import _codes_key, mimi_codes
from ttt.data.demo import write_demo_manifest
from ttt.moshi.tiny import DEMO_WORDS, randomize_mimi

FRAME = 1920

# Mimi's layout (24 kHz, 12.5 Hz, strides 8·6·5·4, its encoder transformer with rope and a
# causal context) at toy widths; no layer scale and a context of 6 steps (3 frames), so the
# transformer moves the codes and a chunk of 4 frames (8 steps) spans more than the context.
SMALL_MIMI = {
    "sample_rate": SAMPLE_RATE, "channels": 1, "frame_rate": 12.5,
    "seanet": {**loaders._seanet_kwargs, "dimension": 16, "n_filters": 4},
    "quantizer": {**loaders._quantizer_kwargs, "dimension": 8, "n_q": 8, "bins": 64,
                  "input_dimension": 16, "output_dimension": 16},
    "transformer": {**loaders._transformer_kwargs, "d_model": 16, "num_heads": 2, "num_layers": 2,
                    "layer_scale": None, "context": 6, "dim_feedforward": 32,
                    "input_dimension": 16, "output_dimensions": [16]},
}


@pytest.fixture(scope="module")
def small_mimi():
    mimi = loaders.get_mimi(None, SMALL_MIMI, device="cpu", num_codebooks=8)
    randomize_mimi(mimi, 0)
    return mimi.eval()


@pytest.fixture(scope="module")
def speech_like(tmp_path_factory):
    """A 7.33-s demo conversation (word tones on both channels), a partial last frame."""
    where = tmp_path_factory.mktemp("demo")
    item = read_manifest(write_demo_manifest(where, [7.33], seed=5, words=list(DEMO_WORDS)))[0]
    return item


def test_streamed_codes_equal_one_call(small_mimi, speech_like, monkeypatch):
    """Streamed over chunks of 1 to 5 frames (the last partial frame padded with zeros), the codes
    are those of upstream's single ``mimi.encode`` call, exactly, and so are the latents up to
    float summation order. A random Mimi's codes hardly depend on the audio (README), so the
    latents carry this test: upstream's streaming as is moves them far more than that."""
    audio = torch.from_numpy(load_audio(speech_like.path))
    half = audio.shape[-1] // 2  # cut in the second half's loudest word: the last frame has sound
    end = half + int(audio[:, half:].abs().sum(0).argmax()) + 700
    audio = audio[:, :end + (end % FRAME == 0)]
    assert audio.shape[-1] % FRAME and audio[:, -(audio.shape[-1] % FRAME):].abs().max() > 0.05
    frames = math.ceil(audio.shape[-1] / FRAME)
    with torch.no_grad():
        reference = small_mimi.encode(audio[:, None])
        latent = small_mimi._encode_to_unquantized_latent(audio[:, None])
        for chunk in (1, 4, 5):
            streamed = mimi_encode.encode(small_mimi, audio, chunk)
            assert streamed.shape == reference.shape == (2, 8, frames)
            assert torch.equal(streamed, reference), f"chunks of {chunk} frames"
        scale = latent.std(-1).mean()  # how much the latents move over time
        monkeypatch.setattr(small_mimi, "encode", small_mimi._encode_to_unquantized_latent)
        for chunk in (1, 4, 5):  # the streamed loop now returns latents
            streamed = mimi_encode.encode(small_mimi, audio, chunk)
            assert streamed.shape == latent.shape
            assert (streamed - latent).abs().max() < 1e-4 * scale, f"chunks of {chunk} frames"
        with small_mimi.streaming(2):  # upstream's ring of `context` keys, chunks of 4 frames
            padded = torch.nn.functional.pad(audio, (0, frames * FRAME - audio.shape[-1]))
            plain = torch.cat([small_mimi.encode(padded[:, None, s:s + 4 * FRAME])
                               for s in range(0, padded.shape[-1], 4 * FRAME)], dim=-1)
        assert (plain - latent).abs().max() > 1e-2 * scale


def test_codes_cache_keys_the_method(small_mimi, speech_like, tmp_path, monkeypatch):
    """At or under the threshold the key is the one of earlier runs (their files stay valid);
    over it, the key names the streamed chunk, so the paths never share a file; mimi_codes
    streams then, with the same codes."""
    old_key = value_digest({"format": CODES_FORMAT, "mimi": "m", "audio": file_digest(speech_like.path),
                            "channels": 2, "codebooks": 8, "sample_rate": SAMPLE_RATE})
    one_shot = _codes_key(small_mimi, speech_like, "m")
    assert one_shot == old_key
    calls = []
    real_encode = small_mimi.encode
    monkeypatch.setattr(small_mimi, "encode", lambda x: calls.append(x.shape[-1]) or real_encode(x))
    codes = mimi_codes(small_mimi, speech_like, tmp_path / "one", "m")
    samples = load_audio(speech_like.path).shape[-1]
    assert calls == [samples] and codes.shape[-1] == math.ceil(samples / FRAME) == 92
    monkeypatch.setattr(mimi_encode, "ONE_SHOT_MAX_S", 5.0)
    monkeypatch.setattr(mimi_encode, "CHUNK_FRAMES", 25)
    streamed_key = _codes_key(small_mimi, speech_like, "m")
    assert streamed_key != one_shot
    monkeypatch.setattr(mimi_encode, "CHUNK_FRAMES", 50)
    assert _codes_key(small_mimi, speech_like, "m") not in (one_shot, streamed_key)
    calls.clear()
    again = mimi_codes(small_mimi, speech_like, tmp_path / "one", "m")  # not the one-shot file
    assert calls == [50 * FRAME, 42 * FRAME]  # 92 frames, the last one padded
    assert torch.equal(again, codes)
    assert len(list((tmp_path / "one").glob("*.safetensors"))) == 2


MEMORY = textwrap.dedent("""
    import os, sys, threading, time, torch
    from moshi.models import loaders
    from ttt.data import mimi_encode
    torch.set_num_threads(1)
    chunk = None if sys.argv[1] == "one_call" else int(sys.argv[1])
    mimi = loaders.get_mimi(None, device="cpu", num_codebooks=8).eval()  # full size, as 7B's
    audio = 0.1 * torch.randn(1, 16 * 24000, generator=torch.Generator().manual_seed(0))
    page = os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page  # MB resident now
    with torch.no_grad():
        mimi_encode.encode(mimi, audio[:, :3 * 1920], None)  # warm-up: allocator, kernels
        before, top, done = rss(), [0.0], threading.Event()
        def watch():  # the resident set's growth during the encode, sampled every ms
            while not done.is_set():
                top[0] = max(top[0], rss() - before)
                time.sleep(0.001)
        watcher = threading.Thread(target=watch)
        watcher.start()
        mimi_encode.encode(mimi, audio, chunk)
        done.set()
        watcher.join()
    print(max(top[0], rss() - before))
""")


def _growth(chunk: str) -> float:
    """MB the resident set grows by while encoding 16 s, in a process of its own (a peak
    counter such as ru_maxrss also holds the model load's peak, which can hide the encode's)."""
    done = subprocess.run([sys.executable, "-c", MEMORY, chunk], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.split()[-1])


def test_streamed_memory_is_bounded():
    """Resident growth while encoding 16 s with the full-size Mimi: one call grows with the audio
    (~26 MB per second, README), 2-s chunks stay near one chunk's worth."""
    streamed, one_call = _growth("25"), _growth("one_call")
    assert one_call > 150, (streamed, one_call)  # MB: the one-call growth this test relies on
    assert streamed < one_call / 2, (streamed, one_call)  # measured ~100 vs ~480 MB
