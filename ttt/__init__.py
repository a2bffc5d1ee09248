"""Test-time training (In-Place TTT) and YaRN for upstream Kyutai Moshi, by module surgery.

The public names are imported on first use (PEP 562), so ``import ttt.launch.launcher`` / ``ttt.cli.main`` —
the drivers Snakemake starts on a login node, one per cell in flight — load neither torch nor moshi.
"""
from importlib import import_module

_EXPORTS = {"TTTConfig": "base.config", "YarnConfig": "base.config", "apply_ttt": "moshi.surgery",
            "remove_ttt": "moshi.surgery", "ttt_layers": "moshi.surgery",
            "TTTLMGen": "session.streaming", "ttt_state": "session.telemetry",
            "apply_yarn": "moshi.yarn", "load_checkpoint": "moshi.model",
            "inspect_checkpoint": "moshi.model", "resolve_checkpoint": "moshi.checkpoints"}

__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
