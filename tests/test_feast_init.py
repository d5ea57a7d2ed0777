"""Feast's own quickstart: `feast init`'s template (a batch view and a push view declaring the same
features, Map/Json/Struct types, on-demand views, feature services) switched to this store with
the default config, running its own `test_workflow.py` unchanged to the end."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import yaml
from feast.repo_operations import init_repo

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "hexpire_init"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["FEAST_USAGE"] = "False"
    return env


def _sections(stdout: str) -> dict[str, dict[str, str]]:
    """The workflow's printed sections: {title: {feature: printed values}}."""
    sections: dict[str, dict[str, str]] = {}
    title = ""
    for line in stdout.splitlines():
        if line.startswith("--- "):
            title = line.strip("- ").strip()
            sections[title] = {}
        elif "  :  " in line and title:
            name, values = line.split("  :  ", 1)
            sections[title][name.strip()] = values.strip()
    return sections


def test_feast_init_template_runs_its_workflow_on_the_default_config(tmp_path, server, r, monkeypatch):
    env = _env()
    # What `feast init PROJECT` runs (its click command only calls this), here in the test's process:
    # a `feast` CLI start is seconds of Feast import; the workflow below starts the CLI itself.
    monkeypatch.chdir(tmp_path)
    init_repo(PROJECT, "local")
    repo = tmp_path / PROJECT / "feature_repo"
    config_path = repo / "feature_store.yaml"
    config = yaml.safe_load(config_path.read_text())
    assert config["online_store"]["type"] == "sqlite"  # the template as Feast ships it
    # The one-line switch (plus where the server is); every other setting stays the default.
    config["online_store"] = {
        "type": "feast_redis_hexpire.RedisHexpireOnlineStore",
        "connection_string": server.connection_string,
    }
    config_path.write_text(yaml.safe_dump(config))
    workflow = (repo / "test_workflow.py").read_text()
    assert "feast apply" in workflow and "teardown" in workflow and "store.push(" in workflow

    run = subprocess.run(
        [sys.executable, "test_workflow.py"], cwd=repo, env=env, capture_output=True, text=True, timeout=900
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert "Traceback" not in output and "FieldCollisionError" not in output, output[-4000:]

    sections = _sections(run.stdout)
    online = sections["Online features"]
    for name in ("acc_rate", "driver_metadata", "driver_config", "driver_profile", "conv_rate_plus_val1"):
        assert "None" not in online[name] and online[name].startswith("["), (name, online[name])
    before = next(v for k, v in sections.items() if "feature service v3" in k)
    after = sections["Online features again with updated values from a stream push"]
    assert "None" not in before["conv_rate"]
    # The push (driver 1001 only) reached the push view's fields; driver 1002 kept its values.
    pushed = {name: ast.literal_eval(values) for name, values in after.items()}
    assert pushed["conv_rate"][0] == 1.0 and pushed["avg_daily_trips"][0] == 1000
    assert pushed["driver_profile"][0] == {"name": "driver_1001_updated", "age": "30"}
    assert pushed["driver_metadata"][0] == {"vehicle_type": "truck", "rating": "5.0"}
    assert pushed["driver_config"][0] == {"max_distance_km": 500, "preferred_zones": ["north"]}
    assert pushed["conv_rate"][1] == ast.literal_eval(before["conv_rate"])[1]
    # `feast teardown` removed every key it wrote, the field-owner records included.
    assert r.dbsize() == 0
