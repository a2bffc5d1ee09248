"""The command line's shape (docs/architecture.md "Layout", ``ttt/cli/``): every command registered, the ``ttt``
console script and ``--version`` (torch and moshi stay unimported: tests/test_layers.py)."""
import subprocess
import sys
from pathlib import Path

import pytest

import ttt
from ttt.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ["run-cell", "train", "submit", "prepare", "aggregate", "verdicts", "calibration",
            "compare", "asr", "selfcheck", "panel", "speech", "cost"]


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"ttt {ttt.__version__}\n"


def test_console_script_and_version_come_from_the_package():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"] == {"ttt": "ttt.cli.main:main"}
    # one version: the wheel's metadata reads ttt.__version__, the string --version prints
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ttt.__version__"}


def test_every_command_is_registered_in_order(capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == COMMANDS
    for name in COMMANDS:  # each command's own --help works, before any heavy import
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: python -m ttt {name}")


def test_the_console_script_names_itself_ttt():
    out = subprocess.run([sys.executable, "-c", "import sys; sys.argv[0] = '/usr/bin/ttt'; "
                          "from ttt.cli.main import main; main(['--help'])"],
                         capture_output=True, text=True, cwd=ROOT).stdout
    assert out.startswith("usage: ttt [-h] [--version]")

