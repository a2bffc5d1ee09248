"""Reading config/data documents with one-line errors, and writing tables atomically.

Every reader names the file in its error (missing, or not parseable) and raises the caller's
error type, so each command keeps its exit-code contract; writers never leave half a file.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any


def read_yaml(path: str | os.PathLike, what: str, error: type[Exception] = ValueError) -> Any:
    """The YAML document at ``path``; ``what`` names it in the "not found" error."""
    import yaml
    try:
        return yaml.load(Path(path).read_text(), Loader=_unique_key_loader())
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not valid YAML (not UTF-8 text)") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def _unique_key_loader():
    """yaml's SafeLoader, except that a key given twice in one mapping is an error (plain YAML
    keeps the last one silently: ``lr: 0.01`` then ``lr: 1.0`` would run with 1.0)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeLoader reports it
                continue
            first = seen.setdefault(key, key_node.start_mark.line + 1)
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} on line {key_node.start_mark.line + 1}, "
                    f"first on line {first}", key_node.start_mark)
        return loader.construct_mapping(node, deep=deep)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return UniqueKeyLoader


def read_json(path: str | os.PathLike, what: str, error: type[Exception] = ValueError) -> Any:
    """The JSON document at ``path``; ``what`` names it in the "not found" error."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not valid JSON (not UTF-8 text)") from None


def write_csv(path: Path, rows: list[dict]) -> None:
    """All rows' keys as columns (first-seen order), written atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r)) or ["empty"]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
