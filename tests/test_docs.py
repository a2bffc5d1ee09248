"""The documentation cannot drift from the code (issue 26): every relative link in README.md and
docs/ resolves (anchors included), every ``python -m ttt`` / ``make`` / ``snakemake`` command shown
exists with the flags it shows, the configuration reference names every key of the schema and of
the config dataclasses with their real defaults, and each command's ``--help`` is plain text with
an example that parses."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ttt.cli.main import build_parser
from ttt.base.config import CellConfig, TTTConfig, YarnConfig

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
REFERENCE = REPO / "docs" / "config-reference.md"


def doc_files() -> list[Path]:
    return [REPO / "README.md", REPO / "config" / "README.md", *sorted((REPO / "docs").glob("*.md")),
            *sorted((REPO / "ttt" / "assets").glob("*/README.md"))]


# ---- links -------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*]|\[|\]\([^)]*\)", "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def broken_links(path: Path) -> list[str]:
    bad = []
    for target in links(path):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{path.name}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{path.name}: {target} (no such heading)")
    return bad


def test_every_relative_link_and_anchor_exists():
    found = [t for p in doc_files() for t in links(p)]
    assert len(found) > 20  # the parser finds the links it checks
    bad = [b for p in doc_files() for b in broken_links(p)]
    assert not bad, bad


def test_a_broken_link_or_anchor_is_reported(tmp_path):
    (tmp_path / "b.md").write_text("# B\n\n## Real heading\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#real-heading) [file](nope.md) [anchor](b.md#nope) [web](https://x)\n")
    assert broken_links(page) == ["a.md: nope.md (no such file)", "a.md: b.md#nope (no such heading)"]


# ---- commands ----------------------------------------------------------------------------------

def shown_commands(path: Path) -> list[str]:
    """Every command a page shows: lines of fenced blocks and inline code spans that start with
    ``python -m ttt``, ``make`` or ``snakemake`` (comments and trailing prose cut)."""
    text = path.read_text()
    snippets = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        snippets += block.splitlines()
    snippets += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    out = []
    for s in snippets:
        s = s.split(" #")[0].strip().removeprefix("$ ")
        for part in re.split(r"\s*(?:&&|;|\|)\s*", s):
            if re.match(r"(python -m ttt\b|make\b|snakemake\b)", part):
                out.append(part)
    return out


def placeholder(token: str) -> bool:
    return any(c in token for c in "<>{}…") or "..." in token or token.isupper()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def ttt_problem(command: str) -> str | None:
    """None when ``python -m ttt[.module] ...`` names a real command (or module) and flags."""
    tokens = [t for t in shlex.split(command.replace("[", " ").replace("]", " ")) if t != "\\"]
    module = tokens[2]
    if module != "ttt":  # python -m ttt.control ...: the module must exist
        return None if importlib.util.find_spec(module) else f"no module {module}"
    parser, rest = build_parser(), tokens[3:]
    while rest and not rest[0].startswith("-") and _subparsers(parser):
        if placeholder(rest[0]):
            return None
        subs = _subparsers(parser)
        if rest[0] not in subs:
            return f"no command {rest[0]!r}"
        parser, rest = subs[rest[0]], rest[1:]
    known = {o for a in parser._actions for o in a.option_strings}
    unknown = [t.split("=")[0] for t in rest if t.startswith("-") and t.split("=")[0] not in known]
    return f"unknown flags {unknown}" if unknown else None


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))


def make_problem(command: str) -> str | None:
    targets = [t for t in shlex.split(command)[1:] if "=" not in t and not t.startswith("-")]
    missing = [t for t in targets if t not in make_targets()]
    return f"no Makefile target {missing}" if missing else None


@functools.lru_cache(maxsize=1)
def snakemake_flags() -> set[str]:
    bin_ = Path(sys.executable).parent / "snakemake"
    out = subprocess.run([str(bin_), "--help"], capture_output=True, text=True, timeout=120).stdout
    return set(re.findall(r"(--?[A-Za-z][\w-]*)", out))


def workflow_rules() -> set[str]:
    files = [REPO / "workflow" / "Snakefile", *(REPO / "workflow" / "rules").glob("*.smk")]
    return {r for f in files for r in re.findall(r"^rule (\w+):", f.read_text(), re.M)}


def snakemake_problem(command: str) -> str | None:
    tokens = shlex.split(command.replace("[", " ").replace("]", " "))[1:]
    schema_keys = set(yaml.safe_load(SCHEMA.read_text())["properties"])
    problems = []
    for i, t in enumerate(tokens):
        prev = tokens[i - 1] if i else ""
        if t.startswith("-"):
            if t.split("=")[0] not in snakemake_flags():
                problems.append(f"unknown flag {t}")
        elif prev == "--profile":
            if not (REPO / t).is_dir() and not (REPO / "profiles" / t).is_dir():
                problems.append(f"no profile {t}")
        elif prev == "--config":
            if t.split("=")[0] not in schema_keys and not placeholder(t):
                problems.append(f"no config key {t}")
        elif prev in ("--forcerun", "--until") or not ("/" in t or "." in t or placeholder(t)):
            if t not in workflow_rules():
                problems.append(f"no rule {t}")
    return "; ".join(problems) or None


def command_problem(command: str) -> str | None:
    if command.startswith("python -m"):
        return ttt_problem(command)
    if command.startswith("make"):
        return make_problem(command)
    return snakemake_problem(command)


def test_every_command_shown_exists():
    shown = {(p.name, c) for p in doc_files() for c in shown_commands(p)}
    kinds = {c.split()[0] for _, c in shown}
    assert {"python", "make", "snakemake"} <= kinds and len(shown) > 30
    bad = [f"{page}: {c}: {problem}" for page, c in sorted(shown) if (problem := command_problem(c))]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("command, problem", [
    ("python -m ttt run-cell --config x.yaml --out y", None),
    ("python -m ttt run-cel --config x.yaml", "no command 'run-cel'"),
    ("python -m ttt verdicts --stric", "unknown flags ['--stric']"),
    ("python -m ttt panel serve DIR [--port 8000]", None),
    ("python -m ttt panel serv DIR", "no command 'serv'"),
    ("python -m ttt.control evaluate", None),
    ("python -m ttt.eval.contro evaluate", "no module ttt.eval.contro"),
    ("make run", None),
    ("make runn", "no Makefile target ['runn']"),
    ("make setup TORCH=torch==2.13.0", None),
    ("snakemake --profile slurm -n", None),
    ("snakemake --profile nowhere", "no profile nowhere"),
    ("snakemake --config strict=true", None),
    ("snakemake --config stric=true", "no config key stric=true"),
    ("snakemake speech_all", None),
    ("snakemake speech_al", "no rule speech_al"),
    ("snakemake --forcerun run_cell results/cells/x/status.json", None),
    ("snakemake --frobnicate", "unknown flag --frobnicate"),
])
def test_the_command_check_tells_real_from_unreal(command, problem):
    assert command_problem(command) == problem


# ---- the README's promises -----------------------------------------------------------------------

def test_readme_is_short_and_has_exactly_the_two_setup_commands_ci_runs():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    quick = readme.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", quick, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make run", "make test"]
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert ci[-1] == commands[1], "CI must run the README's test command"


def test_every_docs_page_opens_with_a_one_paragraph_summary():
    for page in sorted((REPO / "docs").glob("*.md")):
        blocks = page.read_text().split("\n\n")
        assert blocks[0].startswith("# ") and "\n" not in blocks[0].strip(), page.name
        summary = blocks[1].strip()
        assert summary and not re.match(r"[#|\-*>0-9]|```", summary), f"{page.name}: no summary"


# ---- the configuration reference ---------------------------------------------------------------

def reference_tables() -> dict[str, dict[str, list[str]]]:
    """Section title → {key: [type, default, meaning]} of docs/config-reference.md's tables."""
    tables: dict[str, dict[str, list[str]]] = {}
    section = ""
    for line in REFERENCE.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("| `"):
            cells = [c.strip().replace("\\|", "|") for c in line.strip().strip("|").split(" | ")]
            assert len(cells) == 4, line
            tables.setdefault(section, {})[cells[0].strip("`")] = cells[1:]
    return tables


