# Config validation and the matrix: every cell's path and its cell config. Before any job is
# planned, every cell config goes through the validators the cell itself uses and the model is
# checked (ttt/launch/preflight.py); a bad value stops the run with one line naming the key.
# Every function the rules call lives here: the other rule files hold rules only.
import hashlib
import json
import os
import shlex
import sys

import yaml
from snakemake.utils import validate

# `--config KEY=null` arrives as the string 'null' (Snakemake reads --config values with YAML's
# BaseLoader, which knows no null); it means null, as `KEY: null` in a config file does (e.g.
# `panel=null`: no panel; `compare_with=null`).
for _key, _value in list(config.items()):
    if _value in ("null", "Null", "NULL", "~"):
        config[_key] = None
validate(config, "../schemas/config.schema.yaml")

# The ttt package beside this workflow (the repository root), for the DAG build here and, first
# on PYTHONPATH in every job's shell, for every `python -m ttt` job and the cells they submit:
# the checkout in use, not whichever copy the environment has installed.
REPO = os.path.dirname(workflow.basedir)
sys.path.insert(0, REPO)
_PYTHONPATH = shlex.quote(REPO) + "${PYTHONPATH:+:$PYTHONPATH}"
shell.prefix("set -euo pipefail; export PYTHONPATH={_PYTHONPATH}; ")
from ttt.launch import preflight  # noqa: E402
from ttt.report.tables import cell_path, cell_value  # noqa: E402  (the reports parse them)

PLOTS = ["lr_grid", "long_form", "yarn", "figure5", "figure5_hybrid", "consistency"]
FAMILY_KEYS = ("model", "base", "device", "dtype", "cache_dir")


def _data(family_cfg, duration, seed):
    """A family's inputs: its manifest when given, else a demo conversation of `duration`."""
    if family_cfg.get("manifest"):
        return {"manifest": family_cfg["manifest"]}
    demo = {"durations": [float(duration)], "seed": int(seed)}
    if family_cfg.get("recurrent"):
        demo["recurrent"] = True
    return {"demo": demo}


def _cell(family, path_params, mode, data, ttt_on, ttt_extra=None, **extra):
    base = {k: config[k] for k in FAMILY_KEYS}
    own_model = (config.get(family) or {}).get("model")
    if own_model:  # a family may name its own model (e.g. the hybrid on a model without TTT)
        base.update(model=own_model, base=(config.get(family) or {}).get("base"))
    ttt = {**(config.get("ttt") or {}), **(ttt_extra or {})} if ttt_on else {"enabled": False}
    path = cell_path(family, [*path_params, ("ttt", "on" if ttt_on else "off")])
    return path, {
        **base,
        "cell": path,
        "family": family,
        "mode": mode,
        "data": data,
        "ttt": ttt or None,
        **extra,
    }


