"""``python -m ttt cost CONFIG...``: the GPU cost of a workflow config's matrix, one line per
family, from the per-step costs measured at 7B (ttt/launch/cost.py). The config files merge as
Snakemake merges ``--configfile`` (later files win, key by key), e.g.
``python -m ttt cost config/config.yaml config/full.yaml``."""
from __future__ import annotations

import argparse
from pathlib import Path

from ttt.cli.common import bad_input, example

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def _merged(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def cost_command(args: argparse.Namespace) -> int:
    import json

    import yaml
    from snakemake.utils import validate

    from ttt.launch import cost, matrix

    config: dict = {}
    try:
        for path in args.config:
            loaded = yaml.safe_load(Path(path).read_text())
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: not a YAML mapping")
            config = _merged(config, loaded)
        validate(config, str(SCHEMA))
        costs = json.loads(Path(args.costs).read_text()) if args.costs else cost.latest_costs()
        cells = matrix.build_matrix(config)
    except (OSError, ValueError, yaml.YAMLError, matrix.MatrixError) as exc:
        return bad_input(ValueError(str(exc).splitlines()[0]))
    except Exception as exc:  # snakemake's ValidationError: one line naming the key
        return bad_input(ValueError(f"{args.config[-1]}: {str(exc).splitlines()[0]}"))
    print("\n".join(cost.lines(cells, costs)))
    return 0


def add_parser(sub) -> None:
    c = sub.add_parser(
        "cost", help="GPU cost of a workflow config's matrix, per family",
        description="The GPU cost of a workflow config's matrix, one line per family, from the "
                    "per-step costs measured at 7B (ttt/launch/cost.py). The files merge as "
                    "Snakemake merges --configfile: later files win, key by key.",
        epilog=example("python -m ttt cost config/config.yaml config/full.yaml"))
    c.add_argument("config", nargs="+", help="workflow config YAML(s), merged in order")
    c.add_argument("--costs", default=None,
                   help="measured costs JSON (default: the newest bench/results/*-matrix-cost.json)")
    c.set_defaults(func=cost_command)
