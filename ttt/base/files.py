"""Reading config/data documents with one-line errors, and the one atomic writer.

Every reader names the file in its error (missing, or not parseable) and raises the caller's
error type, so each command keeps its exit-code contract. Every file the project writes goes
through ``atomic_write`` (temporary name in the same folder, fsync, rename), so a reader — the
next workflow rule, a rerun after a crash — sees the old file or the new one, never half of one.
The table writer ``write_csv`` lives here, not in ``ttt.report.tables``, because the cell (eval
layer, below report) writes its own tables with it.
"""
from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path
from typing import Any, Callable


def read_yaml(path: str | os.PathLike, what: str, error: type[Exception] = ValueError) -> Any:
    """The YAML document at ``path``; ``what`` names it in the "not found" error."""
    import yaml
    try:
        return yaml.load(Path(path).read_text(), Loader=_unique_key_loader())
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as exc:  # a directory, no permission, an I/O error
        raise error(f"{path}: cannot read the {what} ({exc.strerror or type(exc).__name__})") from None
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
    except OSError as exc:  # a directory, no permission, an I/O error
        raise error(f"{path}: cannot read the {what} ({exc.strerror or type(exc).__name__})") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not valid JSON (not UTF-8 text)") from None


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` writes the whole file at a temporary name beside ``path`` (same folder, so
    the rename cannot cross filesystems); it is flushed to disk, then renamed over ``path``. When
    ``write`` fails the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full or read-only disk: named by the file meant, not the temporary
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` as the whole content of ``path``, atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_audio(path: str | os.PathLike, samples, rate: int, subtype: str = "PCM_16") -> None:
    """A WAV file, atomically. Encoded in memory first: libsndfile reports a full disk as "System
    error." (no errno, no file name); Python's own write names both."""
    import io

    import soundfile as sf
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, subtype=subtype, format="WAV")
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> None:
    """A matplotlib figure as an image file (format from the suffix), atomically: a full disk
    leaves the old plot or none, never a truncated PNG."""
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".")))


def write_csv(path: str | os.PathLike, rows, columns: list[str] | None = None) -> None:
    """A table, atomically: ``rows`` is a list of dicts (columns: every key, first seen first) or
    a DataFrame; ``columns`` fixes the header (a header-only table needs it). A cell holding None
    (or a key a row lacks) is written empty; a float NaN is written ``nan``, so a blank always
    means "no value" and ``nan`` a value that is not a number. A table with no columns at all is
    written with the single column ``empty``, so it still reads as a CSV."""
    import pandas as pd

    if isinstance(rows, pd.DataFrame):
        frame = rows if columns is None else rows.reindex(columns=columns)
        columns, records = list(frame.columns), frame.astype(object).itertuples(index=False)
    else:
        columns = columns or list(dict.fromkeys(k for r in rows for k in r))
        records = ([r.get(k) for k in columns] for r in rows)
    # Cell by cell, as objects: pandas' own conversions would write an int column holding a
    # blank as floats ("3.0") and NaN as blank.
    text = pd.DataFrame([[_csv_cell(v) for v in record] for record in records],
                        columns=columns or ["empty"], dtype=object)
    atomic_write(path, lambda tmp: text.to_csv(tmp, index=False, lineterminator="\r\n"))


def _csv_cell(value):
    """None (or pandas' NA) → empty, a float NaN → ``nan``; pandas would write both empty."""
    if value is None or type(value).__name__ == "NAType":
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value
