"""Redis Cluster (3 masters + 3 replicas on loopback): the sample repo end to end, one round
trip per shard per batch (counted on the servers), a hash-tag prefix, teardown on every node, an
old primary refused, and a master SIGKILLed during pushes and reads (plain, and with its replica
cut off first so that acknowledged writes are lost and reported).

Run with ``-s`` to see the failover reports: ``pytest -m cluster tests/test_cluster.py -s``.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import failover
import pandas as pd
import pytest
import redis
import test_direct
import test_read_fastpath
from conftest import (
    LAYOUTS,
    SERVER_KINDS,
    apply_repo,
    assert_expiry,
    feast_objects,
    hexpire_store,
    old_redis_server,
    online_store_of,
    stored,
    wait_for,
    write_data,
    write_repo,
    write_window,
)
from redis.crc import key_slot

from feast_redis_hexpire import clients
from feast_redis_hexpire.config import RedisHexpireOnlineStoreConfig
from feast_redis_hexpire.connection import make_async_client, make_client
from feast_redis_hexpire.direct import direct_reads
from feast_redis_hexpire.exceptions import (
    ConfigError,
    HexpireError,
    ServerUnsupportedError,
    StoreUnavailableError,
)
from feast_redis_hexpire.scripts import WRITE_ROWS
from feast_redis_hexpire.synth import streaming_frame
from feast_redis_hexpire.topology import LocalCluster, kill

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]  # six nodes per test, failovers

USERS = [f"u{n:04d}" for n in range(1, 21)]


@pytest.fixture(scope="module", params=SERVER_KINDS)
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    with LocalCluster(request.param) as running:
        yield running


def raw_client(cluster: LocalCluster) -> redis.RedisCluster:
    node = cluster.live_masters()[0]
    return redis.RedisCluster(host="127.0.0.1", port=node.port)


@pytest.fixture
def rc(cluster: LocalCluster) -> Iterator[redis.RedisCluster]:
    client = raw_client(cluster)
    client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    yield client
    client.close()


def cluster_repo(path: Path, cluster: LocalCluster, **online_store: Any) -> Path:
    repo = write_repo(path, cluster.connection_string, redis_type="redis_cluster", **online_store)
    write_data(repo)
    return repo


def hmget_calls(cluster: LocalCluster) -> dict[int, int]:
    """HMGET calls per master port since the last CONFIG RESETSTAT; MOVED/ASK would be errors."""
    out = {}
    for node in cluster.masters:
        with node.client() as c:
            stats = c.info("commandstats")
            errors = c.info("errorstats")
            assert not [k for k in errors if "MOVED" in k or "ASK" in k], errors
            out[node.port] = stats.get("cmdstat_hmget", {}).get("calls", 0)
    return out


@pytest.mark.parametrize("value_layout", LAYOUTS)
def test_sample_repo_across_shards(tmp_path, cluster, rc, value_layout):
    # Keys that teardown must leave alone: another project's, and a non-hash under our pattern.
    rc.hset("other:user:u0001", mapping={"risk_segment": "low", "_ts:user_batch_features": 1})
    rc.set("fs:user:not-a-hash", "x")
    store = apply_repo(cluster_repo(tmp_path / "repo", cluster, value_layout=value_layout))
    packed = value_layout == "packed"
    tx_field = "user_streaming_features" if packed else "tx_count_5m"  # the field holding it
    risk_field = "user_batch_features" if packed else "risk_segment"

    def tx(k):
        return int(stored(store, rc, k, "user_streaming_features", "tx_count_5m"))

    with write_window() as materialized:
        store.materialize_incremental(end_date=datetime.now(UTC))

    keys = [f"fs:user:{u}".encode() for u in USERS]
    owner = cluster.owner_function()
    owners = {owner(k).port for k in keys}
    assert owners == {m.port for m in cluster.masters}, "20 users should land on all 3 masters"
    assert_expiry([rc.pexpiretime(k) for k in keys], materialized, 86400, "keys")

    with write_window() as pushed:
        store.push("user_events_push", streaming_frame(USERS[:10], random.Random(3)))
    assert_expiry([rc.hpexpiretime(k, tx_field)[0] for k in keys[:10]], pushed, 300, "pushed")
    assert all(rc.httl(k, risk_field)[0] == -1 for k in keys)

    # One HMGET per entity, each sent straight to the master owning its slot.
    for node in cluster.masters:
        with node.client() as c:
            c.config_resetstat()
    features = ["user_batch_features:risk_segment", "user_streaming_features:tx_count_5m"]
    rows = [{"user_id": u} for u in USERS]
    result = store.get_online_features(features=features, entity_rows=rows).to_dict()
    per_master = hmget_calls(cluster)
    for port, calls in per_master.items():
        assert calls == sum(1 for k in keys if owner(k).port == port), per_master
    assert result["risk_segment"] == [
        stored(store, rc, k, "user_batch_features", "risk_segment").decode() for k in keys
    ]
    assert result["tx_count_5m"][:10] == [tx(k) for k in keys[:10]]
    assert result["tx_count_5m"][10:] == [None] * 10

    # The asyncio cluster client: push + read through the async paths, starting from an empty
    # script cache on every master (the async NOSCRIPT reload path).
    rc.script_flush()  # SCRIPT FLUSH goes to every primary

    async def async_round() -> dict:
        await store.push_async("user_events_push", streaming_frame(USERS[10:], random.Random(4)))
        response = await store.get_online_features_async(features=features, entity_rows=rows)
        return response.to_dict()

    with write_window() as pushed:
        result = asyncio.run(async_round())
    assert result["tx_count_5m"] == [tx(k) for k in keys]
    assert_expiry([rc.hpexpiretime(k, tx_field)[0] for k in keys[10:]], pushed, 300, "pushed async")

    # A deleted view's fields leave every hash on every shard (update() scans all masters).
    gone = {"user_streaming_features", "fraud_model"}
    store.apply(
        [o for o in feast_objects(store.repo_path) if o.name not in gone],
        objects_to_delete=[
            store.get_feature_view("user_streaming_features"),
            store.get_feature_service("fraud_model"),
        ],
        partial=False,
    )
    assert [rc.hget(k, tx_field) for k in keys] == [None] * len(keys)
    assert all(rc.hget(k, risk_field) is not None for k in keys)

    # Teardown scans every master and removes exactly the project's hashes.
    store.teardown()
    assert not [k for k in keys if rc.exists(k)]
    assert rc.exists("other:user:u0001") and rc.get("fs:user:not-a-hash") == b"x"


def test_reads_follow_a_slot_moved_to_another_master(tmp_path, cluster, rc):
    """The store sends each master its HMGETs straight from its slot map; once a slot moved, the
    old master answers MOVED and the read goes through redis-py's cluster pipeline, which follows
    it: the answers stay exact."""
    store = apply_repo(cluster_repo(tmp_path / "repo", cluster))
    store.materialize_incremental(end_date=datetime.now(UTC))
    features = ["user_batch_features:risk_segment", "user_batch_features:tx_count_7d"]
    rows = [{"user_id": u} for u in USERS]
    before = store.get_online_features(features=features, entity_rows=rows).to_dict()
    assert None not in before["risk_segment"]

    key = b"fs:user:u0001"
    slot = rc.keyslot(key)
    src = cluster.owner_function()(key)
    dst = next(m for m in cluster.masters if m.port != src.port)
    with src.client() as s, dst.client() as d:
        src_id, dst_id = s.execute_command("CLUSTER MYID"), d.execute_command("CLUSTER MYID")
        d.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        s.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        moving = s.execute_command("CLUSTER GETKEYSINSLOT", slot, 1000)
        assert key.decode() in moving
        s.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", *moving)
        s.config_resetstat()  # mid-migration the key lives on dst: the source answers ASK
        assert store.get_online_features(features=features, entity_rows=rows).to_dict() == before
        assert [k for k in s.info("errorstats") if "ASK" in k], "the read should have met an ASK"
        for node in cluster.masters:
            with node.client() as c:
                c.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
        s.config_resetstat()
        after = store.get_online_features(features=features, entity_rows=rows).to_dict()
        assert after == before
        moved = {k: v for k, v in s.info("errorstats").items() if "MOVED" in k}
        assert moved, "the read should have met the old slot map (a MOVED reply) and followed it"
        # Following it updated the client's slot map: the next read goes to the new owner at
        # once, on the store's own socket, and meets no MOVED.
        s.config_resetstat()
        d.config_resetstat()
        assert store.get_online_features(features=features, entity_rows=rows).to_dict() == before
        assert not s.info("errorstats") and d.info("commandstats")["cmdstat_hmget"]["calls"] >= 1
        assert test_direct.own_sockets(d)
    assert store.get_online_features(features=features, entity_rows=rows).to_dict() == before


def test_reads_take_the_stores_own_sockets_and_answer_as_feast_and_redis_py(tmp_path, cluster, rc):
    """On a cluster too, reads go out on the store's own sockets to each master (direct.py,
    routed by redis-py's slot map) and answer exactly as Feast's generic path and redis-py's
    cluster pipeline do: repeated, missing and partial entities, one entity, many."""
    store = apply_repo(cluster_repo(tmp_path / "repo", cluster))
    test_read_fastpath.load(store)
    for entities in (test_read_fastpath.ROWS, ["u0001"], ["nobody"], USERS):
        ours, feast = test_read_fastpath.answers(store, test_read_fastpath.FEATURES, {"user_id": entities})
        assert ours == feast
    masters = [node.client() for node in cluster.masters]
    try:
        assert all(test_direct.own_sockets(c) for c in masters), "a master was read through redis-py"
    finally:
        for c in masters:
            c.close()
    online, config = hexpire_store(store), store.config
    fields = ["_ts:user_batch_features", "risk_segment", "no_such_field"]
    commands = [(f"fs:user:{u}".encode(), fields) for u in [*USERS, "nobody", "u0003"]]
    client = online.client(config)
    with client.pipeline(transaction=False) as pipe:
        for key, these in commands:
            pipe.hmget(key, these)
        expected = pipe.execute()
    assert sum(reply[1] is not None for reply in expected) == len(USERS) + 1
    direct = direct_reads(config.online_store, clients.connection_settings(config.online_store))
    assert direct is not None and direct.cluster
    assert direct.hmget(commands, client) == expected
    assert [direct.hmget([c], client) for c in commands] == [[reply] for reply in expected]
    assert online._hmget(config, commands) == expected


def test_acl_user_on_the_own_sockets(tmp_path, cluster, rc):
    """username= and password= on the cluster: the own sockets to every master authenticate as
    that ACL user (ACL SETUSER is per node: set on each)."""
    user, secret = f"reader-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    nodes = [node.client() for node in cluster.nodes]
    try:
        for c in nodes:
            c.execute_command("ACL", "SETUSER", user, "on", f">{secret}", "~*", "+@all")
        conn = f"{cluster.connection_string},username={user},password={secret}"
        repo = write_repo(tmp_path / "repo", conn, redis_type="redis_cluster")
        write_data(repo)
        store = apply_repo(repo)
        test_direct.seed(store)
        own = test_direct.OWN
        assert test_direct.read(store, list(own)) == list(own.values())
        assert test_direct.read(store, ["u0005"]) == [5]
        masters = nodes[: len(cluster.masters)]
        assert all([c for c in test_direct.own_sockets(m) if c["user"] == user] for m in masters)
    finally:
        for c in nodes:
            c.execute_command("ACL", "DELUSER", user)
            c.close()


def test_interleaved_faults_on_the_masters_never_answer_another_entity(tmp_path, cluster, rc):
    """test_direct's faults on every master of a cluster (killed connections, pauses past the
    socket timeout, a WRONGTYPE key among the keys): no answer is ever another entity's."""
    store = apply_repo(cluster_repo(tmp_path / "repo", cluster, socket_timeout=0.2, retries=0))
    masters = [node.client() for node in cluster.masters]
    try:
        outcomes = test_direct.interleaved_faults(store, rc, masters, steps=18)
    finally:
        for c in masters:
            c.close()
    assert {"answered", "ResponseError"} <= set(outcomes), outcomes


