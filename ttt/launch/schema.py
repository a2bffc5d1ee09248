"""The workflow config against its JSON schema: values typed first, then one line per error.

Snakemake parses ``--config KEY=VALUE`` values with YAML's BaseLoader, so a nested override
(``--config 'ttt={lr: 0.0123}'``) arrives as strings, and ``null`` as the string 'null'.
:func:`coerce` gives each string the type the schema (or, for ``ttt`` sections, TTTConfig's
fields) wants at its key (numbers, booleans, null), as a config file would have. :func:`check`
then reports the first schema violation as one line naming the key path and what is allowed,
where jsonschema's own message is 9-40 lines (2,000 for an unknown top-level key: the whole
schema).
"""
from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

NULLS = ("null", "Null", "NULL", "~", "")
BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
INT = re.compile(r"[-+]?\d+")
_TYPE_NAMES = {"number": "a number", "integer": "an integer", "string": "a string",
               "boolean": "true or false", "object": "a mapping", "array": "a list", "null": "null"}


class SchemaError(ValueError):
    """A config value the schema refuses; one line naming the key path."""


def load_schema(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


# ---- coercion -----------------------------------------------------------------------------------

def coerce(config: dict, schema: Mapping) -> dict:
    """``config`` with every string typed as its key's schema wants (in place; returned)."""
    for key, value in list(config.items()):
        config[key] = _coerce(value, _property(schema, schema, key), schema, key)
    return config


def _resolve(node: Mapping | None, root: Mapping) -> Mapping:
    while isinstance(node, Mapping) and "$ref" in node:
        target: Any = root
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node or {}


def _branches(node: Mapping, root: Mapping) -> list[Mapping]:
    """The node and every schema that may apply to its value (anyOf/oneOf branches, if-then)."""
    node = _resolve(node, root)
    out = [node]
    for key in ("anyOf", "oneOf", "allOf"):
        for branch in node.get(key, []):
            out.extend(_branches(branch, root))
    if "then" in node:
        out.extend(_branches(node["then"], root))
    return out


def _types(node: Mapping, root: Mapping) -> set[str]:
    types: set[str] = set()
    for branch in _branches(node, root):
        kind = branch.get("type")
        types.update([kind] if isinstance(kind, str) else kind or [])
        for const in [*branch.get("enum", []), *([branch["const"]] if "const" in branch else [])]:
            types.add("string" if isinstance(const, str) else "number" if isinstance(const, (int, float)) else "")
    return types


def _property(node: Mapping, root: Mapping, key: str) -> Mapping | None:
    for branch in _branches(node, root):
        if key in branch.get("properties", {}):
            return branch["properties"][key]
    for branch in _branches(node, root):
        extra = branch.get("additionalProperties")
        if isinstance(extra, Mapping):
            return extra
    return None


def _items(node: Mapping, root: Mapping) -> Mapping | None:
    for branch in _branches(node, root):
        if isinstance(branch.get("items"), Mapping):
            return branch["items"]
    return None


def _coerce(value: Any, node: Mapping | None, root: Mapping, key: str) -> Any:
    if node is None:
        return value
    if isinstance(value, dict):
        if key == "ttt" and not any(b.get("properties") for b in _branches(node, root)):
            return {k: _coerce_typed(v, _ttt_types().get(k)) for k, v in value.items()}
        return {k: _coerce(v, _property(node, root, k), root, k) for k, v in value.items()}
    if isinstance(value, list):
        items = _items(node, root)
        return [_coerce(v, items, root, key) for v in value]
    if isinstance(value, str):
        return _typed_string(value, _types(node, root))
    return value


def _typed_string(value: str, types: set[str]) -> Any:
    """``value`` as the first of ``types`` it spells (YAML's spellings), else unchanged."""
    if "null" in types and value in NULLS:
        return None
    if "boolean" in types and value in BOOLS:
        return BOOLS[value]
    if "integer" in types and INT.fullmatch(value.strip()):
        return int(value)
    if "number" in types:
        number = _number(value)
        if number is not None and not ("string" in types and not _looks_numeric(value)):
            return number
    return value


def _number(value: str) -> int | float | None:
    """An int or float as YAML or Python spells it (``1e-4``, ``.inf``), else None; non-finite
    numbers are left to preflight.check_config's message."""
    if INT.fullmatch(value.strip()):
        return int(value)
    loaded = yaml.safe_load(value) if value.strip().lstrip("+-").startswith(".") else None
    if isinstance(loaded, float):  # YAML's .inf / .nan
        return loaded
    try:
        return float(value)
    except ValueError:
        return None


def _looks_numeric(value: str) -> bool:
    return bool(re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", value))


def _ttt_types() -> dict[str, set[str]]:
    """Schema types of every TTTConfig field, from its annotations (the ``ttt`` sections have no
    properties in the schema: TTTConfig validates them, with its own messages)."""
    from ttt.base.config import TTTConfig

    names = {int: "integer", float: "number", bool: "boolean", str: "string", type(None): "null",
             tuple: "array", list: "array"}
    out = {}
    for name, hint in typing.get_type_hints(TTTConfig).items():
        args = typing.get_args(hint) or (hint,)
        out[name] = {names.get(typing.get_origin(a) or a, "") for a in args}
        if "integer" in out[name]:
            out[name].add("number")  # an int field given 2.0 is TTTConfig's to refuse
    return out


def _coerce_typed(value: Any, types: set[str] | None) -> Any:
    if types is None:
        return value
    if isinstance(value, list):
        return [_typed_string(v, {"integer"}) if isinstance(v, str) else v for v in value]
    return _typed_string(value, types) if isinstance(value, str) else value


# ---- one-line errors ------------------------------------------------------------------------------

def check(config: Mapping, schema: Mapping) -> None:
    """Raises :class:`SchemaError` (one line) for the first key the schema refuses."""
    from jsonschema.validators import validator_for

    validator = validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        raise SchemaError(describe(min(errors, key=lambda e: len(e.absolute_path)), schema))


def key_path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe(error, root: Mapping) -> str:
    """``config KEY.PATH: what is wrong; what is allowed``."""
    where = key_path(error.absolute_path)
    prefix = f"config {where}" if where else "config"
    kind, node, value = error.validator, error.schema, error.instance
    if kind == "additionalProperties":
        allowed = sorted(node.get("properties", {}))
        unknown = sorted(set(value) - set(allowed)) if isinstance(value, Mapping) else []
        bad = unknown[0] if unknown else "?"
        near = difflib.get_close_matches(str(bad), allowed, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        key = f"{where}.{bad}" if where else str(bad)
        return f"config {key}: unknown key{hint}; allowed keys: {', '.join(allowed)}"
    if kind == "required":
        missing = [k for k in error.validator_value if k not in value]
        return f"{prefix}: missing key {missing[0]!r}; required: {', '.join(error.validator_value)}"
    if kind == "enum":
        return f"{prefix}: {value!r} is not one of {', '.join(map(str, error.validator_value))}"
    if kind == "const":
        return f"{prefix}: must be {error.validator_value!r}, got {value!r}"
    if kind == "type":
        kinds = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return f"{prefix}: must be {' or '.join(_TYPE_NAMES.get(k, k) for k in kinds)}, got {value!r}"
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if kind in bounds:
        return f"{prefix}: must be {bounds[kind]} {error.validator_value}, got {value!r}"
    if kind in ("minItems", "maxItems"):
        word = "at least" if kind == "minItems" else "at most"
        return f"{prefix}: must hold {word} {error.validator_value} item(s), got {value!r}"
    if kind == "pattern":
        return f"{prefix}: {value!r} does not match {error.validator_value}"
    if kind in ("anyOf", "oneOf"):
        allowed = []
        for branch in error.validator_value:
            branch = _resolve(branch, root)
            if "const" in branch:
                allowed.append(repr(branch["const"]))
            elif "enum" in branch:
                allowed.extend(map(repr, branch["enum"]))
            elif "type" in branch:
                kinds = branch["type"] if isinstance(branch["type"], list) else [branch["type"]]
                allowed.extend(_TYPE_NAMES.get(k, k) for k in kinds)
        return f"{prefix}: must be {' or '.join(dict.fromkeys(allowed))}, got {value!r}"
    return f"{prefix}: {error.message.splitlines()[0]}"
