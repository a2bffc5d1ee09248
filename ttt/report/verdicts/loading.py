"""A results tree as the gates see it: ``tables/cells.csv``'s rows, each a :class:`Cell` reading
its own files on first use (``metrics.json``, ``timeseries.csv``, ``telemetry.csv``, the job log,
the ASR output). A file that cannot be read marks its cell not done, with the reason: the
``run.completed`` gate names it, and no other gate judges the cell. With the matrix's cell list
(``tables/matrix.txt``, :mod:`ttt.report.cell_set`) the cells are exactly the matrix's: a matrix
cell without a row in cells.csv (a table cut short) is a cell not done, named, and a row of a
cell the matrix does not name is not judged."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ttt.base.files import read_json
from ttt.base.result import CellResult, ResultError
from ttt.report.cell_set import default_matrix, read_matrix
from ttt.report.tables import cell_params, read_table

DONE = ("ok", "diverged")


@dataclass
class Cell:
    """One row of cells.csv with lazy access to its files."""

    row: dict
    root: Path  # results/cells/<cell>
    _cache: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.row["cell"]

    @property
    def family(self) -> str:
        return self.row["family"]

    @property
    def done(self) -> bool:
        if self.row.get("status") not in DONE or self.result is None:
            return False
        for name in ("timeseries.csv", "telemetry.csv"):  # read now: a bad one is named here
            self.table(name)
        return self.corrupt is None

    @property
    def corrupt(self) -> str | None:
        """The first of its files found unreadable (named, with why), or None."""
        return self._cache.get("corrupt")

    def _unreadable(self, exc: Exception):
        self._cache.setdefault("corrupt", str(exc))

    @property
    def ttt_on(self) -> bool:
        return self.result is not None and self.result.ttt

    @property
    def result(self) -> CellResult | None:
        """The typed metrics.json (:mod:`ttt.base.result`); None when absent, or when it does
        not fit its type (the cell is then not done, and the reason names the file and key)."""
        if "result" not in self._cache:
            raw, path = self.metrics, self.root / "cell" / "metrics.json"
            try:
                self._cache["result"] = (CellResult.from_dict(raw, str(path))
                                         if raw is not None else None)
            except ResultError as exc:
                self._unreadable(exc)
                self._cache["result"] = None
        return self._cache["result"]

    @property
    def metrics(self) -> dict | None:
        """metrics.json as the plain object it is (prefer :attr:`result`, which is checked)."""
        if "metrics" not in self._cache:
            path = self.root / "cell" / "metrics.json"
            self._cache["metrics"] = self._object(path) if path.is_file() else None
        return self._cache["metrics"]

    def table(self, name: str) -> list[dict]:
        if name not in self._cache:
            try:
                self._cache[name] = read_table(self.root / "cell" / name,
                                               missing_ok=True).to_dict("records")
            except ValueError as exc:
                self._unreadable(exc)
                self._cache[name] = []
        return self._cache[name]

    @property
    def status(self) -> dict:
        path = self.root / "status.json"
        return (self._object(path) or {}) if path.is_file() else {}

    def _object(self, path: Path) -> dict | None:
        """A JSON object, or None when unreadable (recorded: the cell is then not done)."""
        try:
            data = read_json(path, path.name)
            if not isinstance(data, dict):
                raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
            return data
        except ValueError as exc:
            self._unreadable(exc)
            return None

    def log_path(self) -> Path | None:
        """The job's stdout log: status.json's path, else the one beside the cell (a results
        folder moved elsewhere keeps its logs under ``jobs/``)."""
        logged = self.status.get("log")
        if logged and Path(logged).is_file():
            return Path(logged)
        job = self.status.get("job_id") or self.row.get("job_id")
        found = sorted((self.root / "jobs").glob(f"{job}_*log.out")) if job else []
        found = found or sorted((self.root / "jobs").glob("*_log.out"))
        return found[-1] if found else None

    def asr(self) -> dict | None:
        """The ASR stage's summary (``asr/asr.json``), None when the stage did not run or its
        file is unreadable (then recorded: the cell is not done)."""
        path = self.root / "asr" / "asr.json"
        return self._object(path) if path.is_file() else None

    def asr_windows(self) -> list[dict]:
        """The ASR stage's per-window rows (``asr/asr.jsonl``); none when unreadable (recorded)."""
        try:
            return read_jsonl(self.root / "asr" / "asr.jsonl")
        except ValueError as exc:
            self._unreadable(exc)
            return []

    def transcript(self) -> str | None:
        path = self.root / "cell" / "transcript.txt"
        return path.read_text() if path.is_file() else None


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a JSON-lines file; ValueError naming the file and line otherwise."""
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} line {n}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {n}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def load_cells(results: str | os.PathLike) -> list[Cell]:
    """The cells to judge: cells.csv's rows, or, when the workflow wrote the matrix's cell list,
    exactly the matrix's cells (module docstring)."""
    results = Path(results)
    table = results / "tables" / "cells.csv"
    if not table.is_file():
        raise ValueError(f"{table}: not found (run the aggregate rule first)")
    rows = read_table(table, "cells table").to_dict("records")
    matrix_file = default_matrix(results / "tables")
    if matrix_file is not None:
        by_name = {row.get("cell"): row for row in rows}
        rows = [by_name.get(cell) or _lost_row(cell, table) for cell in read_matrix(matrix_file)]
    return [Cell(row, results / "cells" / row["cell"]) for row in rows]


def _lost_row(cell: str, table: Path) -> dict:
    """A matrix cell that cells.csv lacks: not done, and why."""
    family, params = cell_params(cell)
    return {"family": family, "cell": cell, **params, "status": "missing",
            "error": f"no row in {table} (cut short? rerun the aggregate rule)"}