def build_matrix():
    cells = {}
    fams = config["families"]
    if "short_form" in fams:
        f = config["short_form"]
        for on in (True, False):
            p, c = _cell(
                "short_form",
                [("duration", f["duration_s"])],
                f["mode"],
                _data(f, f["duration_s"], f["seed"]),
                on,
                window_s=f["window_s"],
                snapshot_every=f["snapshot_every"],
            )
            cells[p] = c
    if "long_form" in fams:
        f = config["long_form"]
        for d in f["durations_s"]:
            for on in (True, False):
                p, c = _cell(
                    "long_form",
                    [("duration", d)],
                    f["mode"],
                    _data(f, d, f["seed"]),
                    on,
                    window_s=f["window_s"],
                    snapshot_every=f["snapshot_every"],
                )
                cells[p] = c
    if "yarn" in fams:
        f = config["yarn"]
        for tokens in f["tokens"]:
            yarn = {
                "scale": tokens / f["original_context"],
                "original_context": f["original_context"],
                "context": tokens,
            }
            duration = tokens / 12.5 + 1
            for on in (True, False):
                p, c = _cell(
                    "yarn",
                    [("tokens", tokens)],
                    "teacher_forced",
                    _data(f, duration, f["seed"]),
                    on,
                    yarn=yarn,
                    ab=on,
                    window_s=f["window_s"],
                )
                cells[p] = c
    if "lr_grid" in fams:
        f = config["lr_grid"]
        for lr in f["lrs"]:
            for chunk in f["chunks"]:
                p, c = _cell(
                    "lr_grid",
                    [("lr", float(lr)), ("chunk", chunk)],
                    "teacher_forced",
                    _data(f, f["duration_s"], f["seed"]),
                    True,
                    {
                        "lr": float(lr),
                        "chunk_size": chunk,
                        "delta_clip_fro_norm": f["delta_clip_fro_norm"],
                    },
                    window_s=f["window_s"],
                    clip_saturation=f["clip_saturation"],
                )
                cells[p] = c
        p, c = _cell(
            "lr_grid",
            [],
            "teacher_forced",
            _data(f, f["duration_s"], f["seed"]),
            False,
            window_s=f["window_s"],
        )
        cells[p] = c
    if "regression" in fams:
        f = config["regression"]
        p, c = _cell(
            "regression",
            [],
            "teacher_forced",
            _data(f, f["duration_s"], f["seed"]),
            False,
            check_upstream=True,
            window_s=f["window_s"],
        )
        cells[p] = c
    if "telemetry" in fams:
        f = config["telemetry"]
        for on in (True, False):
            p, c = _cell(
                "telemetry",
                [("tau", float(f["delta_clip_fro_norm"]))],
                "teacher_forced",
                _data(f, f["duration_s"], f["seed"]),
                on,
                {
                    "delta_clip_fro_norm": float(f["delta_clip_fro_norm"]),
                    **({"lr": float(f["lr"])} if f.get("lr") is not None else {}),
                },
                window_s=f["window_s"],
            )
            cells[p] = c
    if "ablation" in fams:
        f = config["ablation"]
        for variant in f["variants"]:
            p, c = _cell(
                "ablation",
                [("ablation", variant)],
                "teacher_forced",
                _data(f, f["duration_s"], f["seed"]),
                True,
                ABLATIONS[variant],
                window_s=f["window_s"],
            )
            cells[p] = c
        p, c = _cell(
            "ablation",
            [],
            "teacher_forced",
            _data(f, f["duration_s"], f["seed"]),
            False,
            window_s=f["window_s"],
        )
        cells[p] = c
    if "gate_override" in fams:
        f = config["gate_override"]
        data = _data(f, f["duration_s"], f["seed"])
        for alpha in f["alphas"]:
            forced = None if alpha == "learned" else float(alpha)
            p, c = _cell(
                "gate_override",
                [("alpha", alpha if forced is None else forced)],
                f["mode"],
                data,
                True,
                {**f["ttt"], "gate_override": forced},
                window_s=f["window_s"],
            )
            cells[p] = c
        p, c = _cell("gate_override", [], f["mode"], data, False, window_s=f["window_s"])
        cells[p] = c
    return cells


# Paper Fig. 3c: the TTT target V̂ = Conv1D(X0) W_target with parts switched off (TTTConfig keys).
ABLATIONS = {
    "full": {"target_conv": True, "target_projection": True},
    "no_conv": {"target_conv": False, "target_projection": True},
    "no_target": {"target_conv": True, "target_projection": False},
    "neither": {"target_conv": False, "target_projection": False},
}


def preflight_checks():
    """Each model's identity (its files' content digest), once everything checks out; a model
    is checked with the cells that read it (a family may name its own `model`)."""
    try:
        preflight.check_config(config)
        preflight.check_launcher(config["launcher"], config["device"])
        models = f"{config['cache_dir']}/models"
        identities = {}
        for model, base in dict.fromkeys((c["model"], c["base"]) for c in MATRIX.values()):
            checkpoint_ttt = preflight.check_model(model, base, models)
            cells = {p: c for p, c in MATRIX.items() if (c["model"], c["base"]) == (model, base)}
            preflight.check_matrix(config, cells, checkpoint_ttt)
            identities[model, base] = preflight.model_identity(model, base, models)
        return identities
    except preflight.PreflightError as exc:
        stop(str(exc))