class ReadEvents:
    """Read events (socket reads with data) each master processed since the last reset, on
    connections kept open (opening one costs read events of its own). A pipelined batch that
    arrives in one piece is one event: the server-side count of round trips. The INFO that asks
    is one more; a replica's once-a-second REPLCONF ACK adds one now and then."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.clients = [node.client() for node in cluster.masters]

    def reset(self) -> None:
        for c in self.clients:
            c.config_resetstat()
        self.since = time.monotonic()

    def acks_allowed(self) -> int:
        """Replica ACKs that may have arrived since the reset: one a second, plus one."""
        return int(time.monotonic() - self.since) + 2

    def counts(self) -> list[int]:
        return [c.info("stats")["total_reads_processed"] for c in self.clients]

    def close(self) -> None:
        for c in self.clients:
            c.close()


def test_one_round_trip_per_shard_for_batch_reads_and_writes(tmp_path, cluster, rc):
    store = apply_repo(cluster_repo(tmp_path / "repo", cluster))
    store.materialize_incremental(end_date=datetime.now(UTC))
    rows = [{"user_id": u} for u in USERS]  # 20 users: 5 to 10 on each master
    features = ["user_batch_features:risk_segment", "user_streaming_features:tx_count_5m"]
    frame = streaming_frame(USERS, random.Random(5))
    store.get_online_features(features=features, entity_rows=rows)  # connections are open
    batches = 20
    events = ReadEvents(cluster)

    def check(what: str) -> None:
        counts = events.counts()
        # one round trip per batch per master, + the INFO (+ the replica's once-a-second ACKs,
        # + a little slack for the cluster client's own traffic, seen once or twice under load);
        # one round trip per entity would be 100 to 200 per master.
        most = batches + 1 + events.acks_allowed() + 2
        assert all(batches + 1 <= n <= most for n in counts), f"{what}: {counts}"

    events.reset()
    for _ in range(batches):
        store.get_online_features(features=features, entity_rows=rows)
    check("sync reads")
    events.reset()
    for n in range(batches):
        frame["event_timestamp"] = frame["event_timestamp"] + pd.Timedelta(milliseconds=n + 1)
        store.push("user_events_push", frame)
    check("sync writes")

    async def async_round(push: bool) -> None:
        await store.get_online_features_async(features=features, entity_rows=rows)  # connect
        events.reset()
        for n in range(batches):
            if push:
                frame["event_timestamp"] = frame["event_timestamp"] + pd.Timedelta(milliseconds=n + 1)
                await store.push_async("user_events_push", frame)
            else:
                await store.get_online_features_async(features=features, entity_rows=rows)

    asyncio.run(async_round(push=False))
    check("async reads")
    asyncio.run(async_round(push=True))
    check("async writes")
    events.close()


def test_hash_tag_prefix_puts_the_project_on_one_shard(tmp_path, cluster, rc):
    # Braces in key_prefix are a Redis hash tag: "{project}:{vip}:" -> fs:{vip}:user:u0001, so
    # every key hashes on "vip", one slot, one master: a batch read is one round trip.
    store = apply_repo(cluster_repo(tmp_path / "repo", cluster, key_prefix="{project}:{vip}:"))
    store.materialize_incremental(end_date=datetime.now(UTC))
    keys = [f"fs:{{vip}}:user:{u}".encode() for u in USERS]
    assert all(rc.exists(k) for k in keys)
    assert {rc.keyslot(k) for k in keys} == {rc.keyslot("vip")}
    for node in cluster.masters:
        with node.client() as c:
            c.config_resetstat()
    result = store.get_online_features(
        features=["user_batch_features:risk_segment"], entity_rows=[{"user_id": u} for u in USERS]
    ).to_dict()
    assert result["risk_segment"] == [rc.hget(k, "risk_segment").decode() for k in keys]
    assert sorted(hmget_calls(cluster).values()) == [0, 0, len(USERS)]
    # The braces are literal in the SCAN pattern (not glob characters): teardown finds them all.
    rc.hset("fs:{vipx}:user:u0001", mapping={"_ts:user_batch_features": 1})
    store.teardown()
    assert not [k for k in keys if rc.exists(k)]
    assert rc.exists("fs:{vipx}:user:u0001")


@pytest.mark.parametrize(
    "kind,use_async,victim_no",
    [("redis", False, 0), ("valkey", False, 0), ("redis", True, 0), ("redis", True, 1)],
    ids=["redis", "valkey", "redis-async", "redis-async-not-default-node"],
)
def test_master_killed_during_pushes_and_reads(tmp_path, kind, use_async, victim_no):
    with LocalCluster(kind, node_timeout_ms=1000) as fresh:
        store = apply_repo(cluster_repo(tmp_path / "repo", fresh))
        store.materialize_incremental(end_date=datetime.now(UTC))
        # masters[0] owns slot 0: the asyncio client's default node (see below)
        victim, its_replica = fresh.masters[victim_no], fresh.replicas[victim_no]
        # SCRIPT LOAD is not replicated: the promoted replica will answer NOSCRIPT, so writes
        # after the failover go through run_pipelined's reload path.
        with its_replica.client() as replica:
            assert replica.script_exists(WRITE_ROWS.sha) == [False]
        owner = fresh.owner_function()
        killed_slots = {n for n in range(5000) if owner(b"fs:user:w%05d" % n) is victim}
        assert killed_slots, "some pushed users must live on the killed master"
        report = failover.run(
            store,
            kill=lambda _: kill(victim),
            wait_new_master=lambda: fresh.wait_promoted(victim),
            raw=lambda: raw_client(fresh),
            key_of=lambda n: b"fs:user:w%05d" % n,
            use_async=use_async,
            on_victim=killed_slots.__contains__,
        )
        client = "asyncio client" if use_async else "sync client"
        print("\n" + report.summary(f"cluster {kind}, {client}: SIGKILL master 127.0.0.1:{victim.port}"))
        # Calls in flight while the master was down (a call retrying through the whole outage
        # counts: the loop is sequential, so "returned during the outage" depends on speed).
        during = [o for o in report.writes() if o.overlaps(report.killed_at, report.promoted_at)]
        others = [o for o in during if o.n not in killed_slots]
        failed_others = sum(1 for o in others if o.error)
        print(f"  while the master was down: {failed_others} of {len(others)} writes to other shards failed")
        if not (use_async and victim_no == 0):
            assert others and failed_others == 0, "the other shards must keep taking writes"
        # else: redis-py 8.1's asyncio cluster client closes itself on the first connection error
        # and re-initializes with COMMAND sent to its default node (the primary of slot 0), so
        # while that very node is down every call fails until the promotion (documented).

        # The same FeatureStore (no restart) works again once the replica is promoted.
        assert not report.errors_after_recovery()
        # A write to the killed master's slots was in flight while it was down (else the test proved
        # nothing); whether it failed or its retries outlasted the outage depends on the machine.
        assert any(o.n in killed_slots for o in during)
        # Any loss is the async-replication window: the newest writes the killed master acknowledged.
        for n, ago in report.lost:
            assert n in killed_slots, f"w{n:05d} lost though its master was not killed"
            assert ago >= 0, f"w{n:05d} acknowledged after the kill, then lost"
        assert not report.lost_not_a_suffix(), "a write survived an earlier lost one"


@pytest.mark.needs("old-redis-server")
def test_cluster_with_one_old_primary_is_refused_naming_it(tmp_path):
    old = old_redis_server()
    assert old is not None
    mixed = LocalCluster("redis", replicas_per_master=0)
    mixed.nodes[2].binary = old  # e.g. midway through a rolling upgrade
    with mixed:
        repo = cluster_repo(tmp_path / "repo", mixed)
        with pytest.raises(ServerUnsupportedError) as caught:
            apply_repo(repo)
        message = str(caught.value)
        assert "Redis 7.0" in message and f"127.0.0.1:{mixed.nodes[2].port}" in message
        assert "has no HEXPIRE" in message
        for node in mixed.masters:
            with node.client() as c:
                assert c.dbsize() == 0, "a refused apply writes nothing"


@failover.PARTITIONED
def test_partitioned_master_loses_exactly_its_unreplicated_writes(tmp_path, kind, ack):
    # The loss case made deterministic: the replica is cut off, the master acknowledges writes
    # only it holds, then dies; the promoted replica never had them. The report must find them.
    # With ack_replicas: 1 the cut-off master acknowledges none of them: nothing acknowledged is
    # lost, and each write that failed names its row; the killed master is restarted (it
    # rejoins as the new master's replica) so that writes are acknowledged again.
    settings = {"ack_replicas": 1, "ack_timeout_seconds": 0.3} if ack else {}
    with LocalCluster(kind) as fresh:
        store = apply_repo(cluster_repo(tmp_path / "repo", fresh, **settings))
        store.materialize_incremental(end_date=datetime.now(UTC))
        victim, its_replica = fresh.masters[0], fresh.replicas[0]
        owner = fresh.owner_function()
        on_victim = {n for n in range(5000) if owner(b"fs:user:w%05d" % n) is victim}
        cut, times = failover.cut_then_kill(victim, its_replica, on_master=on_victim.__contains__)

        def new_master() -> None:
            promoted = fresh.wait_promoted(victim)
            times["promoted"] = time.monotonic()
            if ack:
                failover.rejoin(victim, promoted)
                times["rejoined"] = time.monotonic()

        report = failover.run(
            store,
            kill=cut,
            wait_new_master=new_master,
            raw=lambda: raw_client(fresh),
            key_of=lambda n: b"fs:user:w%05d" % n,
            before=60,
            after=60,
            on_victim=on_victim.__contains__,
        )
        option = ", ack_replicas 1" if ack else ""
        label = f"cluster {kind}{option}: replica cut off, then SIGKILL 127.0.0.1:{victim.port}"
        print("\n" + report.summary(label))
        assert not report.errors_after_recovery()
        if ack:
            print(failover.ack_timeline(report, times))
            failover.check_acked(report, times)
            return
        assert report.lost, "writes acknowledged by the cut-off master must be reported lost"
        assert not report.lost_not_a_suffix(), "a write survived an earlier lost one"
        for n, ago in report.lost:
            assert n in on_victim
            assert times["cut"] <= report.killed_at - ago <= times["killed"]
        acked_in_window = [
            o for o in report.writes(True) if o.n in on_victim and times["cut"] < o.at < times["killed"]
        ]
        assert len(report.lost) <= len(acked_in_window)


def test_ack_replicas_waits_on_each_shard_and_names_the_rows_of_a_short_one(tmp_path, cluster, rc):
    # ack_replicas on a cluster: each master's share of a batch is followed by WAIT on that
    # master's connection; a master whose replica stopped acknowledging fails only its own rows.
    with pytest.raises(ConfigError) as too_many:
        apply_repo(cluster_repo(tmp_path / "too_many", cluster, ack_replicas=2))
    assert "ack_replicas: 2, but the master at 127.0.0.1:" in str(too_many.value)
    assert any(f"127.0.0.1:{m.port} (primary of" in str(too_many.value) for m in cluster.masters)
    assert "has 1 replica(s) connected" in str(too_many.value)
    store = apply_repo(cluster_repo(tmp_path / "repo", cluster, ack_replicas=1, ack_timeout_seconds=0.5))
    store.materialize_incremental(end_date=datetime.now(UTC))
    owner = cluster.owner_function()
    victim = owner(b"fs:user:u0001")
    its_replica = cluster.replicas[cluster.masters.index(victim)]
    with its_replica.client() as replica:
        assert replica.execute_command("ROLE")[0] == b"slave"
        replica.execute_command("READONLY")  # a cluster replica serves reads only after READONLY
        assert replica.hget("fs:user:u0001", "risk_segment") is not None  # acknowledged: on the replica
    online = online_store_of(store)
    view = store.get_feature_view("user_batch_features")
    users = [f"k{n:02d}" for n in range(15)]
    mine = [u for u in users if owner(f"fs:user:{u}".encode()) is victim]
    assert 0 < len(mine) < len(users)
    os.kill(its_replica.process.pid, signal.SIGSTOP)  # the victim's replica stops acknowledging
    try:
        for label, write in (
            ("sync", lambda rows: online.online_write_batch(store.config, view, rows, None)),
            (
                "async",
                lambda rows: asyncio.run(online.online_write_batch_async(store.config, view, rows, None)),
            ),
        ):
            for master in cluster.masters:  # each node's group then takes the NOSCRIPT reload path
                with master.client() as c:
                    c.script_flush()
            with pytest.raises(StoreUnavailableError) as info:
                write(failover.ack_rows(users, label))
            text = str(info.value)
            assert f"written to 127.0.0.1:{victim.port} but acknowledged by only 0 of 1 replica(s)" in text
            named = text.split("not acknowledged: ")[1].split(";")[0].split(", ")
            assert named == [f"fs:user:{u}" for u in mine], label  # exactly the victim's rows
            assert "the batch's other rows were acknowledged" in text
            for u in users:  # every row was written; the other shards' rows are on their replicas
                assert rc.hget(f"fs:user:{u}", "risk_segment") == label.encode()
                if u not in mine:
                    node = cluster.replicas[cluster.masters.index(owner(f"fs:user:{u}".encode()))]
                    with node.client() as replica:
                        replica.execute_command("READONLY")
                        assert replica.hget(f"fs:user:{u}", "risk_segment") == label.encode()
    finally:
        os.kill(its_replica.process.pid, signal.SIGCONT)
    wait_for(
        "writes to be acknowledged again after the replica resumed",
        lambda: failover.acked(store, view, failover.ack_rows(users, "again")),
    )


def _move_slot(slot: int, source: Any, target: Any, finish: bool = True) -> None:
    """CLUSTER SETSLOT's migration steps for an empty slot: IMPORTING / MIGRATING, then (with
    ``finish``) NODE on both, which bumps the target's epoch so every node learns the owner."""
    with source.client() as src, target.client() as dst:
        src_id, dst_id = (c.execute_command("CLUSTER", "MYID") for c in (src, dst))
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        if finish:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)


