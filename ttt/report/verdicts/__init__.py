"""Test-plan verdicts (seed 000 §1, §4; docs/verdicts.md): the success signals as
gates over ``results/``.

Each gate is registered for exactly one signal (:mod:`.registry`) and judges the matrix's cells
(``tables/cells.csv`` plus each cell's files, :mod:`.loading`), one check per cell: ``cell``,
``value``, ``threshold``, ``passed`` (True / False, or None when the cell cannot be judged),
``explanation``. ``verdicts.csv`` folds them into one row per signal (its worst cell);
``verdicts_cells.csv`` keeps every check (:mod:`.render`). Thresholds and the families each gate
looks at come from the workflow config's ``verdicts:`` section (:mod:`.thresholds`).
"""
from __future__ import annotations

# Importing the gate modules registers their gates; this order is the order of verdicts.csv.
from ttt.report.verdicts import (gates_stability, gates_correctness,  # noqa: F401
                                 gates_responsiveness, gates_usefulness, gates_observability,
                                 gates_cost_quality, gates_families)
from ttt.report.verdicts.command import verdicts_command
from ttt.report.verdicts.effect import DTYPE_EPS, effect_of
from ttt.report.verdicts.loading import Cell, load_cells
from ttt.report.verdicts.registry import FAILING, NO_EFFECT, REGISTRY, Registry, check, gate, label
from ttt.report.verdicts.render import summary_line, summary_rst, write_verdicts
from ttt.report.verdicts.stats import bootstrap_ci
from ttt.report.verdicts.thresholds import DEFAULTS, load_thresholds, thresholds

SIGNALS = REGISTRY.signals  # every signal, each the one signal of its gate


def evaluate(results, cfg: dict | None = None) -> tuple[list[dict], list[dict]]:
    """(summary rows, one per signal; every per-cell check) of the registered gates."""
    return REGISTRY.evaluate(results, cfg)


def summarize(checks: list[dict]) -> list[dict]:
    return REGISTRY.summarize(checks)


__all__ = ["DEFAULTS", "DTYPE_EPS", "FAILING", "NO_EFFECT", "label", "REGISTRY", "SIGNALS", "Cell", "Registry",
           "bootstrap_ci", "check", "effect_of", "evaluate", "gate", "load_cells",
           "load_thresholds", "summarize", "summary_line", "summary_rst", "thresholds",
           "verdicts_command", "write_verdicts"]
