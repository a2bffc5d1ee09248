"""The workflow passes Snakemake's linter and snakefmt (issue 17 item 5): every rule logs to a file,
names its software environment, keeps its Python in common.smk or a script, and the files are
formatted as snakefmt writes them (version pinned in pyproject.toml)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WORKFLOW = REPO / "workflow"


def every_rule_name() -> set[str]:
    """Every rule the workflow files define, conditional ones included."""
    text = "".join(p.read_text() for p in [WORKFLOW / "Snakefile", *WORKFLOW.glob("rules/*.smk")])
    return set(re.findall(r"^\s*rule (\w+):", text, flags=re.M))


def test_snakemake_lint_is_clean_on_every_rule(tmp_path):
    # A configuration that defines every rule: the panel's ratings rule exists only once ratings
    # are in, so one is planted.
    shutil.copytree(REPO / "config", tmp_path / "config")
    cfg = yaml.safe_load((tmp_path / "config" / "config.yaml").read_text())
    cfg.update(launcher=str(REPO / "profiles" / "local" / "submitit.yaml"),
               cache_dir=str(tmp_path / "cache"))
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    ratings = tmp_path / "results" / "listening" / cfg["panel"]["name"] / "ratings"
    ratings.mkdir(parents=True)
    (ratings / "rater.json").write_text(json.dumps({"ratings": []}))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "NO_TORCH_COMPILE": "1"}
    cmd = [str(BIN / "snakemake"), "--snakefile", str(WORKFLOW / "Snakefile"),
           "--directory", str(tmp_path)]

    listed = subprocess.run(cmd + ["--list-rules"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert set(listed.stdout.split()) >= every_rule_name(), "a rule is not defined here, so unlinted"

    lint = subprocess.run(cmd + ["--lint"], capture_output=True, text=True, env=env, timeout=300)
    assert lint.returncode == 0, lint.stdout[-4000:] + lint.stderr[-4000:]


def test_snakefmt_leaves_every_workflow_file_unchanged():
    done = subprocess.run([str(BIN / "snakefmt"), "--check", "--diff", str(WORKFLOW)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    files = 1 + len(list(WORKFLOW.glob("rules/*.smk")))  # the Snakefile and every rule file
    assert f"All {files} file(s) would be left unchanged" in done.stderr, done.stderr


def test_config_readme_names_every_key_and_real_sections():
    """config/README.md (the template's pointer to the schema) lists every top-level key of
    the schema, and every docs/ section it links to exists."""
    from test_docs import broken_links, links
    page = REPO / "config" / "README.md"
    doc = page.read_text()
    schema = yaml.safe_load((WORKFLOW / "schemas" / "config.schema.yaml").read_text())
    missing = [k for k in schema["properties"] if f"`{k}`" not in doc]
    assert not missing, f"config/README.md does not name {missing}"
    cited = [t for t in links(page) if t.startswith("../docs/")]
    assert len(cited) > 5 and not broken_links(page), broken_links(page)
