"""Prometheus metrics: rows by outcome, script errors, reads by status, round trips, connection
errors; no entity ids in labels; a standalone endpoint (`metrics_port`) and Feast's own endpoint
under `feast serve --metrics`."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from conftest import apply_repo, online_store_of, user_key, wait_for
from feast.protos.feast.types.Value_pb2 import Value
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from test_feast_cli import FEAST, wait_healthy

from feast_redis_hexpire import metrics
from feast_redis_hexpire.constants import METRICS_FLUSH_SECONDS
from feast_redis_hexpire.exceptions import HexpireError, StoreUnavailableError
from feast_redis_hexpire.local_redis import free_port
from feast_redis_hexpire.synth import streaming_frame

BATCH, STREAM = "user_batch_features", "user_streaming_features"
FIXED_WORDS = {"batch", "streaming", "unknown", "written", "skipped_not_newer", "dropped_expired", "failed",
               "present", "not_found", "outside_max_age", "field_ttl", "no_permission", "refused",
               "read", "write"}  # fmt: skip


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """Changes of the process's metric samples since construction (other tests also count)."""

    def __init__(self) -> None:
        self.before = self.snapshot()

    @staticmethod
    def snapshot() -> dict[tuple, float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in REGISTRY.collect()
            if family.name.startswith("feast_hexpire")
            for s in family.samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return self.snapshot().get(key, 0.0) - self.before.get(key, 0.0)


def test_prometheus_client_is_installed():
    assert metrics.available()


def test_write_outcomes_and_latency(store, r):
    delta = Delta()
    store.materialize_incremental(end_date=datetime.now(UTC))
    assert delta("feast_hexpire_rows_total", view=BATCH, mode="batch", outcome="written") == 20
    assert delta("feast_hexpire_write_batch_seconds_count", mode="batch") >= 1
    assert delta("feast_hexpire_write_batch_seconds_sum", mode="batch") > 0
    online = online_store_of(store)
    view = store.get_feature_view(BATCH)
    old = datetime.now(UTC) - timedelta(days=1)
    online.online_write_batch(store.config, view, [(user_key("u0001"), {}, old, None)], None)
    assert delta("feast_hexpire_rows_total", view=BATCH, mode="batch", outcome="skipped_not_newer") == 1
    # A key of the same name that is not a hash: the server refuses the row.
    r.set("fs:user:clash", "x")
    clash = (user_key("clash"), {"risk_segment": Value(string_val="low")}, datetime.now(UTC), None)
    with pytest.raises(HexpireError):
        online.online_write_batch(store.config, view, [clash], None)
    assert delta("feast_hexpire_rows_total", view=BATCH, mode="batch", outcome="failed") == 1
    assert delta("feast_hexpire_script_errors_total", view=BATCH, error="refused") == 1


def test_dropped_as_expired_by_event_time(make_repo):
    store = apply_repo(make_repo(ttl_from="event", stream_field_ttl_seconds=60))
    delta = Delta()
    frame = streaming_frame(["u0001", "u0002"], random.Random(1), datetime.now(UTC) - timedelta(hours=1))
    store.push("user_events_push", frame)
    assert delta("feast_hexpire_rows_total", view=STREAM, mode="streaming", outcome="dropped_expired") == 2
    frame = streaming_frame(["u0003"], random.Random(2), datetime.now(UTC))
    store.push("user_events_push", frame)
    assert delta("feast_hexpire_rows_total", view=STREAM, mode="streaming", outcome="written") == 1


def test_reads_by_status_and_round_trip(make_repo):
    store = apply_repo(make_repo(freshness_check="flag"))
    store.materialize_incremental(end_date=datetime.now(UTC))
    delta = Delta()
    got = store.get_online_features(
        features=[f"{BATCH}:risk_segment", f"{STREAM}:tx_count_5m"],
        entity_rows=[{"user_id": u} for u in ("u0001", "u0002", "nobody")],
    )
    assert got.to_dict()["risk_segment"][2] is None
    assert delta("feast_hexpire_reads_total", view=BATCH, status="present") == 2
    assert delta("feast_hexpire_reads_total", view=BATCH, status="not_found") == 1
    assert delta("feast_hexpire_reads_total", view=STREAM, status="not_found") == 3
    assert delta("feast_hexpire_read_seconds_count") == 1
    # A value older than the view's ttl (2 days): OUTSIDE_MAX_AGE.
    online = online_store_of(store)
    view = store.get_feature_view(BATCH)
    stale = (
        user_key("old"),
        {"risk_segment": Value(string_val="low")},
        datetime.now(UTC) - timedelta(days=3),
        None,
    )
    online.online_write_batch(store.config, view, [stale], None)
    online.online_read(store.config, view, [user_key("old")])
    assert delta("feast_hexpire_reads_total", view=BATCH, status="outside_max_age") == 1


def test_reads_reach_other_processes_within_the_flush_bound(store):
    """Reads are tallied in the process and written by a thread within METRICS_FLUSH_SECONDS: a
    scrape by another process (Feast's metrics server reads prometheus_client's multiprocess
    files, which a scrape of this process's registry does not flush) sees them without any
    further read or scrape here."""
    files = CollectorRegistry()  # what Feast's metrics process serves: the files only
    MultiProcessCollector(files, path=os.environ["PROMETHEUS_MULTIPROCESS_DIR"])

    def in_files() -> tuple[float, float]:
        labels = {"view": BATCH, "status": "not_found"}
        reads = files.get_sample_value("feast_hexpire_reads_total", labels) or 0.0
        return reads, files.get_sample_value("feast_hexpire_read_seconds_count") or 0.0

    reads, count = in_files()
    for user in ("nobody1", "nobody2", "nobody3"):
        store.get_online_features(features=[f"{BATCH}:risk_segment"], entity_rows=[{"user_id": user}])
    wait_for(
        "the reads in the multiprocess files",
        lambda: in_files() == (reads + 3, count + 3),
        timeout=20 * METRICS_FLUSH_SECONDS,
    )


def test_connection_errors_and_failed_attempts(make_repo, tmp_path, monkeypatch):
    store = apply_repo(make_repo())
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    store.config.online_store.connection_string = dead
    store.config.online_store.retries = 2
    online = online_store_of(store)
    view = store.get_feature_view(BATCH)
    delta = Delta()
    with pytest.raises(Exception):  # noqa: B017 -- redis-py's ConnectionError, after the retries
        online.online_read(store.config, view, [user_key("u0001")])
    assert delta("feast_hexpire_connection_errors_total", op="read") == 1
    assert delta("feast_hexpire_connection_failures_total") == 3  # the attempt and two retries
    row = (user_key("u0001"), {"risk_segment": Value(string_val="low")}, datetime.now(UTC), None)
    with pytest.raises(StoreUnavailableError):
        online.online_write_batch(store.config, view, [row], None)
    assert delta("feast_hexpire_connection_errors_total", op="write") == 1
    assert delta("feast_hexpire_rows_total", view=BATCH, mode="batch", outcome="failed") == 1


def test_labels_hold_no_entity_ids_or_secrets(store):
    delta = Delta()  # only the samples this test moves: other tests' views count in this process too
    store.materialize_incremental(end_date=datetime.now(UTC))
    store.get_online_features(features=[f"{BATCH}:risk_segment"], entity_rows=[{"user_id": "u0001"}])
    views = {v.name for v in store.list_feature_views()}
    moved = [key for key, value in Delta.snapshot().items() if value != delta.before.get(key)]
    values = {v for (_, labels) in moved for k, v in labels if k != "le"}  # le: histogram buckets
    assert values, "no labelled samples"
    assert values <= views | FIXED_WORDS, values - views - FIXED_WORDS


def test_metrics_port_serves_a_standalone_endpoint(make_repo):
    port = free_port()
    store = apply_repo(make_repo(metrics_port=port))
    online_store_of(store)  # the process's client for this config already exists: start it explicitly
    from feast_redis_hexpire import clients

    clients._sync.clear()  # the next client is built for this config (and starts the endpoint)
    store.materialize_incremental(end_date=datetime.now(UTC))
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert f'feast_hexpire_rows_total{{mode="batch",outcome="written",view="{BATCH}"}}' in text
    assert "feast_hexpire_write_batch_seconds_bucket" in text


def test_bad_metrics_port_fails_at_apply_naming_it(make_repo):
    with pytest.raises(Exception) as info:  # noqa: B017 -- Feast wraps pydantic's error
        apply_repo(make_repo(metrics_port=70000))
    assert "metrics_port" in str(info.value)


FEAST_METRICS_PORT = 8000  # fixed in Feast's start_metrics_server


def test_feast_serve_metrics_endpoint_shows_the_store(store, repo, r):
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", FEAST_METRICS_PORT)) == 0:
            pytest.fail(f"port {FEAST_METRICS_PORT} (Feast's metrics endpoint) is taken on this machine")
    # Applied and materialized in this process (the `feast` CLI's apply and materialize runs are
    # tests/test_feast_cli.py's): the only Feast start here is `feast serve`'s own.
    port = free_port()
    log = (repo / "serve.log").open("w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_")}
    process = subprocess.Popen(
        [str(FEAST), "serve", "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--metrics"],
        cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    log.close()
    try:
        store.materialize_incremental(datetime.now(UTC))  # while the server starts up
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        wait_healthy(client, process, repo)
        body = {"features": [f"{BATCH}:risk_segment"], "entities": {"user_id": ["u0001", "nobody"]}}
        assert client.post("/get-online-features", json=body).status_code == 200
        present = f'feast_hexpire_reads_total{{status="present",view="{BATCH}"}} 1.0'

        def scrape() -> str:  # the worker writes its reads' tally within METRICS_FLUSH_SECONDS
            text = httpx.get(f"http://127.0.0.1:{FEAST_METRICS_PORT}/metrics", timeout=30).text
            return text if present in text else ""

        text = wait_for("the read on Feast's metrics endpoint", scrape, timeout=20 * METRICS_FLUSH_SECONDS)
        assert f'feast_hexpire_reads_total{{status="not_found",view="{BATCH}"}} 1.0' in text
        assert "feast_hexpire_read_seconds_count" in text
        assert "feast_feature_server" in text  # Feast's own metrics, same endpoint
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