def _key_of_an_empty_slot(cluster: Any, rc: Any) -> tuple[str, bytes, int, Any, Any]:
    """A user id whose key's slot holds no key, that key, its slot, the slot's master and another
    master (to move the slot to)."""
    owner = cluster.owner_function()
    moving = next(
        f"m{n:03d}" for n in range(1000) if rc.cluster_countkeysinslot(rc.keyslot(f"fs:user:m{n:03d}")) == 0
    )
    key = f"fs:user:{moving}".encode()
    source = owner(key)
    return moving, key, rc.keyslot(key), source, next(m for m in cluster.masters if m is not source)


def _give_back(cluster: Any, rc: Any, key: bytes, source: Any, target: Any) -> None:
    """Delete ``key`` and give its slot back to ``source``, stable on both nodes, for the module's
    other tests (after a test moved it, or left it migrating, to ``target``)."""
    slot = rc.keyslot(key)
    rc.delete(key)
    wait_for("the slot to be empty", lambda: rc.cluster_countkeysinslot(slot) == 0)
    for node in (source, target):
        with node.client() as c:
            c.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
    if cluster.owner_function()(key) is not source:
        _move_slot(slot, target, source)
    wait_for("every node to see the slot back", lambda: cluster.owner_function()(key) is source)


def test_ack_replicas_ask_and_moved_fail_their_rows_by_name(tmp_path, cluster, rc):
    # A slot being migrated (ASK) and then moved (MOVED) under a client whose slot map still
    # names the old owner: that node's rows are reported failed with the redirect, never
    # silently; the other rows of the batch are written and acknowledged; after a MOVED the
    # client follows the slot.
    store = apply_repo(cluster_repo(tmp_path / "repo", cluster, ack_replicas=1, ack_timeout_seconds=2))
    view = store.get_feature_view("user_batch_features")
    owner = cluster.owner_function()
    moving, key, slot, source, target = _key_of_an_empty_slot(cluster, rc)
    other = next(f"o{n:03d}" for n in range(1000) if owner(f"fs:user:o{n:03d}".encode()) is not source)
    assert failover.acked(store, view, failover.ack_rows([other], "warm"))  # the client has its slot map
    try:
        _move_slot(slot, source, target, finish=False)
        with pytest.raises(StoreUnavailableError) as info:
            online_store_of(store).online_write_batch(
                store.config, view, failover.ack_rows([other, moving], "ask"), None
            )
        text = str(info.value)
        assert f"row 1 was sent to 127.0.0.1:{source.port} but not confirmed written (AskError: " in text, (
            text
        )
        assert (
            f"not acknowledged: fs:user:{moving};" in text
            and "the batch's other rows were acknowledged" in text
        )
        assert rc.hget(f"fs:user:{other}", "risk_segment") == b"ask"
        with pytest.raises(
            StoreUnavailableError, match=f"not confirmed written \\(AskError: .*fs:user:{moving};"
        ):
            rows = failover.ack_rows([other, moving], "ask-async")
            asyncio.run(online_store_of(store).online_write_batch_async(store.config, view, rows, None))
        assert rc.hget(f"fs:user:{other}", "risk_segment") == b"ask-async"
        _move_slot(slot, source, target)
        with pytest.raises(StoreUnavailableError) as info:
            online_store_of(store).online_write_batch(
                store.config, view, failover.ack_rows([moving], "moved"), None
            )
        text = str(info.value)
        assert f"row 0 was sent to 127.0.0.1:{source.port} but not confirmed written (MovedError: " in text, (
            text
        )
        assert f"not acknowledged: fs:user:{moving};" in text
        wait_for(
            "the write to follow the slot",
            lambda: failover.acked(store, view, failover.ack_rows([moving], "followed")),
        )
        with target.client() as t:
            assert t.hget(key, "risk_segment") == b"followed"
    finally:
        _give_back(cluster, rc, key, source, target)


