"""Launchers leave nothing behind: `feast-hexpire local-redis`, `feast-hexpire demo` and the
topology classes stop their servers and remove their temporary directories on SIGINT, SIGTERM
and SIGHUP, and the reaper does it when the launcher is SIGKILLed. A taken port is a one-line
error that starts and leaves nothing.

Every launcher runs with TMPDIR pointing at a directory of its own, so "nothing left" is checked
on exactly what it created (other tests may run servers at the same time)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import pytest
import redis

from feast_redis_hexpire.local_redis import LocalRedis, free_port

CLI = [sys.executable, "-m", "feast_redis_hexpire.cli"]
SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP", "SIGKILL"]


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.05)


def gone(pid: int) -> bool:
    """No such process, or only a zombie nobody has reaped yet (it holds no port, no files)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def launch(args: list[str], tmp: Path, ready: str) -> tuple[subprocess.Popen, list[str]]:
    """Start a CLI with TMPDIR=tmp and read its output until a line contains ``ready``."""
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env)  # fmt: skip
    lines: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if ready in line:
            return process, lines
    process.wait(30)
    raise AssertionError(f"{args[0]} did not start:\n" + "".join(lines))


def server_of(port: int) -> tuple[int, Path]:
    """(pid, data dir) of the server answering on ``port``."""
    with redis.Redis(port=port, socket_timeout=5) as client:
        return int(client.info("server")["process_id"]), Path(client.config_get("dir")["dir"])


def stop_and_check(process: subprocess.Popen, sig: str, server_pid: int, data_dir: Path, tmp: Path) -> str:
    process.send_signal(getattr(signal, sig))
    out = process.communicate(timeout=60)[0]
    if sig == "SIGKILL":
        assert process.returncode == -signal.SIGKILL
    else:
        assert process.returncode == 0, out
        assert "Traceback" not in out, out
    wait_for(f"server pid {server_pid} to exit after {sig}", lambda: gone(server_pid))
    wait_for(f"{data_dir} to be removed after {sig}", lambda: not data_dir.exists())
    assert data_dir.parent == tmp
    wait_for(f"{tmp} to be empty", lambda: not any(p.name.startswith("hexpire-") for p in tmp.iterdir()))
    return out


@pytest.mark.parametrize("sig", SIGNALS)
@pytest.mark.parametrize("kind", ["redis", "valkey"])
def test_local_redis_cleans_up_on_every_stop_signal(tmp_path, kind, sig):
    tmp = tmp_path / "tmp"
    process, lines = launch(["local-redis", "--kind", kind], tmp, "listening on")
    port = int(lines[-1].rsplit(":", 1)[1])
    pid, data_dir = server_of(port)
    assert data_dir.exists()
    stop_and_check(process, sig, pid, data_dir, tmp)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGKILL"])
def test_demo_cleans_up_on_every_stop_signal(tmp_path, sig):
    tmp = tmp_path / "tmp"
    work = tmp_path / "work"
    process, lines = launch(
        ["demo", "--port", str(free_port()), "--users", "5", "--paused", "--work-dir", str(work)],
        tmp, "Demo listening on",
    )  # fmt: skip
    started = next(x for x in lines if "Started a local redis server at" in x)
    pid, data_dir = server_of(int(started.rsplit(":", 1)[1]))
    out = stop_and_check(process, sig, pid, data_dir, tmp)
    if sig != "SIGKILL":
        assert "Demo stopped." in out


@pytest.mark.timeout(240)
def test_topologies_of_a_killed_parent_do_not_outlive_it(tmp_path):
    """A script that started a sentinel setup and a cluster is SIGKILLed: every server and
    sentinel stops and both data dirs go (the reaper), without any code of the script running."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    script = textwrap.dedent("""
        import sys
        from feast_redis_hexpire.topology import LocalCluster, LocalSentinel
        sentinel = LocalSentinel("redis").start()
        cluster = LocalCluster("valkey", masters=3, replicas_per_master=0).start()
        ports = [s.port for s in sentinel.servers] + [s.port for s in sentinel.sentinels]
        ports += [n.port for n in cluster.nodes]
        print(" ".join(map(str, ports)), flush=True)
        sys.stdin.read()  # until killed
    """)
    env = {**os.environ, "TMPDIR": str(tmp)}
    process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        assert process.stdout is not None
        ports = [int(p) for p in process.stdout.readline().split()]
        assert len(ports) == 8, ports
        pids = [pid_of(port) for port in ports]
        assert len([p for p in tmp.iterdir() if p.name.startswith("hexpire-")]) == 2
    finally:
        process.kill()
        process.wait(30)
    for pid in pids:
        wait_for(f"pid {pid} to exit", lambda pid=pid: gone(pid))
    wait_for(f"{tmp} to be empty", lambda: not any(tmp.iterdir()))


def pid_of(port: int) -> int:
    """The pid of the server or sentinel on ``port``."""
    with redis.Redis(port=port, socket_timeout=5) as client:
        return int(client.info("server")["process_id"])


# ---- item: a taken port ----


def one_line_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0], lines[0]


def run_cli(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("kind", ["redis", "valkey"])
def test_local_redis_on_a_port_taken_by_another_redis(tmp_path, kind):
    with LocalRedis("redis") as other:
        other.client().set("mine", "1")
        done = run_cli(tmp_path / "tmp", "local-redis", "--kind", kind, "--port", str(other.port))
        one_line_error(done, f"port {other.port}", "already in use")
        assert other.process is not None and other.process.poll() is None
        assert other.client().get("mine") == b"1"  # the other server is untouched
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("kind", ["redis", "valkey"])
def test_local_redis_on_a_port_taken_by_something_else(tmp_path, kind):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(tmp_path / "tmp", "local-redis", "--kind", kind, "--port", str(port))
    one_line_error(done, f"port {port}", "already in use")
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_server_on_a_taken_port_is_not_mistaken_for_ours(monkeypatch):
    """The race the port check cannot close (the port is taken between check and bind): the
    readiness probe accepts only the server whose INFO process_id is the one we started."""
    import feast_redis_hexpire.local_redis as local_redis

    with LocalRedis("redis") as other:
        ours = LocalRedis("valkey", port=other.port)
        ours_dir = ours.data_dir
        checks = iter([True])  # the first check passes, as if the port were free at that moment
        original = local_redis.port_is_free
        monkeypatch.setattr(local_redis, "port_is_free", lambda port: next(checks, None) or original(port))
        with pytest.raises(OSError, match=f"port {other.port} on 127.0.0.1 is already in use"):
            ours.start()
        assert ours.process is None and not ours_dir.exists()
        assert other.client().ping()