def stop(message):
    """A bad config value: one line naming the key, exit 2, before any job."""
    sys.stderr.write(f"error: {message}\n")
    sys.exit(2)


MATRIX = build_matrix()
MODELS = preflight_checks()
for _spec in MATRIX.values():
    _spec["model_digest"] = MODELS[_spec["model"], _spec["base"]]["model_digest"]


def cell_yaml(cell_path):
    """The resolved cell config as its file holds it: a rule param, so a change (model content
    included) reruns exactly the cells it changes (Snakemake's params rerun trigger)."""
    return yaml.safe_dump(MATRIX[cell_path], sort_keys=False)


def dataset_id(cell_path):
    """Cells reading the same inputs with the same model share one data preparation."""
    c = MATRIX[cell_path]
    key = json.dumps(
        {
            "data": c["data"],
            "model": c["model"],
            "base": c["base"],
            "model_digest": c["model_digest"],
            "cache": c["cache_dir"],
        },
        sort_keys=True,
    )
    return hashlib.sha256(key.encode()).hexdigest()[:12]


DATASETS = {dataset_id(p): p for p in MATRIX}


def as_yaml(value):
    """A config section as the YAML file a job reads: a rule param, so editing the section reruns
    the rule (Snakemake's params rerun trigger)."""
    return yaml.safe_dump(value, sort_keys=False)


# ---- data preparation (data.smk) ---------------------------------------------------------------


def prepare_yaml(dataset):
    c = MATRIX[DATASETS[dataset]]
    return yaml.safe_dump(
        {
            "cell": f"prepare-{dataset}",
            **{k: c[k] for k in FAMILY_KEYS},
            "model_digest": c["model_digest"],
            "data": c["data"],
        }
    )


def built_manifest(w):
    """A family reading a speech set this workflow builds (results/data/speech/...) waits for it."""
    manifest = MATRIX[DATASETS[w.dataset]]["data"].get("manifest")
    return [manifest] if manifest and preflight.speech_set_of(manifest) else []


# Synthesised two-speaker conversations (README "Speech data"): one manifest per set named under
# `speech:` in the config.
SPEECH_SETS = config.get("speech") or {}


def speech_args(w):
    s = SPEECH_SETS[w.speech_set]
    return (
        f"--count {int(s['count'])} --duration {float(s['duration_s'])} --seed {int(s.get('seed', 0))}"
        f" --recur-after {float(s.get('recur_after_s', 10.0))}"
        f" --recur-fraction {float(s.get('recur_fraction', 0.5))}"
        f" --text-part {s.get('text_part', 'all')}"
        f" --unit {s.get('unit', 'sentence')} --vocabulary-size {int(s.get('vocabulary_size', 600))}"
        + (" --recurrence" if s.get("recurrence", False) else "")
    )


# ---- listening panel (panel.smk) ---------------------------------------------------------------


def panel_cells():
    """{system label: cell path} of the panel's TTT-on and TTT-off cells, or {} without a panel."""
    p = config.get("panel")
    if not p or p["family"] not in config["families"]:
        return {}
    family = config[p["family"]]
    if family["mode"] != "generate":
        stop(
            f"config panel.family: {p['family']} runs mode {family['mode']!r}; the "
            "panel needs generate cells (their out.wav); `panel: null` = no panel"
        )
    lengths = family.get("durations_s") or [family["duration_s"]]
    length = p["duration_s"] if p["duration_s"] is not None else max(lengths)
    if length not in lengths:
        stop(f"config panel.duration_s: {length} is not one of {p['family']}'s lengths {lengths}")
    return {
        f"ttt_{on}": cell_path(p["family"], [("duration", length), ("ttt", on)])
        for on in ("on", "off")
    }
