"""Sentinel (a master, a replica, three sentinels on loopback): the sample repo through the
sentinels, and the master SIGKILLed during pushes and reads.

Run with ``-s`` to see the failover report: ``pytest -m sentinel tests/test_sentinel.py -s``.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import failover
import pytest
import redis
from conftest import (
    SERVER_KINDS,
    apply_repo,
    assert_expiry,
    online_store_of,
    wait_for,
    write_data,
    write_repo,
    write_window,
)

from feast_redis_hexpire.exceptions import StoreUnavailableError
from feast_redis_hexpire.scripts import WRITE_ROWS
from feast_redis_hexpire.synth import streaming_frame
from feast_redis_hexpire.topology import LocalSentinel, kill

pytestmark = [pytest.mark.sentinel, pytest.mark.timeout(600)]  # five processes per test, failovers

USERS = [f"u{n:04d}" for n in range(1, 21)]
FEATURES = ["user_batch_features:risk_segment", "user_streaming_features:tx_count_5m"]


@pytest.fixture(params=SERVER_KINDS)
def sentinel(request: pytest.FixtureRequest) -> Iterator[LocalSentinel]:
    with LocalSentinel(request.param) as running:
        yield running


def master_client(sentinel: LocalSentinel) -> redis.Redis:
    host, port = sentinel.master_address()
    return redis.Redis(host=host, port=port)


def sentinel_repo(path: Path, sentinel: LocalSentinel, **online_store: Any) -> Path:
    # connection_string lists the sentinels only; the master is found by name through them.
    repo = write_repo(
        path,
        sentinel.connection_string,
        redis_type="redis_sentinel",
        sentinel_master=sentinel.master_name,
        **online_store,
    )
    write_data(repo)
    return repo


def test_sample_repo_through_sentinels(tmp_path, sentinel):
    store = apply_repo(sentinel_repo(tmp_path / "repo", sentinel))
    with write_window() as materialized:
        store.materialize_incremental(end_date=datetime.now(UTC))
    with write_window() as pushed:
        store.push("user_events_push", streaming_frame(USERS[:10], random.Random(3)))
    keys = [f"fs:user:{u}".encode() for u in USERS]
    with master_client(sentinel) as r:
        assert r.info("replication")["role"] == "master"
        assert_expiry([r.pexpiretime(k) for k in keys], materialized, 86400, "keys")
        assert_expiry([r.hpexpiretime(k, "tx_count_5m")[0] for k in keys[:10]], pushed, 300, "pushed")
        rows = [{"user_id": u} for u in USERS]
        result = store.get_online_features(features=FEATURES, entity_rows=rows).to_dict()
        assert result["risk_segment"] == [r.hget(k, "risk_segment").decode() for k in keys]
        assert result["tx_count_5m"] == [int(r.hget(k, "tx_count_5m")) for k in keys[:10]] + [None] * 10

        async def async_read() -> dict:
            return (await store.get_online_features_async(features=FEATURES, entity_rows=rows)).to_dict()

        assert asyncio.run(async_read()) == result
        # The replica has the data too (what a failover would keep).
        with sentinel.replica.client() as replica:
            assert r.execute_command("WAIT", 1, 2000) == 1
            assert replica.hget(keys[0], "risk_segment") == r.hget(keys[0], "risk_segment")
        store.teardown()
        assert not [k for k in keys if r.exists(k)]


def test_ack_replicas_through_sentinel(tmp_path, sentinel):
    # ack_replicas: 1 through Sentinel: each batch waits (WAIT on the master the sentinels name)
    # for the replica; with the replica stopped the write fails naming the master and the rows.
    repo = sentinel_repo(
        tmp_path / "repo", sentinel, ack_replicas=1, ack_timeout_seconds=0.5, write_batch_size=2
    )
    store = apply_repo(repo)
    with sentinel.master.client() as master, sentinel.replica.client() as replica:
        before = int(master.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))
        store.materialize_incremental(end_date=datetime.now(UTC))
        assert int(master.info("commandstats")["cmdstat_wait"]["calls"]) >= before + 10  # 20 rows, 2 a batch
        assert replica.dbsize() == master.dbsize() == 20  # acknowledged: the replica has every row
    online = online_store_of(store)
    view = store.get_feature_view("user_batch_features")
    assert sentinel.replica.process is not None
    os.kill(sentinel.replica.process.pid, signal.SIGSTOP)  # the replica stops acknowledging
    try:
        with pytest.raises(StoreUnavailableError) as info:
            online.online_write_batch(store.config, view, failover.ack_rows(["a", "b", "c"], "late"), None)
        text = str(info.value)
        assert f"rows 0..1 were written to master 'mymaster' at 127.0.0.1:{sentinel.master.port}" in text
        assert "acknowledged by only 0 of 1 replica(s)" in text
        assert "not acknowledged: fs:user:a, fs:user:b;" in text and "later rows were not sent" in text
        with sentinel.master.client() as master:
            assert master.hget("fs:user:a", "risk_segment") == b"late" and not master.exists("fs:user:c")
        with pytest.raises(StoreUnavailableError, match="not acknowledged: fs:user:d;"):
            asyncio.run(
                online.online_write_batch_async(store.config, view, failover.ack_rows(["d"], "late"), None)
            )
    finally:
        os.kill(sentinel.replica.process.pid, signal.SIGCONT)
    wait_for(
        "writes to be acknowledged again",
        lambda: failover.acked(store, view, failover.ack_rows(["c"], "later")),
    )
    with sentinel.replica.client() as replica:
        assert replica.hget("fs:user:c", "risk_segment") == b"later"


def test_master_killed_during_pushes_and_reads(tmp_path, sentinel):
    check_failover(tmp_path, sentinel, use_async=False)


def test_master_killed_during_async_pushes_and_reads(tmp_path):
    with LocalSentinel("redis") as fresh:
        check_failover(tmp_path, fresh, use_async=True)


def check_failover(tmp_path: Path, sentinel: LocalSentinel, use_async: bool) -> None:
    store = apply_repo(sentinel_repo(tmp_path / "repo", sentinel))
    store.materialize_incremental(end_date=datetime.now(UTC))
    old = sentinel.master
    with sentinel.replica.client() as replica:  # the new master will answer NOSCRIPT at first
        assert replica.script_exists(WRITE_ROWS.sha) == [False]
    report = failover.run(
        store,
        kill=lambda _: kill(old),
        wait_new_master=lambda: sentinel.wait_failover(old),
        raw=lambda: master_client(sentinel),
        key_of=lambda n: b"fs:user:w%05d" % n,
        use_async=use_async,
    )
    client = "asyncio client" if use_async else "sync client"
    print("\n" + report.summary(f"sentinel {sentinel.kind}, {client}: SIGKILL master 127.0.0.1:{old.port}"))
    assert sentinel.master_address()[1] == sentinel.replica.port
    # The same FeatureStore (no restart) works again once the sentinels switched masters.
    assert not report.errors_after_recovery()
    # A write was in flight while there was no master (failed, or retried past the outage).
    assert any(o.overlaps(report.killed_at, report.promoted_at) for o in report.writes())
    for n, ago in report.lost:  # the async-replication window: the newest acknowledged writes
        assert ago >= 0, f"w{n:05d} acknowledged after the kill, then lost"
    assert not report.lost_not_a_suffix(), "a write survived an earlier lost one"


@failover.PARTITIONED
def test_partitioned_master_loses_exactly_its_unreplicated_writes(tmp_path, kind, ack):
    # The loss case made deterministic (see failover.cut_then_kill). With ack_replicas: 1 the
    # cut-off master acknowledges none of its writes: nothing acknowledged is lost and every
    # failed write names its row; the killed master is restarted (the sentinels make it the new
    # master's replica) so that writes are acknowledged again.
    settings = {"ack_replicas": 1, "ack_timeout_seconds": 0.3} if ack else {}
    with LocalSentinel(kind) as fresh:
        store = apply_repo(sentinel_repo(tmp_path / "repo", fresh, **settings))
        store.materialize_incremental(end_date=datetime.now(UTC))
        old = fresh.master
        cut, times = failover.cut_then_kill(old, fresh.replica)

        def new_master() -> None:
            promoted = fresh.wait_failover(old)
            times["promoted"] = time.monotonic()
            if ack:
                failover.rejoin(old, promoted)
                times["rejoined"] = time.monotonic()

        report = failover.run(
            store,
            kill=cut,
            wait_new_master=new_master,
            raw=lambda: master_client(fresh),
            key_of=lambda n: b"fs:user:w%05d" % n,
            before=60,
            after=60,
        )
        option = ", ack_replicas 1" if ack else ""
        print(
            "\n"
            + report.summary(f"sentinel {kind}{option}: replica cut off, then SIGKILL 127.0.0.1:{old.port}")
        )
        assert not report.errors_after_recovery()
        if ack:
            print(failover.ack_timeline(report, times))
            failover.check_acked(report, times)
            return
        assert report.lost, "writes acknowledged by the cut-off master must be reported lost"
        assert not report.lost_not_a_suffix(), "a write survived an earlier lost one"
        for _, ago in report.lost:
            assert times["cut"] <= report.killed_at - ago <= times["killed"]
        in_window = [o for o in report.writes(True) if times["cut"] < o.at < times["killed"]]
        assert len(report.lost) <= len(in_window)


def test_min_replicas_to_write_turns_the_loss_into_errors(tmp_path):
    # The mitigation documented in RELIABILITY: a master that has no replica in sync refuses
    # writes (NOREPLICAS), so the same cut-off-then-killed master acknowledges nothing it alone holds.
    args = ["--min-replicas-to-write", "1", "--min-replicas-max-lag", "1"]
    with LocalSentinel("redis", server_args=args) as fresh:
        store = apply_repo(sentinel_repo(tmp_path / "repo", fresh))
        store.materialize_incremental(end_date=datetime.now(UTC))
        cut, times = failover.cut_then_kill(fresh.master, fresh.replica)

        def new_master_alone() -> None:
            # The trade-off: the promoted master has no replica either, so it refuses writes
            # until one is back or the operator accepts the risk, as done here.
            with fresh.wait_failover(fresh.master).client() as client:
                client.config_set("min-replicas-to-write", 0)

        report = failover.run(
            store,
            kill=cut,
            wait_new_master=new_master_alone,
            raw=lambda: master_client(fresh),
            key_of=lambda n: b"fs:user:w%05d" % n,
            before=60,
            after=60,
        )
        label = f"sentinel redis, min-replicas-to-write 1: replica cut off, SIGKILL :{fresh.master.port}"
        print("\n" + report.summary(label))
        refused = [o for o in report.writes(False) if times["cut"] < o.at < times["killed"]]
        assert refused and any("NOREPLICAS" in (o.error or "") for o in refused)
        assert report.lost == []
        assert not report.errors_after_recovery()
