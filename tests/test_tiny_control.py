"""The shipped control's README (ttt/assets/tiny-control/README.md) works as written: its commands,
run from a fresh folder on CPU, write held-out conversations and evaluate the shipped weights
(Mimi built on the way, as it is not shipped), and TTT lowers the text loss beyond the attention
context on the recurrent conversations, as the shipped table says."""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "ttt" / "assets" / "tiny-control" / "README.md"


def readme_commands() -> list[str]:
    blocks = re.findall(r"^```\n(.*?)^```", README.read_text(), re.S | re.M)
    return [line for block in blocks for line in block.splitlines() if line.startswith("python -m ")]


def test_the_readme_shows_the_control_commands():
    commands = readme_commands()
    assert [c.split()[3] for c in commands] == ["data", "evaluate"], commands
    assert "--checkpoint ttt/assets/tiny-control" in commands[1]


@pytest.mark.slow
def test_the_readme_commands_evaluate_the_shipped_control(tmp_path):
    (tmp_path / "ttt").symlink_to(ROOT / "ttt")  # the README's paths are relative to a checkout
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_TORCH_COMPILE": "1"}
    for command in readme_commands():
        argv = [sys.executable, *shlex.split(command)[1:]]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, (command, done.stderr[-2000:])
    result = json.loads((tmp_path / "results" / "control-test.json").read_text())
    shipped = json.loads((ROOT / "ttt" / "assets" / "tiny-control" / "config.json").read_text())
    assert result["context"] == shipped["context"] == 32
    assert result["ttt"]["lr"] == shipped["ttt_config"]["learning_rate"] and not result["on_equals_off"]
    assert result["frames"] == [300] * 4
    table = result["table"]
    assert table["text.beyond_context.recurrent"]["conversations"] == 2
    assert table["text.beyond_context.recurrent"]["gain"] > 0
