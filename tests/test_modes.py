"""The cell modes' registry and run context (ttt/eval/modes.py): every mode the schema allows has a
runner, a name without one fails in one line before anything loads, the traits a mode registers
decide what the cell does before running it, and the context a mode receives cannot be changed."""
import dataclasses
import json
from pathlib import Path

import pytest
import soundfile as sf
import yaml

from conftest import make_cell
from ttt.base.config import MODES
from ttt.eval import cell, modes
from ttt.data.conversations import DataError
from ttt.eval.phases import Phases

REPO = Path(__file__).resolve().parent.parent


def test_every_mode_the_schema_allows_has_a_runner_and_no_other():
    assert sorted(modes.registered()) == sorted(MODES)
    # The workflow schema's families offer only modes a cell can run.
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    offered = {m for family in schema["properties"].values() if isinstance(family, dict)
               for m in family.get("properties", {}).get("mode", {}).get("enum", [])}
    assert offered and offered <= set(modes.registered())


def test_a_name_without_a_runner_is_one_line_naming_it():
    with pytest.raises(modes.ModeError) as err:
        modes.lookup("karaoke")
    message = str(err.value)
    assert "'karaoke'" in message and "\n" not in message
    assert "teacher_forced" in message  # the registered ones, to choose from


def test_an_unregistered_mode_fails_the_cell_before_anything_loads(cache, tmp_path, monkeypatch):
    """The schema allows 'generate'; with its registration gone the cell stops at the lookup: a
    ValueError (run-cell's one-line exit 2), no model loaded, no cell directory left."""
    monkeypatch.delitem(modes._MODES, "generate")
    loads = []
    monkeypatch.setattr(cell, "load_checkpoint", lambda *a, **k: loads.append(a))
    with pytest.raises(ValueError, match="mode 'generate' has no registered runner"):
        cell.run_cell(make_cell(cache, "unreg", [2.0], mode="generate"), tmp_path / "c",
                      log=lambda m: None)
    assert loads == [] and not (tmp_path / "c").exists()


def test_a_second_registration_of_a_name_is_refused():
    with pytest.raises(ValueError, match="'generate' is already registered"):
        modes.mode("generate")(lambda run: {})
    assert modes.lookup("generate").run.__name__ == "run_streamed"


def test_registered_traits_decide_the_inputs(cache, tmp_path):
    """conversations_only: a mono recording with text is refused by name before loading (playback,
    teacher_forced), taken by the streamed modes; demo: playback without a manifest reads the
    shipped recording, generate writes a demo conversation."""
    sf.write(str(tmp_path / "u.wav"), [0.0] * 24000, 24000)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": "u.wav", "duration": 1.0, "text": "hello"}) + "\n")
    data = {"manifest": str(manifest)}
    for name in ("playback", "teacher_forced"):
        with pytest.raises(DataError, match=f"m.jsonl: {name} needs stereo conversations"):
            cell.cell_items(make_cell(cache, "m", [1.0], mode=name, data=data), cache)
    assert len(cell.cell_items(make_cell(cache, "m", [1.0], mode="transcribe", data=data), cache)) == 1
    [shipped] = cell.cell_items(make_cell(cache, "p", [1.0], mode="playback"), cache)
    assert "assets/playback" in str(shipped.path)
    [demo] = cell.cell_items(make_cell(cache, "g", [1.0], mode="generate"), cache)
    assert str(cache / "demo") in str(demo.path)


def test_the_run_context_is_frozen(tmp_path):
    cfg = make_cell(tmp_path, "ctx", [1.0])
    run = modes.CellRun(cfg, None, [], tmp_path, tmp_path / "tmp", tmp_path / "out", print,
                        Phases("cpu"))
    assert run.items == ()  # a list given is kept as a tuple: the inputs cannot grow either
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.tmp = tmp_path / "elsewhere"


def test_a_mode_that_never_steps_the_model_loads_it_without_ttt(cache, tmp_path):
    """playback registers runs_model=False: its cell asks for TTT, yet no TTT layer is built
    (none could claim fast weights that never ran) and metrics.json says ttt: false."""
    cfg = make_cell(cache, "pb", [1.0], mode="playback")
    assert cfg.ttt.get("enabled", True)
    metrics = cell.run_cell(cfg, tmp_path / "pb", log=lambda m: None)
    assert metrics["ttt"] is False and metrics["plumbing"] is None
