"""Issue 25 items 4 and 6: the workflow config's schema errors are one line naming the key path
and what is allowed (exit 2, before any job), the model errors name the key that is wrong, and
`--config` values arrive typed as the schema wants them (Snakemake reads them as YAML strings)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from ttt.launch import schema
from ttt.launch.preflight import PreflightError, check_model

REPO = Path(__file__).resolve().parent.parent
SCHEMA = schema.load_schema(REPO / "workflow" / "schemas" / "config.schema.yaml")


@pytest.fixture
def config():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def error_of(config) -> str:
    with pytest.raises(schema.SchemaError) as info:
        schema.check(config, SCHEMA)
    message = str(info.value)
    assert "\n" not in message
    return message


# each: (change to the default config, the one line expected)
CASES = {
    "top-level typo": (lambda c: c.update(famlies=c.pop("families")),
                       "config famlies: unknown key (did you mean 'families'?); allowed keys: "
                       "ablation, asr, base, "),
    "nested typo": (lambda c: c["short_form"].update(windw_s=4),
                    "config short_form.windw_s: unknown key (did you mean 'window_s'?); allowed keys: "
                    "duration_s, manifest, mode, seed, snapshot_every, window_s"),
    "enum": (lambda c: c.update(dtype="float64"),
             "config dtype: 'float64' is not one of float32, bfloat16, float16"),
    "type in a list": (lambda c: c["lr_grid"].update(lrs=[0.1, "abc"]),
                       "config lr_grid.lrs[1]: must be a number, got 'abc'"),
    "minimum": (lambda c: c["short_form"].update(window_s=0),
                "config short_form.window_s: must be > 0, got 0"),
    "required": (lambda c: c["short_form"].pop("seed"),
                 "config short_form: missing key 'seed'; required: mode, duration_s, seed, window_s, "
                 "snapshot_every"),
    "anyOf": (lambda c: c["gate_override"].update(alphas=[1.0, "learnt"]),
              "config gate_override.alphas[1]: must be a number or 'learned', got 'learnt'"),
    "family name": (lambda c: c.update(families=["short_form", "shortform"]),
                    "config families[1]: 'shortform' is not one of short_form, long_form, "),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_schema_error_is_one_line_naming_key_and_allowed_values(config, case):
    change, expected = CASES[case]
    change(config)
    assert error_of(config).startswith(expected)


def test_the_default_config_passes(config):
    schema.check(config, SCHEMA)


def test_command_line_strings_are_typed_as_the_schema_wants(config):
    """What Snakemake's --config parser hands over (BaseLoader: every nested value a string)."""
    config.update(ttt={"lr": "0.0123", "layers": ["1", "3"], "delta_clip_fro_norm": "null",
                       "target_conv": "false", "variant": "inplace", "chunk_size": "8"},
                  compare_with="null", strict="true", panel="null",
                  short_form={**config["short_form"], "duration_s": "12", "window_s": "2.5"},
                  gate_override={**config["gate_override"], "alphas": ["1e-5", "learned", "1"],
                                 "model": "null", "ttt": {"lr": "0.1", "variant": "ttt_mlp"}},
                  lr_grid={**config["lr_grid"], "lrs": ["1.0e-4", "0.01"], "chunks": ["8"]},
                  verdicts={"cost": {"families": "null", "max_regression": "0.05"}})
    schema.coerce(config, SCHEMA)
    assert config["ttt"] == {"lr": 0.0123, "layers": [1, 3], "delta_clip_fro_norm": None,
                             "target_conv": False, "variant": "inplace", "chunk_size": 8}
    assert config["compare_with"] is None and config["strict"] is True and config["panel"] is None
    assert config["short_form"]["duration_s"] == 12 and config["short_form"]["window_s"] == 2.5
    assert config["gate_override"]["alphas"] == [1e-5, "learned", 1]
    assert config["gate_override"]["model"] is None and config["gate_override"]["ttt"]["lr"] == 0.1
    assert config["lr_grid"]["lrs"] == [1e-4, 0.01] and config["lr_grid"]["chunks"] == [8]
    assert config["verdicts"]["cost"] == {"families": None, "max_regression": 0.05}
    schema.check(config, SCHEMA)
    config["short_form"]["mode"] = "true"  # a string key keeps a string
    assert schema.coerce(config, SCHEMA)["short_form"]["mode"] == "true"


def lora_only(tmp_path) -> Path:
    """moshi-finetune LoRA adapters without their base model."""
    ckpt = tmp_path / "lora"
    ckpt.mkdir()
    save_file({"transformer.layers.0.x.lora_A.weight": torch.zeros(2, 2)}, str(ckpt / "lora.safetensors"))
    (ckpt / "config.json").write_text("{}")
    return ckpt


def test_model_errors_name_the_key_that_is_wrong(tmp_path):
    ckpt = lora_only(tmp_path)
    with pytest.raises(PreflightError, match=rf"^config base: {ckpt}: LoRA adapters need the base"):
        check_model(str(ckpt), None, tmp_path)  # the missing key is base, not model
    with pytest.raises(PreflightError, match=r"^config gate_override\.base: /nowhere: no such"):
        check_model(str(ckpt), "/nowhere", tmp_path, "gate_override.model")
    with pytest.raises(PreflightError, match=r"^config gate_override\.model: /nowhere: no such"):
        check_model("/nowhere", None, tmp_path, "gate_override.model")


def snakemake(workdir: Path, *args):
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg.update(cache_dir=str(workdir / "cache"), launcher=str(REPO / "profiles/local/submitit.yaml"),
               families=["short_form"])
    (workdir / "config").mkdir(exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "NO_TORCH_COMPILE": "1"}
    return subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--snakefile",
                           str(REPO / "workflow" / "Snakefile"), "--directory", str(workdir), "-n",
                           "-p", *args], capture_output=True, text=True, env=env, timeout=300)


def test_snakemake_config_override_arrives_typed(tmp_path):
    """Snakemake's own --config parsing: a nested number reaches the cells as a number (was:
    "config ttt.lr: must be a finite number >= 0, got '0.0123'")."""
    done = snakemake(tmp_path, "--config", "ttt={lr: 0.0123, start_layer: 3}")
    assert done.returncode == 0, done.stderr[-2000:]
    (cell,) = [block for block in done.stdout.split("\n\n")
               if "output: results/cells/short_form/duration~8/ttt~on/cell.yaml" in block]
    assert "  lr: 0.0123\n" in cell and "  start_layer: 3\n" in cell, cell


def test_snakemake_schema_error_is_one_line(tmp_path):
    """A top-level typo printed the whole schema (1,984 lines, exit 1)."""
    done = snakemake(tmp_path, "--config", "famlies=[short_form]")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "rror" in line]
    assert errors == ["error: config famlies: unknown key (did you mean 'families'?); allowed keys: "
                      + ", ".join(sorted(SCHEMA["properties"]))], done.stderr[-3000:]
    assert len(done.stderr.splitlines()) <= 3 and "run_cell" not in done.stdout
