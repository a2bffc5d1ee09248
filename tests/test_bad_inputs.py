"""Issue 16 items 8-9: every bad input is one line naming the file or key, before heavy work."""
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from ttt.base.config import load_cell_config
from ttt.data.conversations import DataError, read_manifest

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


# ---- issue 25 item 18: the tracebacks of the fault review, each one line now ----------------

def _one_line(exc_info, *parts):
    message = str(exc_info.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message
    return message


def test_config_that_is_a_directory_is_one_line_exit_2(tmp_path):
    folder = tmp_path / "cell.yaml"
    folder.mkdir()
    done = subprocess.run([sys.executable, "-m", "ttt", "run-cell", "--config", str(folder), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_TORCH_COMPILE": "1"})
    assert done.returncode == 2
    assert done.stderr == f"error: {folder}: cannot read the cell config (Is a directory)\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fault, message", [
    ("device: mps", "device: must be cpu, cuda or cuda:N, got 'mps'"),
    (f"seed: {10 ** 30}", f"seed: must be an integer in [-2**63, 2**63), got {10 ** 30}"),
    (f"seed: {-2 ** 63 - 1}", "seed: must be an integer in [-2**63, 2**63)"),
])
def test_device_and_seed_out_of_range_name_the_key(tmp_path, fault, message):
    path = tmp_path / "cell.yaml"
    path.write_text(BASE + fault + "\n")
    with pytest.raises(ValueError) as info:
        load_cell_config(path)
    _one_line(info, f"{path}: {message}")


def test_training_seed_out_of_range_names_the_key():
    from ttt.training.train import TrainConfig
    with pytest.raises(ValueError) as info:
        TrainConfig.from_dict({"train": "x.jsonl", "seed": 10 ** 30})
    _one_line(info, "seed: must be an integer in [-2**63, 2**63)")


@pytest.mark.parametrize("times", [[-1e308, 0.5], [0.1, 1e308], [0.1, float("nan")]])
def test_alignment_times_out_of_range_are_named(tmp_path, times):
    wav = _conversation(tmp_path, seconds=2.0)
    wav.with_suffix(".json").write_text(__import__("json").dumps(
        {"alignments": [["ok", [0.1, 0.2], "SPEAKER_MAIN"], ["hi", times, "SPEAKER_MAIN"]]}))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "a.wav", "duration": 2.0}\n')
    with pytest.raises(DataError) as info:
        read_manifest(manifest)
    _one_line(info, f"{wav.with_suffix('.json')}: alignments[1] ('hi'): times ",
              "must be seconds in [0, 1e+07]")


def test_cache_dir_that_is_a_file_is_named(cache, tmp_path):
    from conftest import make_cell
    from ttt.eval.cell import run_cell
    blocker = tmp_path / "cache-file"
    blocker.write_text("")
    cfg = make_cell(cache, "c", [1.0], cache_dir=str(blocker))
    with pytest.raises(ValueError) as info:
        run_cell(cfg, tmp_path / "out", log=lambda m: None)
    _one_line(info, f"cache_dir {blocker}: is a file, not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache-file"]


def test_chunk_too_large_for_memory_is_refused_with_the_memory_it_needs(cache, tmp_path):
    from conftest import CELL_TTT, make_cell
    from ttt.eval.cell import run_cell
    cfg = make_cell(cache, "c", [1.0], ttt={**CELL_TTT, "chunk_size": 10 ** 9})
    with pytest.raises(ValueError) as info:
        run_cell(cfg, tmp_path / "out", log=lambda m: None)
    message = _one_line(info, "ttt.chunk_size 1000000000: needs at least ", " GB available")
    # Layers 1 and 3 of 4 are TTT layers, each with C rows of d + hidden float32 values; d and
    # hidden from the checkpoint's header (moshi's gating down projection is [d, hidden]).
    from safetensors import safe_open
    from ttt.moshi.model import resolve_model
    weights = resolve_model("tiny-random", cache / "models") / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        d, hidden = f.get_slice("transformer.layers.0.gating.linear_out.weight").get_shape()
    want = 2 * 10 ** 9 * (d + hidden) * 4
    assert f"{want / 1e9:,.0f} GB of memory on cpu" in message, (message, want)
    assert not list(tmp_path.iterdir())


def _limited_address_space(gigabytes):
    """preexec_fn: an address-space limit (``ulimit -v``), the memory a job is granted."""
    import resource
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (gigabytes << 30, resource.RLIM_INFINITY))
    return limit


