"""The cell modes by name, and the one run context each receives.

A mode is a function registered with ``@mode("name")`` in its own module; it takes a
:class:`CellRun` (what the cell carries: config, model, inputs, folders, log, phase timer) and
returns metrics.json's mode-specific part. :func:`ttt.eval.cell.run_cell` looks the mode up by the
config's name, so adding a mode means one module with its registration (imported by
``ttt/eval/cell.py``) and its name in the schema (``ttt.base.config.MODES``); a test holds the two
sets equal."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ttt.base.config import CellConfig
from ttt.data.codes import LazyMimi, conversation_codes
from ttt.data.conversations import Item
from ttt.eval.phases import Phases
from ttt.moshi.model import Bundle


@dataclass(frozen=True)
class CellRun:
    """What one cell run carries from loading to writing. ``tmp``: the folder the outputs are
    written into (renamed to ``out`` when the cell completes); ``out``: the cell's directory,
    whose sibling keeps a streamed cell's snapshots; ``cache``: the cache root (codes, models,
    demo conversations)."""

    cfg: CellConfig
    bundle: Bundle
    items: tuple[Item, ...]  # a list given is kept as a tuple
    cache: Path
    tmp: Path
    out: Path
    log: Callable[[str], None]
    phases: Phases

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(self.items))

    def codes(self, item) -> torch.Tensor:
        """The Mimi codes of ``item`` [1, 1 + 2·dep_q, T] (cached by content), on the host."""
        b = self.bundle  # Mimi is loaded only where the codes are not cached yet
        mimi = LazyMimi(lambda: b.mimi, b.sources.num_codebooks)
        return conversation_codes(mimi, b.tokenizer, item, self.cache / "codes", b.mimi_id)

    def first_block(self) -> torch.Tensor:
        """The first ``block`` steps of the first input, on the cell's device: what the checks
        beside the measured pass (upstream regression, X₀ plumbing) run on."""
        return self.codes(self.items[0])[:, :, :self.cfg.block].to(self.cfg.device)


@dataclass(frozen=True)
class Mode:
    """A registered mode: its runner and what the cell must know before running it."""

    name: str
    run: Callable[..., dict]  # (CellRun) -> metrics.json's mode-specific part
    runs_model: bool = True  # False: the model is never stepped (loaded with TTT off)
    conversations_only: bool = False  # refuses mono recordings with text, before any loading
    demo: Path | None = None  # the shipped manifest a cell without one reads (else generated)


class ModeError(ValueError):
    """A mode name nothing registered (the schema lists a mode whose module is not imported):
    ``run-cell`` reports it as its one-line error."""


_MODES: dict[str, Mode] = {}


def mode(name: str, **traits) -> Callable:
    """Register the decorated ``run(CellRun) -> dict`` as mode ``name`` with ``traits`` (the
    :class:`Mode` fields after ``run``); one function may be several modes (stack the
    decorator). A mode that never steps the model (``runs_model=False``) is loaded with TTT off,
    so nothing claims fast weights that never ran."""
    def register(run: Callable[..., dict]) -> Callable[..., dict]:
        if name in _MODES:
            raise ValueError(f"mode {name!r} is already registered "
                             f"({_MODES[name].run.__module__}.{_MODES[name].run.__qualname__})")
        _MODES[name] = Mode(name, run, **traits)
        return run
    return register


def lookup(name: str) -> Mode:
    """The registered mode ``name``; one line naming it and the registered ones when none is."""
    try:
        return _MODES[name]
    except KeyError:
        raise ModeError(f"mode {name!r} has no registered runner (registered: "
                        f"{', '.join(sorted(_MODES)) or 'none'}; ttt/eval/modes.py)") from None


def registered() -> tuple[str, ...]:
    return tuple(_MODES)
