# Config validation and the matrix: every cell's path and its cell config (ttt/launch/matrix.py).
# Before any job is planned, every cell config goes through the validators the cell itself uses and
# the model is checked (ttt/launch/preflight.py); a bad value stops the run with one line naming
# the key. Every function the rules call lives here: the other rule files hold rules only.
import os
import shlex
import sys

import yaml
from snakemake.utils import validate

# The ttt package beside this workflow (the repository root), for the DAG build here and, first
# on PYTHONPATH in every job's shell, for every `python -m ttt` job and the cells they submit:
# the checkout in use, not whichever copy the environment has installed.
REPO = os.path.dirname(workflow.basedir)
sys.path.insert(0, REPO)
_PYTHONPATH = shlex.quote(REPO) + "${PYTHONPATH:+:$PYTHONPATH}"
shell.prefix("set -euo pipefail; export PYTHONPATH={_PYTHONPATH}; ")
from ttt.base import code_identity as code  # noqa: E402
from ttt.launch import cost, matrix, preflight, schema  # noqa: E402
from ttt.report.tables import cell_value  # noqa: E402  (the reports parse it)

PLOTS = ["lr_grid", "long_form", "yarn", "figure5", "figure5_hybrid", "consistency"]


def stop(message):
    """A bad config value: one line naming the key, exit 2, before any job."""
    sys.stderr.write(f"error: {message}\n")
    sys.exit(2)


def checked(check, *args):
    """`check(*args)`, or the run stops on its one-line error (PreflightError, MatrixError)."""
    try:
        return check(*args)
    except (preflight.PreflightError, matrix.MatrixError, schema.SchemaError) as exc:
        stop(str(exc))


# `--config` values arrive as strings (Snakemake reads them with YAML's BaseLoader: nested ones
# always, `null` at the top level too): each is typed as the schema wants it at its key, as a
# config file would be, then the schema's first complaint is one line; `validate` fills defaults.
SCHEMA = schema.load_schema(f"{workflow.basedir}/schemas/config.schema.yaml")
checked(schema.check, schema.coerce(config, SCHEMA), SCHEMA)
validate(config, "../schemas/config.schema.yaml")
MATRIX = matrix.build_matrix(config)
MODELS = checked(preflight.check_workflow, config, MATRIX)
# The matrix's GPU cost per family (ttt/launch/cost.py, docs/gpu-performance.md), before any job.
sys.stderr.write("".join(f"{line}\n" for line in cost.lines(MATRIX, cost.latest_costs())))
# The code a cell runs is part of its config: a code edit reruns the cells (`code_digest: pin`
# keeps the results of older code on purpose; docs/config.md "Code changes").
CODE_DIGEST = code.code_digest()
for _path, _spec in MATRIX.items():
    _spec["model_digest"] = MODELS[_spec["model"], _spec["base"]]["model_digest"]
    _digest = code.planned_digest(
        config["code_digest"], f"results/cells/{_path}/cell.yaml", CODE_DIGEST
    )
    if _digest is not None:
        _spec["code_digest"] = _digest


def cell_yaml(cell_path):
    """The resolved cell config as its file holds it: a rule param, so a change (model content
    included) reruns exactly the cells it changes (Snakemake's params rerun trigger)."""
    return yaml.safe_dump(MATRIX[cell_path], sort_keys=False)


def dataset_id(cell_path):
    return matrix.dataset_id(MATRIX[cell_path])


DATASETS = {dataset_id(p): p for p in MATRIX}


def as_yaml(value):
    """A config section as the YAML file a job reads: a rule param, so editing the section reruns
    the rule (Snakemake's params rerun trigger)."""
    return yaml.safe_dump(value, sort_keys=False)


# ---- data preparation (data.smk) ---------------------------------------------------------------


def prepare_yaml(dataset):
    return yaml.safe_dump(matrix.prepare_config(dataset, MATRIX[DATASETS[dataset]]))


def built_manifest(w):
    """A family reading a speech set this workflow builds (results/data/speech/...) waits for it."""
    manifest = MATRIX[DATASETS[w.dataset]]["data"].get("manifest")
    return [manifest] if manifest and preflight.speech_set_of(manifest) else []


# Synthesised two-speaker conversations (docs/speech-data.md): one manifest per set named under
# `speech:` in the config.
SPEECH_SETS = config.get("speech") or {}


def speech_args(w):
    return matrix.speech_args(SPEECH_SETS[w.speech_set])


# ---- listening panel (panel.smk) ---------------------------------------------------------------


def panel_cells():
    """{system label: cell path} of the panel's TTT-on and TTT-off cells, or {} without a panel."""
    return checked(matrix.panel_cells, config)
