"""The gate registry: a gate is a function registered with ``@gate(signal, section=...)``, so a
signal exists only as the gate that judges it, and a gate judges exactly one signal (the registry
stamps its signal on every check the gate returns; a check cannot name another).

A gate receives a :class:`Scope` (the cells of its section's families, the section's thresholds)
and returns one :func:`check` per cell it judges. :func:`evaluate` runs every gate in registration
order; :func:`summarize` folds the checks into one verdict per signal (docs/verdicts.md): its
worst cell's, ``fail``/``hurts`` over ``no effect`` over ``no significant difference`` over
``pass``/``helps``, ``n/a`` when nothing could be judged. An effect gate answers one of four
(``ttt.base.paired_effect``); a diagnostic is reported, never judged."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Iterable

from ttt.base.paired_effect import HELPS, HURTS, NO_DIFFERENCE
from ttt.report.verdicts.loading import Cell, load_cells
from ttt.report.verdicts.thresholds import DEFAULTS, thresholds

NO_EFFECT = "no effect"  # a verdict of its own: TTT did nothing (never "pass")
CALIBRATION = "calibration"  # the family of known-answer scenarios (ttt.launch.calibration)
DIAGNOSTIC = "diagnostic"  # reported beside the verdicts, never a pass or a fail
FAILING = ("fail", HURTS, NO_EFFECT)  # what --strict refuses
# A signal's verdict is its worst cell's: the rank of each label.
RANK = {DIAGNOSTIC: 0, "fail": 4, HURTS: 4, NO_EFFECT: 3, NO_DIFFERENCE: 2, "pass": 1, HELPS: 1}


def check(cell: str, value, threshold, passed: bool | None, explanation: str,
          no_effect: bool = False, answer: str | None = None) -> dict:
    """One judged cell (``passed`` None: it cannot be judged, e.g. too short). ``no_effect`` marks
    a failed check whose reason is that TTT did nothing: its verdict reads "no effect" rather
    than "fail" (and never "pass"). ``answer``: an effect gate's answer (helps, no significant
    difference, hurts), which is the check's verdict; hurts fails."""
    if answer is not None and answer not in (HELPS, NO_DIFFERENCE, HURTS):
        raise ValueError(f"unknown answer {answer!r}")
    if answer is not None:
        passed = answer != HURTS
    return {"cell": cell, "value": value, "threshold": threshold,
            "passed": False if no_effect else passed, "explanation": explanation,
            "no_effect": bool(no_effect), "answer": None if no_effect else answer}


def label(c: dict) -> str:
    """The verdict of one check."""
    if c["passed"] is None:
        return "n/a"
    if c.get("diagnostic"):
        return DIAGNOSTIC
    if c["no_effect"]:
        return NO_EFFECT
    return c.get("answer") or ("pass" if c["passed"] else "fail")


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
    diagnostic: bool = False  # reported, never judged (no scenario can make it say "fail")

    def run(self, cells: list[Cell], cfg: dict, by_name: dict[str, Cell]) -> list[dict]:
        g = cfg[self.section] if self.section is not None else {}
        families = g.get("families")
        mine = [c for c in cells if families is None or c.family in families]
        out = []
        for judged in self.judge(Scope(mine, g, cfg, by_name)):
            if "signal" in judged:
                raise TypeError(f"gate {self.signal}: a check names a signal; the registry gives it")
            out.append({"signal": self.signal, **judged,
                        **({"diagnostic": True} if self.diagnostic else {})})
        return out


class Registry:
    """Gates by signal, in registration order (the order of ``verdicts.csv``)."""

    def __init__(self):
        self.gates: dict[str, Gate] = {}

    @property
    def signals(self) -> list[str]:
        return list(self.gates)

    def gate(self, signal: str, section: str | None, diagnostic: bool = False) -> Callable:
        """Register the decorated function as the one gate of ``signal``; its docstring says what
        it judges (docs/verdicts.md documents each signal). ``diagnostic``: its checks are
        reported with the verdict "diagnostic" and never fail a run."""
        def register(judge: Callable[[Scope], Iterable[dict]]):
            if signal in self.gates:
                raise ValueError(f"signal {signal!r} already has a gate "
                                 f"({self.gates[signal].judge.__qualname__})")
            if section is not None and section not in DEFAULTS:
                raise ValueError(f"gate {signal}: unknown thresholds section {section!r}")
            if not (judge.__doc__ or "").strip():
                raise ValueError(f"gate {signal}: needs a docstring saying what it judges")
            self.gates[signal] = Gate(signal, section, judge, diagnostic)
            return judge
        return register

    def evaluate(self, results: str | os.PathLike, cfg: dict | None = None
                 ) -> tuple[list[dict], list[dict]]:
        """(summary rows, one per signal; every per-cell check)."""
        cfg = cfg or thresholds()
        cells = load_cells(results)
        by_name = {c.name: c for c in cells}
        checks = [c for g in self.gates.values() for c in g.run(cells, cfg, by_name)]
        # The calibration family's cells fail on purpose (their verdicts are judged against the
        # known ones in calibration.csv): they never enter the matrix's verdict rows.
        return self.summarize([c for c in checks if not _calibration(c["cell"])]), checks

    def summarize(self, checks: list[dict]) -> list[dict]:
        rows = []
        for signal in self.signals:
            mine = [c for c in checks if c["signal"] == signal]
            judged = [c for c in mine if c["passed"] is not None]
            threshold = mine[0]["threshold"] if mine else None
            if not judged:
                rows.append({"signal": signal, "cells": ";".join(c["cell"] for c in mine),
                             "value": None, "threshold": threshold, "verdict": "n/a",
                             "explanation": mine[0]["explanation"] if mine else "no cell to judge"})
                continue
            worst_rank = max(RANK[label(c)] for c in judged)
            worst = max((c for c in judged if RANK[label(c)] == worst_rank), key=_badness)
            counts: dict[str, int] = {}
            for c in judged:
                counts[label(c)] = counts.get(label(c), 0) + 1
            verdict = DIAGNOSTIC if self.gates[signal].diagnostic else label(worst)
            head = ", ".join(f"{n} {name}" for name, n in sorted(
                counts.items(), key=lambda kv: -RANK[kv[0]])) + f" of {len(judged)}"
            rows.append({"signal": signal, "cells": ";".join(c["cell"] for c in judged),
                         "value": worst["value"], "threshold": threshold, "verdict": verdict,
                         "explanation": f"{head}; worst {worst['cell']}: {worst['explanation']}"})
        return rows


def _calibration(cell: str) -> bool:
    return str(cell).startswith(CALIBRATION + "/")


def _badness(c: dict) -> float:
    """Among checks of one label, the worst: the largest value, or for an effect answer (whose
    value is TTT's relative gain) the smallest."""
    value = c["value"]
    if value is None:
        return -math.inf
    if math.isnan(value):
        return math.inf
    return -value if c.get("answer") else value


REGISTRY = Registry()  # the test plan's gates (the gates_* modules register into it)
gate = REGISTRY.gate