def evalsha_calls(cluster: LocalCluster) -> list[int]:
    """EVALSHA calls per master since the last CONFIG RESETSTAT."""
    out = []
    for node in cluster.masters:
        with node.client() as c:
            out.append(c.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
    return out


def reset_stats(cluster: LocalCluster) -> None:
    for node in cluster.masters:
        with node.client() as c:
            c.config_resetstat()


def test_rows_of_many_slots_go_in_one_call_per_master(tmp_path, cluster, rc):
    # cluster_write_calls: node (the default): a batch's rows of all slots of one master go in one
    # script call, keys in ARGV, on that master's connection; values and TTLs as per slot.
    store = apply_repo(cluster_repo(tmp_path / "repo", cluster))
    online, view = online_store_of(store), store.get_feature_view("user_batch_features")
    users = [f"s{n:03d}" for n in range(90)]  # 90 keys of about as many slots, on every master
    keys = [f"fs:user:{u}".encode() for u in users]
    assert len({rc.keyslot(k) for k in keys}) > 80
    frame = streaming_frame(users, random.Random(7))
    store.push("user_events_push", frame)  # loads the scripts on every master
    for label, write in (
        ("sync", lambda rows: online.online_write_batch(store.config, view, rows, None)),
        ("async", lambda rows: asyncio.run(online.online_write_batch_async(store.config, view, rows, None))),
    ):
        online.stats.clear()
        reset_stats(cluster)
        with write_window() as written:
            write(failover.ack_rows(users, label))
        assert evalsha_calls(cluster) == [1, 1, 1], label  # per slot: one call per key
        assert online.stats == {"written": len(users)}, label
        assert [rc.hget(k, "risk_segment") for k in keys] == [label.encode()] * len(keys)
        assert_expiry([rc.pexpiretime(k) for k in keys], written, 86400, f"batch rows, {label}")

    for n, push in enumerate(
        (
            lambda f: store.push("user_events_push", f),
            lambda f: asyncio.run(store.push_async("user_events_push", f)),
        )
    ):
        frame["event_timestamp"] = frame["event_timestamp"] + pd.Timedelta(milliseconds=n + 1)
        frame["tx_count_5m"] = [n * 1000 + i for i in range(len(users))]
        reset_stats(cluster)
        with write_window() as pushed:
            push(frame)
        assert evalsha_calls(cluster) == [1, 1, 1]
        assert [int(rc.hget(k, "tx_count_5m")) for k in keys] == list(frame["tx_count_5m"])
        assert_expiry([rc.hpexpiretime(k, "tx_count_5m")[0] for k in keys], pushed, 300, f"push {n}")
        assert_expiry([rc.hpexpiretime(k, "_ts:user_streaming_features")[0] for k in keys], pushed, 300)


def test_rows_of_a_slot_that_moved_after_grouping_go_again_per_slot(tmp_path, cluster, rc):
    # The client groups rows by its slot map; the slot of one row has moved on the servers since.
    # The old owner refuses that row inside the cross-slot call ("non local key"), writing nothing
    # of it; the row goes again through the per-slot path, which follows ASK (slot migrating) and
    # MOVED (slot moved). Every row is written exactly once and counted once.
    store = apply_repo(cluster_repo(tmp_path / "repo", cluster))
    online, view = online_store_of(store), store.get_feature_view("user_batch_features")
    owner = cluster.owner_function()
    moving, key, slot, source, target = _key_of_an_empty_slot(cluster, rc)
    users = [f"o{n:03d}" for n in range(30)]
    keys = [f"fs:user:{u}".encode() for u in users]
    assert any(owner(k) is source for k in keys), "the old owner has other rows of the call"
    online.online_write_batch(store.config, view, failover.ack_rows(users, "warm"), None)  # slot map
    try:
        for phase, finish in (("ask", False), ("moved", True)):
            _move_slot(slot, source, target, finish=finish)
            with source.client() as s:
                s.config_resetstat()
            for label, write in (
                ("sync", lambda rows: online.online_write_batch(store.config, view, rows, None)),
                (
                    "async",
                    lambda rows: asyncio.run(online.online_write_batch_async(store.config, view, rows, None)),
                ),
            ):
                if phase == "moved" and label == "async":
                    continue  # a new asyncio client reads the slot map now: nothing moved for it
                online.stats.clear()
                value = f"{phase}-{label}"
                with write_window() as written:
                    write(failover.ack_rows([*users, moving], value))
                assert online.stats == {"written": len(users) + 1}, value
                assert [rc.hget(k, "risk_segment") for k in [*keys, key]] == [value.encode()] * (
                    len(users) + 1
                )
                assert_expiry([rc.pexpiretime(k) for k in [*keys, key]], written, 86400, value)
                with target.client() as t, source.client() as s:
                    t.execute_command("ASKING")
                    assert t.hget(key, "risk_segment") == value.encode()
                    assert s.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
            with source.client() as s:
                redirects = [k for k in s.info("errorstats") if ("ASK" if phase == "ask" else "MOVED") in k]
            assert redirects, f"the per-slot retry should have met the {phase} redirect and followed it"
    finally:
        _give_back(cluster, rc, key, source, target)


def _take_over(cluster: LocalCluster, replica: Any, master: Any, key: bytes) -> None:
    """CLUSTER FAILOVER on ``replica`` (coordinated with its live ``master``, no data lost) until
    every node names it the owner of ``key``'s slot and ``master`` replicates from it (a manual
    failover right after another one can time out: it is asked again)."""
    slot = key_slot(key)

    def done() -> bool:
        for node in cluster.nodes:
            with node.client() as c:
                slots = c.execute_command("CLUSTER", "SLOTS")
            if not any(s <= slot <= e and int(p[1]) == replica.port for s, e, p, *_ in slots):
                return False
        with master.client() as c:
            return c.info("replication").get("master_link_status") == "up"

    def ask_and_wait() -> bool:
        with replica.client() as c:
            if c.info("replication").get("role") != "master":
                c.execute_command("CLUSTER", "FAILOVER")
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            if done():
                return True
            time.sleep(0.05)
        return False

    wait_for(f"127.0.0.1:{replica.port} to take over from 127.0.0.1:{master.port}", ask_and_wait, timeout=60)


def test_rows_sent_to_a_master_that_became_a_replica_go_again_per_slot(tmp_path, cluster, rc):
    # A failover after the client read its slot map: the cross-slot calls to the old master (now
    # a replica) are refused as a whole (READONLY: a flagged script that may write does not run on
    # a replica), so all of its rows go again per slot, which follows MOVED to the new master.
    store = apply_repo(cluster_repo(tmp_path / "repo", cluster))
    online, view = online_store_of(store), store.get_feature_view("user_batch_features")
    old, new = cluster.masters[1], cluster.replicas[1]
    users = [f"f{n:03d}" for n in range(30)]
    keys = [f"fs:user:{u}".encode() for u in users]
    owner = cluster.owner_function()
    theirs = next(k for k in keys if owner(k) is old)
    assert 0 < sum(owner(k) is old for k in keys) < len(keys)
    online.online_write_batch(store.config, view, failover.ack_rows(users, "warm"), None)  # slot map
    try:
        _take_over(cluster, new, old, theirs)
        with old.client() as o:
            o.config_resetstat()
        online.stats.clear()
        with write_window() as written:
            online.online_write_batch(store.config, view, failover.ack_rows(users, "after"), None)
        assert online.stats == {"written": len(users)}
        assert [rc.hget(k, "risk_segment") for k in keys] == [b"after"] * len(keys)
        assert_expiry([rc.pexpiretime(k) for k in keys], written, 86400, "after the failover")
        with old.client() as o:
            errors = o.info("errorstats")
        assert [k for k in errors if "READONLY" in k], errors  # the cross-slot calls it refused
        assert [k for k in errors if "MOVED" in k], errors  # the per-slot retry, followed
    finally:
        _take_over(cluster, old, new, theirs)  # back, for the module's other tests


def test_acl_key_patterns_hold_inside_a_cross_slot_call(tmp_path, cluster, rc):
    # The cross-slot call declares no keys: the server checks the user's key patterns on each
    # command inside the script, so rows outside them are refused one by one, nothing of them is
    # written, and the error names exactly those rows.
    user, password = f"limited-{os.getpid()}", "pw-limited-7"
    for node in cluster.masters:
        with node.client() as c:
            c.execute_command(
                "ACL", "SETUSER", user, "on", f">{password}", "resetkeys", "~fs:_*", "~fs:user:a*", "+@all"
            )
    try:
        conn = f"{cluster.connection_string},username={user},password={password}"
        repo = write_repo(tmp_path / "limited", conn, redis_type="redis_cluster")
        store = apply_repo(repo)
        view = store.get_feature_view("user_batch_features")
        users = [f"{c}{n:02d}" for n in range(12) for c in "ab"]
        refused = [u for u in users if u.startswith("b")]
        with pytest.raises(HexpireError) as info:
            online_store_of(store).online_write_batch(
                store.config, view, failover.ack_rows(users, "acl"), None
            )
        text = str(info.value)
        assert f"refused {len(refused)} of {len(users)} row(s)" in text, text
        shown = re.findall(r"row (\d+) \((fs:user:\w+)\)", text)
        assert len(shown) == 5 and all(key == f"fs:user:{users[int(row)]}" for row, key in shown)
        assert {key for _, key in shown} <= {f"fs:user:{u}" for u in refused}, text
        assert "and 7 more" in text and password not in text
        for u in users:
            assert rc.hget(f"fs:user:{u}", "risk_segment") == (None if u in refused else b"acl"), u
    finally:
        for node in cluster.masters:
            with node.client() as c:
                c.execute_command("ACL", "DELUSER", user)


def test_db_other_than_0_is_refused_for_a_cluster():
    cfg = RedisHexpireOnlineStoreConfig(connection_string="127.0.0.1:7000,db=2", redis_type="redis_cluster")
    for make in (make_client, make_async_client):
        with pytest.raises(ConfigError, match="db=2 is not possible with redis_type: redis_cluster"):
            make(cfg)
