"""Gates: TTT is observable (seed 000 item 10): telemetry for exactly the configured TTT layers,
monotonic counters, and a parseable ``TTT-TELEMETRY`` line in the job log."""
from __future__ import annotations

from ttt.report.tables import number
from ttt.report.verdicts.registry import Scope, check, gate


def _present(c) -> set[int]:
    return {int(number(r["layer"])) for r in c.table("telemetry.csv")}


@gate("observability.telemetry_layers", section="observability")
def telemetry_layers(s: Scope):
    """Telemetry exactly for the layers the config makes TTT layers, each updating when the run
    has a full chunk."""
    from ttt.base.config import TTTConfig

    out = []
    for c in s.cells:
        if not c.done:
            continue
        m = c.result
        rows = c.table("telemetry.csv")
        present = _present(c)
        resolved = m.resolved_ttt
        try:
            cfg_ttt = TTTConfig.from_dict(resolved) if resolved and m.ttt else None
            expected = set(cfg_ttt.layer_indices(int(m.model_layers))) if cfg_ttt else set()
        except (ValueError, KeyError, TypeError) as exc:
            out.append(check(c.name, None, 0.0, False,
                             f"cannot tell which layers should update: {exc!r}"))
            continue
        final = {}
        for r in rows:
            final[int(number(r["layer"]))] = number(r["updates"]) or 0.0
        should_update = cfg_ttt is not None and m.steps > cfg_ttt.chunk_size
        idle = sorted(i for i in expected & present if should_update and not final.get(i))
        missing, extra = sorted(expected - present), sorted(present - expected)
        problems = len(missing) + len(extra) + len(idle)
        out.append(check(c.name, float(problems), 0.0, problems == 0,
                         f"expected layers {sorted(expected)}, telemetry for {sorted(present)}"
                         + (f"; missing {missing}" if missing else "")
                         + (f"; unexpected {extra}" if extra else "")
                         + (f"; never updated {idle}" if idle else "")))
    return out


@gate("observability.counters_monotonic", section="observability")
def counters_monotonic(s: Scope):
    """The cumulative counters ``updates`` and ``clip_events`` never decrease within an input."""
    out = []
    for c in s.cells:
        rows = c.table("telemetry.csv") if c.done else []
        if not rows:
            continue
        decreases, seen = 0, {}
        for r in rows:
            key = (r.get("item"), r["layer"])
            now = (number(r["updates"]), number(r["clip_events"]))
            before = seen.get(key)
            if before is not None:
                decreases += sum(1 for a, b in zip(before, now) if b is not None and a is not None and b < a)
            seen[key] = now
        out.append(check(c.name, float(decreases), 0.0, decreases == 0,
                         f"{decreases} decreases of updates/clip_events over "
                         f"{len(rows)} telemetry rows"))
    return out


@gate("observability.log_line", section="observability")
def log_line(s: Scope):
    """The job log has ``TTT-TELEMETRY {json}`` lines, all well formed, the last for the layers
    telemetry.csv has."""
    from ttt.session.telemetry_records import parse_telemetry_line

    out = []
    for c in s.cells:
        if not (c.done and c.table("telemetry.csv")):
            continue
        present = _present(c)
        log = c.log_path()
        if log is None:
            out.append(check(c.name, None, 0.0, False, "no job log found"))
            continue
        records, errors = [], []
        for n, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
            try:
                record = parse_telemetry_line(line)
            except ValueError as exc:
                errors.append(f"line {n}: {exc}")
                continue
            if record is not None:
                records.append(record)
        logged = {int(k) for k in records[-1]["layers"]} if records else set()
        problems = len(errors) + (0 if records else 1) + len(logged ^ present)
        out.append(check(c.name, float(problems), 0.0, problems == 0,
                         f"{len(records)} TTT-TELEMETRY lines in {log.name}"
                         + (f", last for layers {sorted(logged)}" if records else "")
                         + (f"; {len(errors)} malformed ({errors[0]})" if errors else "")
                         + (f"; telemetry.csv has layers {sorted(present)}" if logged != present else "")))
    return out
