"""What one cell writes as ``metrics.json``, typed: the one definition shared by the code that
writes a cell (``ttt.eval.cell``) and every report that reads it back (``ttt.report``).

Why a type and not a dict: a metric renamed on the writing side used to surface on the reading
side as a blank column or an "n/a" verdict. Here both sides go through :meth:`CellResult.from_dict`,
which refuses, naming the file and the dotted key,

- a missing key (every section the writer always writes is required, ``null`` where it may be
  empty; only the mode-specific sections ``ab``, ``regression``, ``collapse``, ``audio`` may be
  absent),
- a key it does not know (a renamed metric is both: the old name missing, the new one unknown),
- a value of the wrong type (a string where a number belongs; NaN and ±inf are numbers: a
  diverged perplexity *is* inf).

Adding a metric therefore means adding its field here; the writer checks what it writes, so a
cell test fails at once rather than a report later. ``schema_version`` is written with every
result; files without it are the unversioned format of before (2026-12), read as version 1 when
their keys fit, refused with one line when not. A newer version than :data:`SCHEMA_VERSION` is
refused. The cell's config stays a plain mapping (``config``): it is the cell config
(``ttt.base.config.CellConfig.to_dict()``) and evolves with it; typed accessors read the few keys the
reports use. No torch, no numpy: the login-node reports import this.
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


class ResultError(ValueError):
    """A metrics.json that does not match :class:`CellResult`: one line naming file and key."""


@dataclass(frozen=True)
class Perplexity:
    text: float
    audio: float


@dataclass(frozen=True)
class WordErrors:
    """Pooled WER of the cell's hypotheses against their references (``ttt.eval.metrics``)."""
    wer: float | None
    substitutions: int
    deletions: int
    insertions: int
    ref_words: int


@dataclass(frozen=True)
class Collapse:
    """A streamed cell's text-stream indicators (``ttt.eval.generate.collapse_indicators``)."""
    words_per_min: float | None
    distinct_1: float | None
    distinct_2: float | None
    longest_repeated_ngram: int
    pad_fraction: float | None


@dataclass(frozen=True)
class Throughput:
    """Per-step latency (both modes) and the teacher-forced block figures (that mode only)."""
    ms_per_step_p50: float | None
    ms_per_step_p90: float | None
    rtf: float | None
    tokens_per_s: float | None
    frames_per_s: float | None = None
    block: int | None = None
    ms_per_block_p50: float | None = None
    ms_per_block_p90: float | None = None


@dataclass(frozen=True)
class Memory:
    """Peak bytes of the load and of the run; ``peak_bytes`` is the one figure of older cells.
    ``measure``: ``cuda_allocated`` (the allocator's peak) or ``cpu_resident`` (load: the peak of
    anonymous resident memory, and the RSS growth; ttt.eval.phases.Resident)."""
    run_peak_bytes: int | None = None
    load_peak_bytes: int | None = None
    peak_bytes: int | None = None
    measure: str | None = None
    load_anon_peak_bytes: int | None = None
    load_rss_delta_bytes: int | None = None

    @property
    def run_peak(self) -> int | None:
        """The run's peak without the load transient (older cells: their only peak)."""
        return self.run_peak_bytes if self.run_peak_bytes is not None else self.peak_bytes


@dataclass(frozen=True)
class ChunkGain:
    """One layer's next-chunk gain ℓ(W⁽⁰⁾) − ℓ(W⁽ⁱ⁾) (``ttt.session.telemetry_records``)."""
    mean: float
    rel: float
    positive: float
    chunks: int


@dataclass(frozen=True)
class Telemetry:
    """metrics.json's ``ttt_telemetry`` (``ttt.eval.cell_outputs.telemetry_summary``)."""
    updates: int
    clip_events: int
    final_w_norm: dict[str, float]
    max_delta_norm: float
    max_w_rel_change: float
    next_chunk_gain: dict[str, ChunkGain]


@dataclass(frozen=True)
class ABTwin:
    """The TTT-off twin run in the same job (``ttt.eval.checks.ab_twin``)."""
    pre_update_logits_rel_err: float
    text_ppl_on: float | None = None
    text_ppl_off: float | None = None
    audio_ppl_on: float | None = None
    audio_ppl_off: float | None = None
    text_ppl_delta: float | None = None
    audio_ppl_delta: float | None = None


@dataclass(frozen=True)
class Regression:
    """TTT-off against upstream moshi (``ttt.eval.checks.upstream_regression``)."""
    bitwise_equal: bool
    max_abs_diff: float
    steps: int
    upstream_loader: str | None = None


@dataclass(frozen=True)
class Plumbing:
    """X₀ each TTT layer receives against moshi's embeddings (``checks.embedding_plumbing``)."""
    layers: list[int]
    max_abs_diff: float | None
    steps: int


@dataclass(frozen=True)
class Audio:
    """A generate cell's ``out.wav`` and where its audio starts on the text's clock."""
    file: str
    offset_s: float
    codec_untrained: bool | None = None


@dataclass(frozen=True)
class Provenance:
    git_sha: str | None
    device: str | None
    versions: dict[str, str] | None = None
    seed: int | None = None
    started_at: str | None = None
    finished_at: str | None = None


# Sections only one mode writes: absent is the same as null.
MODE_SPECIFIC = frozenset({"ab", "regression", "collapse", "audio"})


