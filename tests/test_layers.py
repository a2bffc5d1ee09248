"""The package's layers stay honest (README "Layout"): no module imports from a layer above its own
(imports inside functions included), the TTT math never imports moshi, and the reporting, launch
and CLI entry points import neither torch nor moshi (a login node runs them)."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ttt"

# Lowest first; a module may import only from its own layer or the ones before it.
LAYERS = [
    ("base", "config files identity outdir"),
    ("core", "inplace_math"),
    ("moshi", "gating ttt_mlp surgery yarn tiny checkpoints model"),
    ("session", "streaming snapshot telemetry diagnostics"),
    ("eval", "data metrics generate cell prepare train speech control asr"),
    ("report", "aggregate verdicts compare"),
    ("panel", "panel ratings"),
    ("launch", "launcher preflight asr_job"),
    ("cli", "cli __main__ __init__"),
]
LAYER_OF = {m: i for i, (_, names) in enumerate(LAYERS) for m in names.split()}


def package_imports(path: Path) -> list[tuple[str, int]]:
    """(imported ttt module, line) for every import of a sibling module in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level >= 1:
                names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            elif node.module and node.module.startswith("ttt."):
                names = [node.module.split(".")[1]]
            else:
                names = []
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("ttt.")]
        else:
            continue
        out += [(n, node.lineno) for n in names]
    return out


def external_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_every_module_has_a_layer():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules - set(LAYER_OF) == set(), "give each new module a layer in LAYERS"
    assert set(LAYER_OF) - modules == set(), "LAYERS names modules that no longer exist"


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for path in sorted(PACKAGE.glob("*.py")):
        me = path.stem
        for dep, line in package_imports(path):
            if dep in LAYER_OF and LAYER_OF[dep] > LAYER_OF[me]:
                upward.append(f"ttt/{path.name}:{line} ({LAYERS[LAYER_OF[me]][0]}) imports "
                              f"{dep} ({LAYERS[LAYER_OF[dep]][0]})")
    assert upward == []


def test_the_math_and_config_never_import_moshi():
    below_moshi = [m for m, i in LAYER_OF.items() if i < LAYER_OF["gating"]]
    for module in below_moshi:
        assert "moshi" not in external_imports(PACKAGE / f"{module}.py"), module
    assert "torch" not in external_imports(PACKAGE / "config.py")


LIGHT = ["ttt.aggregate", "ttt.verdicts", "ttt.compare", "ttt.ratings", "ttt.panel",
         "ttt.launcher", "ttt.cli", "ttt.config"]


@pytest.mark.parametrize("entry", LIGHT + ["--help"])
def test_reporting_launch_and_cli_import_neither_torch_nor_moshi(entry):
    if entry == "--help":
        code = ("import sys\nfrom ttt.cli import main\ntry:\n    main(['--help'])\n"
                "except SystemExit:\n    pass\n")
    else:
        code = f"import {entry}\n"
    code += "import sys\nprint(sorted(m for m in ('torch', 'moshi') if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout
    assert out.strip().splitlines()[-1] == "[]", (entry, out[-300:])
