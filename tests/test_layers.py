"""The package's layers stay honest (docs/architecture.md "Layout"): no module imports from a layer
above its own and no import cycle exists (imports inside functions included in both), no module is
over 400 lines, the TTT math never imports moshi, and the reporting, launch and CLI entry points
import neither torch nor moshi (a login node runs them)."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ttt"

# Lowest first; each layer is a folder of ttt/ (the package root holds only the
# lazy public API and __main__). A module may import only from its own layer or those before it.
LAYERS = ["base", "core", "moshi", "session", "data", "asr", "training", "eval", "control", "report",
          "panel", "launch", "cli"]
ROOT_MODULES = {"__init__": "cli", "__main__": "cli"}


def layer_of(dotted: str) -> str | None:
    """``ttt.eval.cell`` → ``eval``; ``ttt`` → ``cli``."""
    parts = dotted.split(".")[1:] or ["__init__"]
    return parts[0] if parts[0] in LAYERS else ROOT_MODULES.get(parts[0])


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        out[".".join(rel.parts[:-1] if rel.name == "__init__" and len(rel.parts) > 2 else rel.parts)] = path
    return out


def package_imports(path: Path) -> list[tuple[str, int]]:
    """(imported ttt module, line) for every import of a ttt module in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: use absolute imports (ttt.<layer>.<module>)"
            if node.module == "ttt":
                out += [(f"ttt.{a.name}", node.lineno) for a in node.names]
            elif node.module and node.module.startswith("ttt."):
                out.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("ttt.")]
    return out


def external_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_every_module_sits_in_a_layer_folder():
    homeless = [name for name in modules() if layer_of(name) is None]
    assert homeless == [], "put each module in a layer folder (LAYERS) or ROOT_MODULES"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(LAYERS)


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for name, path in sorted(modules().items()):
        mine = LAYERS.index(layer_of(name))
        for dep, line in package_imports(path):
            theirs = layer_of(dep)
            if theirs is not None and LAYERS.index(theirs) > mine:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({LAYERS[mine]}) imports {dep}")
    assert upward == []


def import_graph() -> dict[str, set[str]]:
    """ttt module -> the ttt modules it imports (``from ttt.data import demo`` names the module
    ``ttt.data.demo``, not only the package)."""
    names = modules()
    graph = {}
    for name, path in names.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ttt"):
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[name] = {d for d in deps if d in names and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] (depth-first search, grey = on the stack)."""
    state, stack = {}, []

    def visit(node: str) -> list[str]:
        state[node] = "grey"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "grey":
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = "black"
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_find_cycle_reports_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle == [], "import cycle: " + " -> ".join(cycle)


def test_no_module_over_400_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > 400}
    assert long == {}, "split these by responsibility"


def test_the_math_and_config_never_import_moshi():
    below_moshi = [n for n in modules() if LAYERS.index(layer_of(n)) < LAYERS.index("moshi")]
    assert "ttt.core.inplace_math" in below_moshi and "ttt.base.config" in below_moshi
    for name in below_moshi:
        assert "moshi" not in external_imports(modules()[name]), name
    assert "torch" not in external_imports(PACKAGE / "base" / "config.py")


LIGHT = ["ttt.report.aggregate", "ttt.report.verdicts", "ttt.session.telemetry_records", "ttt.report.compare",
         "ttt.panel.ratings", "ttt.panel.page", "ttt.panel.server", "ttt.launch.launcher", "ttt.cli.main",
         "ttt.base.config", "ttt.asr.scoring"]


@pytest.mark.parametrize("entry", LIGHT + ["--help", "--version"])
def test_reporting_launch_and_cli_import_neither_torch_nor_moshi(entry):
    if entry.startswith("--"):
        code = (f"import sys\nfrom ttt.cli.main import main\ntry:\n    main([{entry!r}])\n"
                "except SystemExit:\n    pass\n")
    else:
        code = f"import {entry}\n"
    code += "import sys\nprint(sorted(m for m in ('torch', 'moshi') if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout
    assert out.strip().splitlines()[-1] == "[]", (entry, out[-300:])
