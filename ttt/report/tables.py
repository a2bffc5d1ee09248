"""Results I/O for every report (docs/user-guide.md): the one number parser, the one table reader,
the table writer and the one cell-path format, so aggregate, verdicts and compare agree on what a
field means.

- ``number``: a table or JSON field as a float, None when it holds no number. Blank, None,
  booleans and the words ``True``/``False`` are not numbers (a flag column is never averaged or
  diffed as 1/0); ``nan`` and ``±inf`` are kept, because a diverged run's perplexity *is* inf and
  must not read as "not measured".
- ``read_table``: a CSV as a DataFrame of the strings written (blank cells are ``""``), so nothing
  is re-formatted between reading and writing and ``number`` alone decides what a field means. A
  missing or unreadable file, or a row with more fields than the header, is a one-line error
  naming the file.
- ``write_csv`` (from ``ttt.base.files``, where the cell's own tables are written too): atomic;
  None is written blank and a float NaN ``nan``, so ``read_table`` gives back what was written.
- ``cell_path`` / ``cell_params``: a cell's folder ``<family>/<key>~<value>/…/ttt~on``, written by
  the workflow (workflow/rules/common.smk imports ``cell_path``) and parsed by the reports.
"""
from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from ttt.base.files import write_csv

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["number", "read_table", "write_csv", "cell_path", "cell_params",
           "cell_value"]


def number(value) -> float | None:
    """A float from a CSV/JSON field; None for blank, None, a bool, ``True``/``False`` or text
    that is not a number. NaN and ±inf are kept (see the module docstring)."""
    if value is None or isinstance(value, bool) or value in ("", "True", "False"):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read_table(path: str | os.PathLike, what: str = "table", error: type[Exception] = ValueError,
               missing_ok: bool = False) -> pd.DataFrame:
    """The CSV at ``path`` as strings (see the module docstring); ``what`` names it in the "not
    found" error, raised as ``error``. With ``missing_ok`` a missing file is an empty table. An
    empty file (no header) is an empty table, as the csv module read it."""
    import pandas as pd  # here, not at the top: the workflow imports cell_path on every parse

    path = Path(path)
    if missing_ok and not path.is_file():
        return pd.DataFrame()
    try:
        with warnings.catch_warnings():  # pandas only warns when a row has too many fields
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False)
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (OSError, UnicodeDecodeError, csv.Error, pd.errors.ParserError,
            pd.errors.ParserWarning) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise error(f"{path}: unreadable {what} ({reason})") from None


def cell_value(value) -> str:
    """A parameter value as the cell path spells it: floats in ``%g`` form (``0.001``, ``1e-05``),
    anything else as ``str``."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def cell_path(family: str, params: Iterable[tuple[str, object]]) -> str:
    """``family/key~value/…`` in the order given (the workflow puts ``ttt~on|off`` last)."""
    parts = [family]
    for key, value in params:
        if "~" in key or "/" in key or "/" in cell_value(value):
            raise ValueError(f"cell parameter {key}={value!r}: '~' and '/' delimit the cell path")
        parts.append(f"{key}~{cell_value(value)}")
    return "/".join(parts)


def cell_params(path: str | os.PathLike) -> tuple[str, dict[str, str]]:
    """(family, {key: value}) of a cell path relative to ``results/cells``; path parts without a
    ``~`` are not parameters. Values stay strings (``cell_value`` wrote them)."""
    family, *parts = Path(path).parts
    return family, dict(part.split("~", 1) for part in parts if "~" in part)

