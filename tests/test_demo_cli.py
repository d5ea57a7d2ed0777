"""The demo's command lines as subprocesses: build-features, inspect and the demo server itself."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
from conftest import Window, assert_expiry, cli_main, write_window

from feast_redis_hexpire.demo import repo as demo_repo
from feast_redis_hexpire.demo.server import bind
from feast_redis_hexpire.local_redis import LocalRedis, free_port
from feast_redis_hexpire.synth import batch_rows

CLI = [sys.executable, "-m", "feast_redis_hexpire.cli"]
LOADS: list[Window] = []  # the time bounds of the `loaded` fixture's build-features run


@pytest.fixture(scope="module")
def loaded(redis_server, tmp_path_factory) -> Path:
    """A demo repo with 4000 users built by the CLI (seed 3, TTL 900 s)."""
    redis_server.client().flushall()
    repo = demo_repo.write_repo(tmp_path_factory.mktemp("cli") / "repo", redis_server.connection_string)
    with write_window() as load:
        done = cli("build-features", "--count", "4000", "--ttl-seconds", "900", "--seed", "3",
                   "--repo", str(repo), "--redis", redis_server.connection_string)  # fmt: skip
    LOADS.append(load)
    assert done.returncode == 0, done.stderr
    assert "Materialized 4000 user(s) with a 900s key TTL" in done.stdout
    assert "4000/4000" in done.stderr and "100%" in done.stderr  # the progress bar of a large load
    return repo


@pytest.fixture
def r(redis_server):
    client = redis_server.client()
    yield client
    client.close()


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def one_line_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.timeout(600)  # the first test pays for the module's 4000-user build-features
def test_build_features_writes_the_seed_rows(loaded, r):
    assert r.dbsize() == 4000
    assert_expiry([r.pexpiretime("fs:user:u4000")], LOADS[-1], 900, "u4000")
    expected = batch_rows(4000, 3).set_index("user_id")
    for user in ("u0001", "u0017", "u4000"):
        stored = r.hgetall(f"fs:user:{user}")
        assert stored[b"country_iso"].decode() == expected.loc[user, "country_iso"]
        assert float(stored[b"avg_amount_30d"]) == expected.loc[user, "avg_amount_30d"]


@pytest.mark.parametrize(
    "args, words",
    [
        # One subprocess each is slow; the other bad values are checked in process (test_demo_worker).
        (["--count", "-1"], ["--count", "between 1 and"]),
        (["--ttl-seconds", "0"], ["--ttl-seconds"]),
    ],
)
def test_build_features_bad_values_exit_nonzero_and_change_nothing(loaded, redis_server, r, args, words):
    before = {k: (r.pexpiretime(k), r.hgetall(k)) for k in r.keys()}  # absolute expiry: not clamped
    done = cli("build-features", "--repo", str(loaded), "--redis", redis_server.connection_string, *args)
    one_line_error(done, *words)
    assert "Materialized" not in done.stdout
    assert {k: (r.pexpiretime(k), r.hgetall(k)) for k in r.keys()} == before


def test_build_features_unreachable_server(loaded):
    one_line_error(cli("build-features", "--repo", str(loaded), "--redis", f"127.0.0.1:{free_port()}"),
                   "cannot reach Redis")  # fmt: skip


def test_inspect_cli(loaded, redis_server, r, capsys):
    env_conn = redis_server.connection_string
    done = cli("inspect", "user", "u0002", "--repo", str(loaded))
    assert done.returncode == 0, done.stderr
    assert "fs:user:u0002" in done.stdout and "(key-level)" in done.stdout
    assert "risk_segment" in done.stdout and "no TTL" in done.stdout
    assert r.hget("fs:user:u0002", "risk_segment").decode() in done.stdout
    code, out = cli_main(capsys, "inspect", "user", "u0002", "--repo", str(loaded), "--json")  # in process
    assert code == 0
    report = json.loads(out)
    fields = {f["field"]: f for f in report["fields"]}
    assert fields["tx_count_5m"]["ttl"] == "missing" and fields["country_iso"]["ttl_ms"] == -1
    assert 0 < report["key_ttl_ms"] <= 900_000 and env_conn
    code, out = cli_main(capsys, "inspect", "user", "u9999", "--repo", str(loaded))
    assert code == 3 and "missing" in out


def test_demo_port_in_use_is_a_clear_error_and_deletes_nothing(loaded, redis_server, r):
    before = {k: r.hgetall(k) for k in r.keys()}
    taken = bind("127.0.0.1", 0)
    try:
        port = str(taken.getsockname()[1])
        done = cli("demo", "--port", port, "--redis", redis_server.connection_string,
                   "--work-dir", str(loaded), timeout=60)  # fmt: skip
    finally:
        taken.close()
    one_line_error(done, "already in use", port)
    assert {k: r.hgetall(k) for k in r.keys()} == before


def test_demo_glob_only_prefix_is_refused_before_anything_starts(loaded, redis_server, r):
    before = r.dbsize()
    one_line_error(cli("demo", "--key-prefix", "*", "--redis", redis_server.connection_string), "key_prefix")
    assert r.dbsize() == before


def start_demo(*args: str) -> tuple[subprocess.Popen, str, list[str]]:
    """Run ``feast-hexpire demo`` until it prints its URL; returns the process, URL and output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([*CLI, "demo", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env)  # fmt: skip
    lines: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if "Demo listening on " in line:
            return process, line.split("Demo listening on ")[1].split()[0], lines
    process.wait(10)
    raise AssertionError("demo did not start:\n" + "".join(lines))


def test_demo_no_reset_keeps_data(loaded, redis_server, r):
    before = {k: r.hgetall(k) for k in r.keys()}
    process, url, _ = start_demo("--port", str(free_port()), "--redis", redis_server.connection_string,
                                 "--work-dir", str(loaded), "--no-reset", "--paused")  # fmt: skip
    try:
        state = httpx.get(url + "/state", timeout=30).json()
        assert state["users"] == 4000 and state["population"] == 4000
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    assert {k: r.hgetall(k) for k in r.keys()} == before


def test_one_command_starts_everything_and_ctrl_c_stops_it(tmp_path):
    port = free_port()
    process, url, lines = start_demo("--port", str(port), "--users", "20", "--work-dir", str(tmp_path / "w"))
    try:
        assert url == f"http://127.0.0.1:{port}"
        local = next(x for x in lines if "Started a local redis server at" in x).rsplit(":", 1)[1].strip()
        state = httpx.get(url + "/state", timeout=30).json()
        assert state["users"] == 20 and state["worker"]["running"] is True
        deadline = time.monotonic() + 30
        while httpx.get(url + "/state", timeout=30).json()["worker"]["writes"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)
    assert process.returncode == 0, out
    assert "Traceback" not in out and "Demo stopped." in out
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis(port=int(local), socket_connect_timeout=1).ping()  # the local Redis is gone
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/state", timeout=5)


def test_demo_keeps_the_password_out_of_its_files(tmp_path):
    """The connection string (password included) reaches Feast through the environment; the
    demo's feature_store.yaml names the variable, is readable by its owner only, and no file the
    demo writes holds the password, during the run or after it."""
    secret = "s3cret-" + os.urandom(6).hex()
    with LocalRedis("redis") as server:
        server.client().config_set("requirepass", secret)
        work = tmp_path / "work"
        connection = f"{server.connection_string},password={secret}"
        process, url, lines = start_demo("--port", str(free_port()), "--users", "5", "--work-dir", str(work),
                                         "--redis", connection)  # fmt: skip
        try:
            assert httpx.get(url + "/state", timeout=30).json()["users"] == 5
            yml = work / "feature_store.yaml"
            assert "${FEAST_HEXPIRE_DEMO_REDIS}" in yml.read_text()
            assert stat.S_IMODE(yml.stat().st_mode) == 0o600
            during = {p: p.read_bytes() for p in work.rglob("*") if p.is_file()}
        finally:
            process.send_signal(signal.SIGINT)
            out, _ = process.communicate(timeout=30)
        assert process.returncode == 0, out
    assert during and not [p for p, data in during.items() if secret.encode() in data]
    assert not [p for p in work.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert secret not in "".join(lines) + out
