"""Opt-in durable acknowledgements (issue 11.1): WAIT / WAITAOF after each write batch on its
connection; rows not acknowledged in time are reported as failed, naming the rows and the server."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Iterator

import pytest
from conftest import apply_repo, online_store_of, user_key
from feast.protos.feast.types.Value_pb2 import Value

from feast_redis_hexpire.exceptions import StoreUnavailableError
from feast_redis_hexpire.local_redis import LocalRedis

BATCH = "user_batch_features"


@pytest.fixture
def replica(server: LocalRedis, r: Any) -> Iterator[LocalRedis]:
    """One replica of the test server, online."""
    with LocalRedis(server.kind, args=["--replicaof", "127.0.0.1", str(server.port)]) as running:
        deadline = time.monotonic() + 60
        while r.info("replication").get("slave0", {}).get("state") != "online":
            assert time.monotonic() < deadline, "the replica did not come online"
            time.sleep(0.05)
        yield running
        assert running.process is not None
        os.kill(running.process.pid, signal.SIGCONT)  # in case a test stopped it


def rows(users: list[str], segment: str) -> list[Any]:
    now = datetime.now(UTC)
    return [(user_key(u), {"risk_segment": Value(string_val=segment)}, now, None) for u in users]


def test_writes_wait_for_the_replica_and_fail_loudly_without_it(make_repo, replica, r):
    store = apply_repo(make_repo(ack_replicas=1, ack_timeout_seconds=0.5, write_batch_size=2))
    store.materialize_incremental(end_date=datetime.now(UTC))
    assert r.dbsize() == 20
    assert replica.client().dbsize() == 20  # acknowledged: the replica has every row
    online = online_store_of(store)
    view = store.get_feature_view(BATCH)
    assert replica.process is not None
    os.kill(replica.process.pid, signal.SIGSTOP)  # the replica stops acknowledging
    try:
        with pytest.raises(StoreUnavailableError) as info:
            online.online_write_batch(store.config, view, rows(["a", "b", "c"], "late"), None)
        text = str(info.value)
        assert "rows 0..1 were written to" in text and replica.connection_string not in text
        assert f"127.0.0.1:{r.connection_pool.connection_kwargs['port']}" in text
        assert "only 0 of 1 replica(s)" in text and "no row was acknowledged" in text
        assert "not acknowledged: fs:user:a, fs:user:b;" in text  # each row named by its entity
        assert r.hget("fs:user:a", "risk_segment") == b"late"  # written, but not acknowledged
        assert not r.exists("fs:user:c")  # the next batch was not sent
        with pytest.raises(StoreUnavailableError, match="acknowledged by only 0 of 1"):
            asyncio.run(online.online_write_batch_async(store.config, view, rows(["d"], "late"), None))
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while True:  # acknowledged again once the replica catches up
        try:
            online.online_write_batch(store.config, view, rows(["a", "b", "c"], "later"), None)
            break
        except StoreUnavailableError:
            assert time.monotonic() < deadline, "writes were not acknowledged after the replica resumed"
    assert replica.client().hget("fs:user:c", "risk_segment") == b"later"


def _aof_on(persistence: dict) -> bool:
    """AOF enabled at run time has finished its first rewrite (none running or scheduled)."""
    return bool(persistence.get("aof_enabled")) and not any(
        persistence.get(k) for k in ("aof_rewrite_in_progress", "aof_rewrite_scheduled")
    )


def test_ack_aof(make_repo, replica, r):
    for client in (r, replica.client()):
        client.config_set("appendonly", "yes")
    try:
        deadline = time.monotonic() + 30
        while not all(_aof_on(c.info("persistence")) for c in (r, replica.client())):
            assert time.monotonic() < deadline, "AOF did not come on"
            time.sleep(0.05)
        store = apply_repo(make_repo(ack_replicas=1, ack_aof=True, ack_timeout_seconds=4))
        online = online_store_of(store)
        view = store.get_feature_view(BATCH)
        online.online_write_batch(store.config, view, rows(["u0001"], "aof"), None)
        assert replica.client().hget("fs:user:u0001", "risk_segment") == b"aof"
    finally:
        for client in (r, replica.client()):
            client.config_set("appendonly", "no")


@pytest.mark.parametrize(
    "settings, named",
    [
        ({"ack_replicas": 2}, "ack_replicas: 2, but the master"),
        ({"ack_aof": True}, "ack_aof: true, but the master"),
        ({"ack_replicas": -1}, "ack_replicas must be >= 0"),
        ({"ack_replicas": 1, "ack_timeout_seconds": 0}, "ack_timeout_seconds must be > 0"),
        (
            {"ack_replicas": 1, "ack_timeout_seconds": 6},
            "ack_timeout_seconds (6.0) must be below socket_timeout",
        ),
    ],
)
def test_bad_ack_settings_fail_at_apply_naming_them(make_repo, replica, settings, named):
    with pytest.raises(Exception) as info:  # noqa: B017 -- Feast wraps pydantic's errors
        apply_repo(make_repo(**settings))
    assert named in str(info.value)


def test_off_by_default_no_wait(store, r):
    before = int(r.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))
    store.materialize_incremental(end_date=datetime.now(UTC) - timedelta(seconds=1))
    assert int(r.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)) == before
