# Config validation and the matrix: every cell's path and its cell config. Before any job is
# planned, every cell config goes through the validators the cell itself uses and the model is
# checked (ttt/launch/preflight.py); a bad value stops the run with one line naming the key.
import hashlib
import json
import os
import sys

from snakemake.utils import validate

validate(config, "../schemas/config.schema.yaml")

# The code beside this Snakefile, for the DAG build here and for every `python -m ttt` job.
sys.path.insert(0, workflow.basedir)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [workflow.basedir] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
from ttt.launch import preflight  # noqa: E402
from ttt.report.tables import cell_path, cell_value  # noqa: E402  (the reports parse what it writes)

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
    ttt = {**(config.get("ttt") or {}), **(ttt_extra or {})} if ttt_on else {"enabled": False}
    path = cell_path(family, [*path_params, ("ttt", "on" if ttt_on else "off")])
    return path, {**base, "cell": path, "family": family, "mode": mode, "data": data,
                  "ttt": ttt or None, **extra}


def build_matrix():
    cells = {}
    fams = config["families"]
    if "short_form" in fams:
        f = config["short_form"]
        for on in (True, False):
            p, c = _cell("short_form", [("duration", f["duration_s"])], f["mode"],
                         _data(f, f["duration_s"], f["seed"]), on, window_s=f["window_s"],
                         snapshot_every=f["snapshot_every"])
            cells[p] = c
    if "long_form" in fams:
        f = config["long_form"]
        for d in f["durations_s"]:
            for on in (True, False):
                p, c = _cell("long_form", [("duration", d)], f["mode"], _data(f, d, f["seed"]), on,
                             window_s=f["window_s"], snapshot_every=f["snapshot_every"])
                cells[p] = c
    if "yarn" in fams:
        f = config["yarn"]
        for tokens in f["tokens"]:
            yarn = {"scale": tokens / f["original_context"], "original_context": f["original_context"],
                    "context": tokens}
            duration = tokens / 12.5 + 1
            for on in (True, False):
                p, c = _cell("yarn", [("tokens", tokens)], "teacher_forced",
                             _data(f, duration, f["seed"]), on, yarn=yarn, ab=on,
                             window_s=f["window_s"])
                cells[p] = c
    if "lr_grid" in fams:
        f = config["lr_grid"]
        for lr in f["lrs"]:
            for chunk in f["chunks"]:
                p, c = _cell("lr_grid", [("lr", float(lr)), ("chunk", chunk)], "teacher_forced",
                             _data(f, f["duration_s"], f["seed"]), True,
                             {"lr": float(lr), "chunk_size": chunk,
                              "delta_clip_fro_norm": f["delta_clip_fro_norm"]},
                             window_s=f["window_s"], clip_saturation=f["clip_saturation"])
                cells[p] = c
        p, c = _cell("lr_grid", [], "teacher_forced", _data(f, f["duration_s"], f["seed"]), False,
                     window_s=f["window_s"])
        cells[p] = c
    if "regression" in fams:
        f = config["regression"]
        p, c = _cell("regression", [], "teacher_forced", _data(f, f["duration_s"], f["seed"]), False,
                     check_upstream=True, window_s=f["window_s"])
        cells[p] = c
    if "telemetry" in fams:
        f = config["telemetry"]
        for on in (True, False):
            p, c = _cell("telemetry", [("tau", float(f["delta_clip_fro_norm"]))], "teacher_forced",
                         _data(f, f["duration_s"], f["seed"]), on,
                         {"delta_clip_fro_norm": float(f["delta_clip_fro_norm"]),
                          **({"lr": float(f["lr"])} if f.get("lr") is not None else {})},
                         window_s=f["window_s"])
            cells[p] = c
    if "ablation" in fams:
        f = config["ablation"]
        for variant in f["variants"]:
            p, c = _cell("ablation", [("ablation", variant)], "teacher_forced",
                         _data(f, f["duration_s"], f["seed"]), True, ABLATIONS[variant],
                         window_s=f["window_s"])
            cells[p] = c
        p, c = _cell("ablation", [], "teacher_forced", _data(f, f["duration_s"], f["seed"]), False,
                     window_s=f["window_s"])
        cells[p] = c
    if "gate_override" in fams:
        f = config["gate_override"]
        data = _data(f, f["duration_s"], f["seed"])
        for alpha in f["alphas"]:
            forced = None if alpha == "learned" else float(alpha)
            p, c = _cell("gate_override", [("alpha", alpha if forced is None else forced)], f["mode"],
                         data, True, {**f["ttt"], "gate_override": forced}, window_s=f["window_s"])
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
    """The model's identity (its files' content digest), once everything checks out."""
    try:
        preflight.check_config(config)
        preflight.check_launcher(config["launcher"])
        models = f"{config['cache_dir']}/models"
        checkpoint_ttt = preflight.check_model(config["model"], config["base"], models)
        preflight.check_matrix(config, MATRIX, checkpoint_ttt)
        return preflight.model_identity(config["model"], config["base"], models)
    except preflight.PreflightError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)


MATRIX = build_matrix()
MODEL = preflight_checks()
for _cell in MATRIX.values():
    _cell["model_digest"] = MODEL["model_digest"]


def cell_yaml(cell_path):
    """The resolved cell config as its file holds it: a rule param, so a change (model content
    included) reruns exactly the cells it changes (Snakemake's params rerun trigger)."""
    import yaml

    return yaml.safe_dump(MATRIX[cell_path], sort_keys=False)


def dataset_id(cell_path):
    """Cells reading the same inputs with the same model share one data preparation."""
    c = MATRIX[cell_path]
    key = json.dumps({"data": c["data"], "model": c["model"], "base": c["base"],
                      "model_digest": c["model_digest"],
                      "cache": c["cache_dir"]}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


DATASETS = {dataset_id(p): p for p in MATRIX}
