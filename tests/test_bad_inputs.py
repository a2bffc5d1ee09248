"""Issue 16 items 8-9: every bad input is one line naming the file or key, before heavy work."""
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from ttt.config import load_cell_config
from ttt.eval.data import DataError, read_manifest

BASE = "cell: c\nmode: generate\n"
CONFIG_FAULTS = {  # YAML appended to BASE → the key the error must name
    "window_s: .inf": "window_s: must be a finite number > 0, got inf",
    "window_s: .nan": "window_s: must be a finite number > 0, got nan",
    "block: true": "block: must be an integer >= 1, got True",
    "snapshot_every: true": "snapshot_every: must be an integer >= 0",
    "seed: 1.5": "seed: must be an integer",
    "temperature: .inf": "temperature: must be a finite number > 0, got inf",
    "temperature_text: .nan": "temperature_text: must be a finite number > 0",
    "temperature: hot": "temperature: must be a finite number > 0, got 'hot'",
    "clip_saturation: x": "clip_saturation: must be null (off) or in (0, 1]",
    "ab: 1": "ab: must be true or false",
    "data: {demo: null}": "data.demo: must be a mapping",
    "data: {demo: {durations: [4], sed: 1}}": "data.demo: unknown key(s) ['sed']",
    "data: {demo: {durations: [.inf]}}": "data.demo.durations: must be a list of finite numbers",
    "data: {demo: {durations: [1e12]}}": "data.demo.durations: must be a list of finite numbers",
    "data: {demo: {durations: 4}}": "data.demo.durations: must be a list",
    "data: {demo: {durations: [-1]}}": "data.demo.durations: must be a list",
    "data: {demo: {durations: [4], seed: -1}}": "data.demo.seed: must be an integer >= 0",
    "data: {manifest: 3}": "data.manifest: must be a path",
    "ttt: [1]": "ttt: must be a mapping of settings or null",
    "ttt: {init_std: .inf}": "init_std: must be a finite number >= 0, got inf",
    "ttt: {delta_clip_fro_norm: .inf}": "delta_clip_fro_norm: must be a finite number or null",
    "ttt: {lr: .nan}": "lr: must be",
    "yarn: {scale: 2, beta_fast: .inf}": "beta_slow: must be a number > 0",
    "seed: 1\nseed: 2": "not valid YAML (duplicate key 'seed' on line 4, first on line 3)",
    "ttt: {lr: 0.1, lr: 1.0}": "not valid YAML (duplicate key 'lr' on line 3, first on line 3)",
}


@pytest.mark.parametrize("fault", CONFIG_FAULTS)
def test_bad_cell_config_names_the_key(tmp_path, fault):
    path = tmp_path / "cell.yaml"
    path.write_text(BASE + fault + "\n")
    with pytest.raises(ValueError) as info:
        load_cell_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert CONFIG_FAULTS[fault] in message, message


def test_non_utf8_config_is_named(tmp_path):
    path = tmp_path / "cell.yaml"
    path.write_bytes(b"cell: \xff\xfe\n")
    with pytest.raises(ValueError, match=rf"^{path}: not valid YAML \(not UTF-8 text\)$"):
        load_cell_config(path)


def test_cli_bad_config_is_one_line_exit_2(tmp_path):
    path = tmp_path / "cell.yaml"
    path.write_text(BASE + "temperature: 0.8\ntemperature: 5\n")
    done = subprocess.run([sys.executable, "-m", "ttt", "run-cell", "--config", str(path), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_TORCH_COMPILE": "1"})
    assert done.returncode == 2
    assert done.stderr.strip() == (f"error: {path}: not valid YAML (duplicate key 'temperature' "
                                   "on line 4, first on line 3)")
    assert not (tmp_path / "out").exists()


def _conversation(tmp_path, seconds=1.5, name="a.wav"):
    wav = tmp_path / name
    sf.write(str(wav), np.zeros((int(seconds * 24000), 2), np.float32), 24000)
    wav.with_suffix(".json").write_text('{"alignments": [["hi", [0.1, 0.4], "SPEAKER_MAIN"]]}')
    return wav


@pytest.mark.parametrize("duration, message", [
    (4, "'duration' 4 s, but {wav} holds only 1.500 s of audio"),
    (-1, "'duration' must be a finite number of seconds > 0, got -1"),
    ('"NaN"', "'duration' must be a finite number of seconds > 0, got 'NaN'"),
    ('"abc"', "'duration' must be a finite number of seconds > 0, got 'abc'"),
    ("true", "'duration' must be a finite number of seconds > 0, got True"),
])
def test_manifest_durations_are_checked_against_the_audio(tmp_path, duration, message):
    wav = _conversation(tmp_path)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(f'{{"path": "a.wav", "duration": {duration}}}\n')
    with pytest.raises(DataError) as info:
        read_manifest(manifest)
    assert str(info.value) == f"{manifest}:1: " + message.format(wav=wav)


def test_manifest_much_shorter_than_audio_warns_and_non_utf8_is_named(tmp_path, caplog):
    _conversation(tmp_path, seconds=4.0)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "a.wav", "duration": 1.0}\n')
    with caplog.at_level(logging.WARNING):
        items = read_manifest(manifest)
    assert items[0].duration == 1.0
    assert "'duration' 1 s, but" in caplog.text and "holds 4.000 s of audio" in caplog.text
    manifest.write_bytes(b'{"path": "a.wav", "duration": 1.0}\xff\n')
    with pytest.raises(DataError, match=rf"^{manifest}: not UTF-8 text"):
        read_manifest(manifest)


@pytest.mark.parametrize("name, damage", [
    ("model.safetensors", "garbage"), ("model.safetensors", "truncate"),
    ("mimi.safetensors", "garbage"), ("mimi.safetensors", "truncate"),
    ("config.json", "list"),
])
def test_damaged_checkpoint_files_are_named(cache, tmp_path, name, damage):
    from ttt.moshi.model import CheckpointError, load_checkpoint, resolve_model

    source = resolve_model("tiny", cache / "models")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in source.iterdir():
        if not f.name.startswith("."):
            (ckpt / f.name).symlink_to(f)
    (ckpt / name).unlink()
    data = (source / name).read_bytes()
    (ckpt / name).write_bytes({"garbage": b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage",
                               "truncate": data[:len(data) // 2], "list": b"[1, 2]"}[damage])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ckpt)
    assert str(info.value).startswith(f"{ckpt / name}: ") and "\n" not in str(info.value)
    shutil.rmtree(ckpt)
