"""The gate registry: a gate is a function registered with ``@gate(signal, section=...)``, so a
signal exists only as the gate that judges it, and a gate judges exactly one signal (the registry
stamps its signal on every check the gate returns; a check cannot name another).

A gate receives a :class:`Scope` (the cells of its section's families, the section's thresholds)
and returns one :func:`check` per cell it judges. :func:`evaluate` runs every gate in registration
order; :func:`summarize` folds the checks into one verdict per signal (README "Verdicts: what
passed"): its worst cell's, ``fail`` over ``no effect`` over ``pass``, ``n/a`` when nothing could
be judged."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Iterable

from ttt.report.verdicts.loading import Cell, load_cells
from ttt.report.verdicts.thresholds import DEFAULTS, thresholds

NO_EFFECT = "no effect"  # a verdict of its own: TTT did nothing (never "pass")


def check(cell: str, value, threshold, passed: bool | None, explanation: str,
          no_effect: bool = False) -> dict:
    """One judged cell (``passed`` None: it cannot be judged, e.g. too short). ``no_effect`` marks
    a failed check whose reason is that TTT did nothing: its verdict reads "no effect" rather
    than "fail" (and never "pass")."""
    return {"cell": cell, "value": value, "threshold": threshold,
            "passed": False if no_effect else passed, "explanation": explanation,
            "no_effect": bool(no_effect)}


@dataclass(frozen=True)
class Scope:
    """What a gate sees: ``cells`` of its section's families, ``g`` the section's thresholds,
    ``cfg`` every section (a gate may share another's threshold), ``by_name`` every cell (a
    twin is looked up there)."""

    cells: list[Cell]
    g: dict
    cfg: dict
    by_name: dict[str, Cell]

    def twin(self, c: Cell) -> Cell | None:
        """The cell's TTT-off twin when it completed, else None."""
        twin = self.by_name.get(c.row.get("twin") or "")
        return twin if twin is not None and twin.done else None


@dataclass(frozen=True)
class Gate:
    signal: str
    section: str | None  # the thresholds section (the config's ``verdicts.<section>``); None: all cells
    judge: Callable[[Scope], Iterable[dict]]

    def run(self, cells: list[Cell], cfg: dict, by_name: dict[str, Cell]) -> list[dict]:
        g = cfg[self.section] if self.section is not None else {}
        families = g.get("families")
        mine = [c for c in cells if families is None or c.family in families]
        out = []
        for judged in self.judge(Scope(mine, g, cfg, by_name)):
            if "signal" in judged:
                raise TypeError(f"gate {self.signal}: a check names a signal; the registry gives it")
            out.append({"signal": self.signal, **judged})
        return out


class Registry:
    """Gates by signal, in registration order (the order of ``verdicts.csv``)."""

    def __init__(self):
        self.gates: dict[str, Gate] = {}

    @property
    def signals(self) -> list[str]:
        return list(self.gates)

    def gate(self, signal: str, section: str | None) -> Callable:
        """Register the decorated function as the one gate of ``signal``; its docstring says what
        it judges (README "Verdicts: what passed" documents each signal)."""
        def register(judge: Callable[[Scope], Iterable[dict]]):
            if signal in self.gates:
                raise ValueError(f"signal {signal!r} already has a gate "
                                 f"({self.gates[signal].judge.__qualname__})")
            if section is not None and section not in DEFAULTS:
                raise ValueError(f"gate {signal}: unknown thresholds section {section!r}")
            if not (judge.__doc__ or "").strip():
                raise ValueError(f"gate {signal}: needs a docstring saying what it judges")
            self.gates[signal] = Gate(signal, section, judge)
            return judge
        return register

    def evaluate(self, results: str | os.PathLike, cfg: dict | None = None
                 ) -> tuple[list[dict], list[dict]]:
        """(summary rows, one per signal; every per-cell check)."""
        cfg = cfg or thresholds()
        cells = load_cells(results)
        by_name = {c.name: c for c in cells}
        checks = [c for g in self.gates.values() for c in g.run(cells, cfg, by_name)]
        return self.summarize(checks), checks

    def summarize(self, checks: list[dict]) -> list[dict]:
        rows = []
        for signal in self.signals:
            mine = [c for c in checks if c["signal"] == signal]
            judged = [c for c in mine if c["passed"] is not None]
            failed = [c for c in judged if not c["passed"]]
            threshold = mine[0]["threshold"] if mine else None
            if not judged:
                rows.append({"signal": signal, "cells": ";".join(c["cell"] for c in mine),
                             "value": None, "threshold": threshold, "verdict": "n/a",
                             "explanation": mine[0]["explanation"] if mine else "no cell to judge"})
                continue
            broken = [c for c in failed if not c.get("no_effect")]
            worst = max(broken or failed or judged, key=_badness)
            verdict = "fail" if broken else NO_EFFECT if failed else "pass"
            head = (f"{len(failed)} of {len(judged)} {verdict}" if failed
                    else f"{len(judged)} pass") + f"; worst {worst['cell']}: {worst['explanation']}"
            rows.append({"signal": signal, "cells": ";".join(c["cell"] for c in judged),
                         "value": worst["value"], "threshold": threshold,
                         "verdict": verdict, "explanation": head})
        return rows


def _badness(c: dict) -> float:
    value = c["value"]
    if value is None:
        return -math.inf
    return math.inf if math.isnan(value) else value


REGISTRY = Registry()  # the test plan's gates (the gates_* modules register into it)
gate = REGISTRY.gate
