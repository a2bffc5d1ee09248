"""Which cells a run's tables hold: exactly the matrix's (docs/user-guide.md).

The workflow writes the matrix's cell paths to ``results/tables/matrix.txt`` (rule
``matrix_cells``), one a line. The tables are built from that list, never from whatever folders
``results/cells`` happens to hold: a folder left from an earlier or a wider matrix would
otherwise appear in ``cells.csv``, in the verdicts and in the run's final status. Such folders
are *orphans*, listed apart (``tables/orphans.csv``) and never deleted (they may be the results
someone wants to compare against). Without a matrix list (a results folder made by hand) every
cell folder is tabled, as before.

Cell folders are found and read through symlinks (a cell moved to another disk and linked back
is a cell like any other).
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

MATRIX_FILE = "matrix.txt"  # in the tables folder, beside cells.csv


def read_matrix(path: str | os.PathLike) -> list[str]:
    """The cell paths listed in ``path`` (one a line; blank lines and ``#`` comments skipped), in
    order, each once. ValueError (one line, file and line named) when missing or malformed."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ValueError(f"{path}: matrix cell list not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: unreadable matrix cell list ({exc})") from None
    cells = []
    for n, line in enumerate(lines, 1):
        cell = line.strip()
        if not cell or cell.startswith("#"):
            continue
        parts = PurePosixPath(cell).parts
        if (cell.startswith("/") or len(parts) < 2 or "~" in parts[0]
                or any(p in (".", "..") for p in parts)):
            raise ValueError(f"{path} line {n}: not a cell path (family/key~value/…): {cell!r}")
        cells.append(str(PurePosixPath(cell)))
    return list(dict.fromkeys(cells))


def default_matrix(tables: str | os.PathLike) -> Path | None:
    """``tables/matrix.txt`` when the workflow wrote one, else None."""
    path = Path(tables) / MATRIX_FILE
    return path if path.is_file() else None


def cells_on_disk(root: str | os.PathLike) -> list[str]:
    """Every folder under ``root`` holding a ``status.json``, as a path relative to ``root``,
    symlinked folders followed (each real folder visited once, so a link loop ends)."""
    root = Path(root)
    found, seen = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders.sort()
        if "status.json" in files and Path(folder) != root:
            found.append(Path(folder).relative_to(root).as_posix())
    return sorted(found)


def orphans(root: str | os.PathLike, matrix: list[str]) -> list[str]:
    """Cell folders under ``root`` that the matrix does not name."""
    named = set(matrix)
    return [cell for cell in cells_on_disk(root) if cell not in named]
