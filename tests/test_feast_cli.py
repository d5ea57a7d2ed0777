"""The feast CLI end to end on the sample repo: apply, materialize-incremental, materialize with
dates, then `feast serve` over real HTTP (/push, /get-online-features), on both servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from conftest import assert_expiry, write_window

from feast_redis_hexpire.local_redis import free_port
from feast_redis_hexpire.synth import BATCH_FEATURES, STREAMING_FEATURES

FEAST = Path(sys.executable).with_name("feast")
KEY = "fs:user:u0001"


def feast(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the real `feast` CLI in ``repo`` (REDIS_CONNECTION_STRING comes from the environment)."""
    run = subprocess.run(
        [str(FEAST), *args], cwd=repo, env=dict(os.environ), capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, f"feast {' '.join(args)} failed:\n{run.stderr[-3000:]}"
    return run


def start_serve(repo: Path) -> tuple[subprocess.Popen, str]:
    """Start `feast serve` on a free port of an applied repo; returns the process and base URL."""
    port = free_port()
    log = (repo / "serve.log").open("w")
    process = subprocess.Popen(
        [str(FEAST), "serve", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
        cwd=repo, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    log.close()
    return process, f"http://127.0.0.1:{port}"


def wait_healthy(client: httpx.Client, process: subprocess.Popen, repo: Path) -> None:
    deadline = time.monotonic() + 180
    while True:
        assert process.poll() is None, (repo / "serve.log").read_text()[-3000:]
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "feast serve did not come up"
        time.sleep(0.2)


@pytest.fixture
def stop_at_end():
    """Processes to kill if a test fails before stopping them itself."""
    processes: list[subprocess.Popen] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _by_name(payload: dict) -> dict[str, dict]:
    names = payload["metadata"]["feature_names"]
    return dict(zip(names, payload["results"]))


@pytest.mark.timeout(600)  # several `feast` CLI runs and `feast serve` start-up
def test_cli_apply_materialize_serve_push_and_read(repo, r, stop_at_end):
    feast(repo, "apply")
    assert (repo / "data" / "registry.db").exists()
    assert r.dbsize() == 0
    # The server starts while materialization runs (it reads Redis per request; CLI start is slow).
    process, base = start_serve(repo)
    stop_at_end.append(process)

    now = datetime.now(UTC)
    with write_window() as materialized:
        feast(repo, "materialize-incremental", now.isoformat())
    assert r.dbsize() == 20
    assert r.hget(KEY, "_ts:user_batch_features") is not None
    assert_expiry([r.pexpiretime(KEY)], materialized, 86_400, KEY)
    batch_values = r.hgetall(KEY)

    # Explicit dates over the same rows: nothing changes but every key TTL is re-pinned.
    r.expire(KEY, 60)
    start = (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    end = (now + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")
    with write_window() as materialized:
        feast(repo, "materialize", start, end)
    assert r.hgetall(KEY) == batch_values
    assert_expiry([r.pexpiretime(KEY)], materialized, 86_400, f"{KEY} re-pinned")

    client = httpx.Client(base_url=base, timeout=30)
    wait_healthy(client, process, repo)
    event = datetime.now(UTC).replace(microsecond=0)
    push = {
        "push_source_name": "user_events_push",
        "df": {
            "user_id": ["u0001", "u0002"],
            "event_timestamp": [event.isoformat(), event.isoformat()],
            "last_login_ts": [1_700_000_000_000, 1_700_000_000_001],
            "last_device_id": ["ios-9f02", "web-chrome-77"],
            "tx_count_5m": [4, 0],
            "failed_logins_15m": [1, 0],
            "session_country": ["GB", "US"],
        },
        "to": "online",
    }
    with write_window() as pushed:
        response = client.post("/push", json=push)
    assert response.status_code == 200, response.text
    assert r.hget(KEY, "last_device_id") == b"ios-9f02"
    assert_expiry(r.hpexpiretime(KEY, *STREAMING_FEATURES, "_ts:user_streaming_features"), pushed, 300, KEY)
    assert set(r.httl(KEY, *BATCH_FEATURES)) == {-1}

    response = client.post(
        "/get-online-features",
        json={
            "entities": {"user_id": ["u0001", "u0002", "nobody"]},
            "features": [
                "user_batch_features:risk_segment",
                "user_batch_features:avg_amount_30d",
                "user_streaming_features:tx_count_5m",
                "user_streaming_features:last_device_id",
            ],
        },
    )
    assert response.status_code == 200, response.text
    results = _by_name(response.json())
    assert results["risk_segment"]["values"][:2] == [
        r.hget(KEY, "risk_segment").decode(),
        r.hget("fs:user:u0002", "risk_segment").decode(),
    ]
    assert results["avg_amount_30d"]["values"][0] == float(r.hget(KEY, "avg_amount_30d"))
    assert results["tx_count_5m"]["values"][:2] == [4, 0]
    assert results["last_device_id"]["values"][:2] == ["ios-9f02", "web-chrome-77"]
    for name in ("risk_segment", "avg_amount_30d", "tx_count_5m", "last_device_id"):
        assert results[name]["statuses"] == ["PRESENT", "PRESENT", "NOT_FOUND"], name
        assert results[name]["values"][2] is None

    # A feature service over HTTP as well.
    response = client.post(
        "/get-online-features", json={"entities": {"user_id": ["u0001"]}, "feature_service": "fraud_model"}
    )
    assert response.status_code == 200, response.text
    results = _by_name(response.json())
    assert results["failed_logins_15m"]["values"] == [1]
    assert results["tx_count_7d"]["statuses"] == ["PRESENT"]

    # Clean stop: SIGTERM, and the server exits by itself.
    client.close()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=30)
    assert code == 0