def test_day_long_demo_is_refused_with_the_memory_it_needs(cache, tmp_path):
    path = tmp_path / "cell.yaml"
    path.write_text(BASE + f"data: {{demo: {{durations: [86400]}}}}\ncache_dir: {cache}\n")
    done = subprocess.run([sys.executable, "-m", "ttt", "run-cell", "--config", str(path), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_TORCH_COMPILE": "1"},
                          preexec_fn=_limited_address_space(16))
    assert done.returncode == 2, done.stderr[-2000:]
    # 86,400 s × 24 kHz × 2 channels × 4 bytes × 4 copies held while written and read back.
    assert done.stderr.startswith("error: data.demo.durations 86400 s: needs at least 66.4 GB of "
                                  "memory on cpu, "), done.stderr
    assert done.stderr.count("\n") == 1 and not (tmp_path / "out").exists()
    assert not list((cache / "demo").glob("*86400*"))


def test_snapshot_with_a_malformed_identity_is_refused(cache, tmp_path):
    from conftest import make_cell
    from ttt.eval.cell import run_cell
    from ttt.session.snapshot import FORMAT, save_snapshot
    out = tmp_path / "cells" / "c"
    replay = out.with_name(".c.replay")
    for identity in ([1, 2], "config"):
        replay.mkdir(parents=True, exist_ok=True)
        save_snapshot(replay / "item0.safetensors", {"format": FORMAT, "identity": identity,
                                                     "states": {}, "rng": {}, "extra": {}})
        cfg = make_cell(cache, "c", [1.0], mode="generate", snapshot_every=5)
        with pytest.raises(ValueError) as info:
            run_cell(cfg, out, log=lambda m: None)
        _one_line(info, f"{replay / 'item0.safetensors'}: snapshot with a malformed identity",
                  "--fresh")
        assert not out.exists()


@pytest.mark.parametrize("state, message", [
    ([1, 2, 3], "not a training state (a list, expected a mapping)"),
    ({"config": {}, "step": 4, "rng": {}, "log": [], "elapsed_s": 1.0},
     "training state key 'optimizer' missing"),
    ({"config": "lr: 1", "step": 4, "optimizer": {}, "rng": {}, "log": [], "elapsed_s": 1.0},
     "training state key 'config' missing or of the wrong type (str)"),
])
def test_malformed_train_state_is_named(tmp_path, state, message):
    import torch

    from ttt.training.train import TrainConfig, train
    from ttt.training.state import STATE_FILE
    (tmp_path / "run" / "checkpoint").mkdir(parents=True)
    torch.save(state, tmp_path / "run" / "checkpoint" / STATE_FILE)
    with pytest.raises(ValueError) as info:
        train(TrainConfig.from_dict({"train": "x.jsonl"}), tmp_path / "run", log=lambda m: None)
    _one_line(info, f"{tmp_path / 'run' / 'checkpoint' / STATE_FILE}: {message}")


@pytest.mark.parametrize("argv, message", [
    (["--offsets", "nan", "--clip", "1"], "offsets_s [nan]: need distinct finite offsets >= 0 (s)"),
    (["--offsets", "0", "--clip", "inf"], "clip_s inf: must be a finite number > 0 (s)"),
])
def test_panel_build_non_finite_times_are_one_line(tmp_path, capsys, argv, message):
    from ttt.cli.main import main
    wavs = []
    for n in range(2):
        wavs.append(tmp_path / f"s{n}.wav")
        sf.write(str(wavs[-1]), np.zeros(24000 * 3, np.float32), 24000)
    rc = main(["panel", "build", "--name", "p", "--system", f"a={wavs[0]}", "--system",
               f"b={wavs[1]}", *argv, "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"error: {message}\n"
    assert not (tmp_path / "p").exists()


def test_panel_collect_out_under_a_file_is_one_line(tmp_path, capsys):
    from ttt.cli.main import main
    blocker = tmp_path / "tables"
    blocker.write_text("")
    (tmp_path / "ratings").mkdir()
    (tmp_path / "ratings" / "r1.json").write_text("{}")
    rc = main(["panel", "collect", str(tmp_path / "ratings"), "--out", str(blocker / "mos.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and err == (f"error: {blocker / 'mos.csv'}: cannot be created, {blocker} is a "
                               "file, not a directory\n")


# ---- issue 25 item 18: a read-only or full disk under each writer --------------------------

@pytest.fixture
def disks(tmp_path):
    """``ro``: a read-only filesystem; ``full``: a 16 kB one. Real mounts (tmpfs): chmod does not
    stop root, and these tests run as root in CI. Skipped where mounting is not allowed."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a read-only and a tiny tmpfs (chmod does not model "
                    "a full disk)")
    mounted = {}
    try:
        for name, options in (("ro", "ro,size=1m"), ("full", "size=16k")):
            point = tmp_path / name
            point.mkdir()
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                                  capture_output=True, text=True)
            if done.returncode:
                pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
            mounted[name] = point
        yield mounted
    finally:
        for point in mounted.values():
            subprocess.run(["umount", "-l", str(point)], check=False)


def _ttt(*argv):
    return subprocess.run([sys.executable, "-m", "ttt", *map(str, argv)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "NO_TORCH_COMPILE": "1"})


def _nothing_half_written(root):
    """No temporary left, and every PNG present is whole (ends with its IEND chunk)."""
    files = [p for p in root.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.startswith(".")], files
    for png in (p for p in files if p.suffix == ".png"):
        assert png.read_bytes().endswith(b"IEND\xaeB`\x82"), png


def _refused(done, disk, reason):
    """Exit 2, the last line names a file on ``disk`` and the reason, no traceback."""
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.splitlines()[-1]
    assert last.startswith(f"error: {disk}") and last.endswith(reason), done.stderr[-3000:]
    _nothing_half_written(disk)


def test_report_commands_on_read_only_and_full_disks(disks, tmp_path):
    from results_factory import aggregate_tables, healthy_specs, write_results
    results = write_results(tmp_path / "results", healthy_specs())
    aggregate_tables(results)
    for disk, reason in ((disks["ro"], "Read-only file system"),
                         (disks["full"], "No space left on device")):
        _refused(_ttt("aggregate", "--cells", results / "cells", "--tables", disk / "tables",
                      "--plots", disk / "plots"), disk, reason)
        _refused(_ttt("verdicts", "--results", results, "--tables", disk / "verdicts"), disk, reason)
        _refused(_ttt("compare", results, results, "--out", disk / "compare"), disk, reason)


@pytest.mark.slow
def test_run_cell_on_read_only_and_full_disks(disks, cache, tmp_path):
    path = tmp_path / "cell.yaml"
    path.write_text(BASE.replace("generate", "teacher_forced") +
                    f"data: {{demo: {{durations: [2.0]}}}}\nwindow_s: 1.0\ncache_dir: {cache}\n")
    _refused(_ttt("run-cell", "--config", path, "--out", disks["ro"] / "cells" / "c"), disks["ro"],
             "Read-only file system)")
    _refused(_ttt("run-cell", "--config", path, "--out", disks["full"] / "c"), disks["full"],
             "No space left on device")
    assert not list(disks["full"].iterdir())  # no temporary folder, lock or snapshot left
    ro_cache = path.with_name("ro-cache.yaml")
    ro_cache.write_text(path.read_text().replace(str(cache), str(disks["ro"] / "cache")))
    done = _ttt("run-cell", "--config", ro_cache, "--out", tmp_path / "out")
    assert done.returncode == 2 and done.stderr == (
        f"error: cache_dir {disks['ro'] / 'cache'}: not a writable directory: Read-only file "
        "system\n"), done.stderr
    assert not (tmp_path / "out").exists()


def test_panel_on_read_only_and_full_disks(disks, tmp_path):
    wavs = []
    for n in range(2):
        wavs.append(tmp_path / f"s{n}.wav")
        sf.write(str(wavs[-1]), np.zeros(24000 * 3, np.float32), 24000)
    build = ["panel", "build", "--name", "p", "--system", f"a={wavs[0]}", "--system", f"b={wavs[1]}",
             "--offsets", "0", "--clip", "2"]
    _refused(_ttt(*build, "--out", disks["full"] / "p"), disks["full"], "No space left on device")
    assert _ttt(*build, "--rater", "r1", "--out", tmp_path / "p").returncode == 0
    from test_panel import key_of, ratings_doc, write
    (tmp_path / "p" / "ratings").mkdir()
    write(tmp_path / "p" / "ratings" / "r1.json", ratings_doc(key_of(tmp_path / "p"), "r1"))
    _refused(_ttt("panel", "collect", tmp_path / "p" / "ratings", "--key", tmp_path / "p" / "key.json",
                  "--out", disks["ro"] / "mos.csv"), disks["ro"], "Read-only file system")