def schema_keys(node: dict, prefix: str, defs: dict) -> dict[str, dict]:
    """Every key under ``node`` by dotted path (``speech.NAME.count``), with $refs resolved."""
    out = {}
    props = dict(node.get("properties") or {})
    props.update((node.get("then") or {}).get("properties") or {})
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and extra.get("properties"):
        out.update(schema_keys(extra, f"{prefix}NAME.", defs))
    for key, sub in props.items():
        if "$ref" in sub:
            sub = {**defs[sub["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in sub.items() if k != "$ref"}}
        out[prefix + key] = sub
        out.update(schema_keys(sub, f"{prefix}{key}.", defs))
    return out


def schema_type(node: dict) -> str:
    if "anyOf" in node:
        return " or ".join(dict.fromkeys(schema_type(n) for n in node["anyOf"]))
    if "const" in node:
        return repr(node["const"])
    kinds = node.get("type", "any")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    words = []
    for k in kinds:
        if k == "array" and "items" in node:
            words.append(f"array of {schema_type(node['items'])}")
        else:
            words.append(k)
    return " or ".join(words)


def literal(text: str):
    """A documented default: `value` (YAML), or a word: required / none."""
    text = text.strip()
    if text in ("required", "—"):
        return text
    assert text.startswith("`") and text.endswith("`"), f"default {text!r} is not `code`"
    return yaml.safe_load(text[1:-1])


def field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "required"


def test_reference_documents_every_schema_key_with_its_type_and_default():
    schema = yaml.safe_load(SCHEMA.read_text())
    keys = schema_keys(schema, "", schema["definitions"])
    documented = reference_tables()["Matrix config (`config/config.yaml`)"]
    assert set(keys) - set(documented) == set(), "schema keys without docs"
    assert set(documented) - set(keys) == set(), "documented keys not in the schema"
    for key, node in keys.items():
        type_, default, meaning = documented[key]
        assert type_ == f"`{schema_type(node)}`", key
        assert literal(default) == node.get("default", "—"), key
        assert meaning, key


@pytest.mark.parametrize("section, cls", [("Cell config (`CellConfig`)", CellConfig),
                                          ("TTT settings (`TTTConfig`)", TTTConfig),
                                          ("YaRN settings (`YarnConfig`)", YarnConfig)])
def test_reference_documents_every_dataclass_field_with_its_default(section, cls):
    documented = reference_tables()[section]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(fields) - set(documented) == set(), f"{cls.__name__} fields without docs"
    assert set(documented) - set(fields) == set(), f"documented keys not in {cls.__name__}"
    for name, f in fields.items():
        type_, default, meaning = documented[name]
        assert type_ == f"`{f.type}`", name
        assert literal(default) == field_default(f), name
        assert meaning, name


# ---- --help --------------------------------------------------------------------------------------

def every_parser(parser=None, path=()):
    parser = parser or build_parser()
    yield path, parser
    for name, sub in _subparsers(parser).items():
        yield from every_parser(sub, (*path, name))


def test_every_help_is_plain_text_with_an_example_that_parses():
    checked = 0
    for path, parser in every_parser():
        text = parser.format_help()
        assert "``" not in text and ":func:" not in text, f"{path}: RST markup in --help"
        examples = re.findall(r"^ +(python -m ttt .+)$", text, re.M)
        assert examples, f"python -m ttt {' '.join(path)} --help shows no example"
        for example in examples:
            assert ttt_problem(example) is None, example
            if path and not _subparsers(parser):
                build_parser().parse_args(shlex.split(example)[3:])  # parses, required args too
        checked += 1
    assert checked > 12


def test_training_page_documents_every_training_key_with_its_default():
    from ttt.training.train import TrainConfig
    page = (REPO / "docs" / "training.md").read_text()
    documented = {}
    for line in page.splitlines():
        if line.startswith("| `"):
            keys_cell, default_cell = (c.strip() for c in line.strip("|").split(" | ")[:2])
            keys = re.findall(r"`([^`]+)`", keys_cell)
            defaults = ["required"] if default_cell == "required" else [
                f"`{d}`" for d in re.findall(r"`([^`]+)`", default_cell)]
            assert len(keys) == len(defaults), line
            documented.update(zip(keys, defaults))
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(fields) - set(documented) == set(), "training keys without docs"
    assert set(documented) - set(fields) == set(), "documented keys not in TrainConfig"
    for name, f in fields.items():
        assert literal(documented[name]) == field_default(f), name
