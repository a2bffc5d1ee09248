"""Checks shared by the configuration objects (ttt/base/config.py, ttt/base/yarn_config.py, the
training config): one ``ValueError`` naming the field, and unknown keys refused."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping


def check(cond: bool, name: str, msg: str) -> None:
    """Raise ``ValueError("name: msg")`` unless ``cond``."""
    if not cond:
        raise ValueError(f"{name}: {msg}")


def strict_kwargs(cls, data: Mapping[str, Any], where: str) -> dict:
    """``data`` as keyword arguments of dataclass ``cls``; unknown keys are an error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    return dict(data)


def is_int(x: Any) -> bool:
    """An int, not a bool (YAML's true is no integer)."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)