@dataclass(frozen=True)
class CellResult:
    """One cell's ``metrics.json`` (module docstring: what is checked and why)."""
    cell: str
    family: str
    mode: str
    ttt: bool  # TTT layers were active (not only configured)
    model_path: str | None
    model_layers: int | None
    steps: int
    diverged: bool
    requeues: int
    load_s: float | None
    config: dict[str, Any]
    provenance: Provenance
    perplexity: Perplexity | None
    wer: WordErrors | None
    throughput: Throughput
    memory: Memory
    ttt_telemetry: Telemetry | None
    plumbing: Plumbing | None
    timing: dict[str, float]
    ab: ABTwin | None = None
    regression: Regression | None = None
    collapse: Collapse | None = None
    audio: Audio | None = None
    schema_version: int = SCHEMA_VERSION

    # -- the cell config's keys the reports read --------------------------------------------
    @property
    def resolved_ttt(self) -> dict[str, Any] | None:
        """The TTT settings the cell ran with (every key resolved), None when TTT was off."""
        return self.config.get("resolved_ttt")

    @property
    def dtype(self) -> str:
        return self.config.get("dtype") or "float32"

    @property
    def model(self) -> str | None:
        return self.config.get("model")

    @property
    def model_digest(self) -> str | None:
        return self.config.get("model_digest")

    # -- reading and writing ----------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, where: str = "metrics.json") -> CellResult:
        """The result in ``data`` (a parsed metrics.json); ResultError naming ``where`` and the
        key when it does not fit."""
        if not isinstance(data, dict):
            raise ResultError(f"{where}: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if isinstance(version, bool) or not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ResultError(f"{where}: schema_version {version!r} is not one this ttt reads "
                              f"(<= {SCHEMA_VERSION}); read it with the ttt that wrote it")
        return _build(cls, data, where, "")

    def to_dict(self) -> dict:
        """The JSON object written as metrics.json (mode-specific sections left out when null)."""
        out = dataclasses.asdict(self)
        return {k: v for k, v in out.items() if not (k in MODE_SPECIFIC and v is None)}


def load(path: str | os.PathLike) -> CellResult:
    """The cell result at ``path``; ResultError (one line, file and key named) when it is
    missing, not JSON, or does not fit :class:`CellResult`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultError(f"{path}: cell result not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultError(f"{path}: not valid JSON ({getattr(exc, 'msg', 'not UTF-8 text')})") from None
    except OSError as exc:
        raise ResultError(f"{path}: unreadable ({exc.strerror or exc})") from None
    return CellResult.from_dict(data, str(path))


def checked(metrics: dict, where: str = "metrics.json") -> CellResult:
    """The writer's side: ``metrics`` exactly as JSON will hold it (numpy scalars become numbers,
    anything else not JSON becomes text and is refused below), as a :class:`CellResult`."""
    return CellResult.from_dict(json.loads(json.dumps(metrics, default=_plain)), where)


def _plain(value):
    item = getattr(value, "item", None)  # numpy and torch scalars, without importing either
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            pass
    return str(value)


# -- the checker: a dataclass from a JSON object, type by type --------------------------------
def _build(cls, data: dict, where: str, prefix: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    missing = [name for name, f in fields.items() if name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing or unknown:  # a renamed key is both: name the pair
        problems = ([f"missing key {prefix + missing[0]!r}"] if missing else []) + (
            [f"unknown key {prefix + unknown[0]!r} (renamed? a new metric needs its field in "
             f"ttt/base/result.py {cls.__name__})"] if unknown else [])
        raise ResultError(f"{where}: {'; '.join(problems)}")
    return cls(**{name: check_value(hints[name], data[name], where, prefix + name)
                  for name in fields if name in data})


def check_value(hint, value, where: str, key: str):
    """``value`` as type ``hint`` (the annotations above: numbers, text, flags, lists, mappings,
    these dataclasses, ``X | None``); ResultError naming ``where`` and ``key`` when it is not."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return check_value(hint, value, where, key)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise _wrong(where, key, "an object", value)
        return _build(hint, value, where, key + ".")
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise _wrong(where, key, "an object", value)
        inner = args[1] if args else Any
        return {k: check_value(inner, v, where, f"{key}.{k}") for k, v in value.items()}
    if origin is list or hint is list:
        if not isinstance(value, list):
            raise _wrong(where, key, "a list", value)
        inner = args[0] if args else Any
        return [check_value(inner, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong(where, key, "a number", value)
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(where, key, "an integer", value)
        return value
    if hint in (bool, str):
        if not isinstance(value, hint):
            raise _wrong(where, key, "true/false" if hint is bool else "text", value)
        return value
    raise TypeError(f"ttt/base/result.py: no checker for {hint!r} ({key})")  # a bug here


def _wrong(where: str, key: str, expected: str, value) -> ResultError:
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return ResultError(f"{where}: key {key!r}: expected {expected}, got "
                       f"{'null' if value is None else type(value).__name__} {shown}")


__all__ = ["SCHEMA_VERSION", "ABTwin", "Audio", "CellResult", "ChunkGain", "Collapse", "Memory",
           "Perplexity", "Plumbing", "Provenance", "Regression", "ResultError", "Telemetry",
           "Throughput", "WordErrors", "check_value", "checked", "load"]
