"""`feast-hexpire migrate`: Feast's built-in `type: redis` store, filled through Feast, copied into
this store while pushes continue into the new store; answers compared through get_online_features.

The source is a plain Redis 8.2 (the built-in store needs nothing more); the destination is each
server kind of the ``server`` fixture.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pytest
import redis
import yaml
from conftest import apply_repo, user_key, write_data, write_repo
from feast import FeatureStore
from feast.data_source import PushMode
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
from snapshot import snapshot

from feast_redis_hexpire.cli import main
from feast_redis_hexpire.config import RedisType
from feast_redis_hexpire.local_redis import LocalRedis, free_port
from feast_redis_hexpire.migrate import (
    SKIP_EXPIRED,
    SKIP_NOT_NEWER,
    builtin_field,
    decode_source_key,
    migrate,
)
from feast_redis_hexpire.online_store import hexpire_store
from feast_redis_hexpire.synth import BATCH_FEATURES, STREAMING_FEATURES
from feast_redis_hexpire.topology import LocalCluster, LocalSentinel

USERS = [f"u{n:04d}" for n in range(1, 21)]
PUSHED_DURING = USERS[:3]  # pushed into the new store while the copy runs
FRESH = USERS[:12]  # streaming rows in the old store inside their 300 s window
EXPIRED = USERS[12:16]  # streaming rows already past their window: not copied
STREAMING = STREAMING_FEATURES
BATCH = BATCH_FEATURES
TYPED = ["is_vip", "score32", "visits32", "avatar", "tags", "amounts", "last_seen", "nickname"]

# A third view with more value types (bool, float32, int32, bytes, arrays, timestamps, nulls).
TYPED_VIEW = """
from feast.types import Array, Bool, Bytes, Float32, Int32, UnixTimestamp

user_typed_source = FileSource(
    name="user_typed_source", path=str(DATA / "user_typed.parquet"), timestamp_field="event_timestamp"
)
user_typed_features = FeatureView(
    name="user_typed_features",
    entities=[user],
    ttl=timedelta(days=2),
    schema=[
        Field(name="is_vip", dtype=Bool),
        Field(name="score32", dtype=Float32),
        Field(name="visits32", dtype=Int32),
        Field(name="avatar", dtype=Bytes),
        Field(name="tags", dtype=Array(String)),
        Field(name="amounts", dtype=Array(Float64)),
        Field(name="last_seen", dtype=UnixTimestamp),
        Field(name="nickname", dtype=String),
    ],
    source=user_typed_source,
    online=True,
)

# A view of two entities (compound key).
merchant = Entity(name="merchant", join_keys=["merchant_id"], value_type=ValueType.STRING)
user_merchant_features = FeatureView(
    name="user_merchant_features",
    entities=[user, merchant],
    ttl=timedelta(days=2),
    schema=[Field(name="pair_tx", dtype=Int64), Field(name="pair_share", dtype=Float32)],
    source=FileSource(
        name="user_merchant_source",
        path=str(DATA / "user_merchant.parquet"),
        timestamp_field="event_timestamp",
    ),
    online=True,
)
"""
PAIRS = [(u, f"m{n % 3}") for n, u in enumerate(USERS[:10])]
# Rows a full copy writes: two batch views, the fresh streaming rows, the compound view.
COPIED = 2 * len(USERS) + len(FRESH) + len(PAIRS)


@pytest.fixture(scope="module")
def source_server() -> Iterator[LocalRedis]:
    with LocalRedis("redis") as running:
        yield running


@pytest.fixture
def src(source_server: LocalRedis) -> Iterator[redis.Redis]:
    client = source_server.client()
    client.flushall()
    yield client
    client.close()


def set_online_store(repo: Path, online_store: dict[str, Any]) -> None:
    """Rewrite the repo's online_store block (the one-line switch a user makes)."""
    path = repo / "feature_store.yaml"
    config = yaml.safe_load(path.read_text())
    config["online_store"] = online_store
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def typed_rows(ts: datetime) -> pd.DataFrame:
    rows = []
    for n, user in enumerate(USERS):
        rows.append({
            "user_id": user, "event_timestamp": ts, "is_vip": n % 2 == 0, "score32": n / 3,
            "visits32": n * 7 - 50, "avatar": bytes([n, 0, 255]), "tags": ["a", f"t{n}"],
            "amounts": [n + 0.1, float("nan")] if n == 5 else [n + 0.1, -2.5],
            "last_seen": ts - timedelta(days=n),
            "nickname": None if n % 4 == 0 else f"nick:{n}",
        })  # fmt: skip
    return pd.DataFrame(rows)


def streaming_frame(users: list[str], ts: datetime, base: int) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": users, "event_timestamp": [ts] * len(users),
        "last_login_ts": [base + i for i in range(len(users))],
        "last_device_id": [f"dev-{base}-{u}" for u in users],
        "tx_count_5m": [base % 1000 + i for i in range(len(users))],
        "failed_logins_15m": [i % 3 for i in range(len(users))],
        "session_country": ["US"] * len(users),
    })  # fmt: skip


def fill_builtin_store(repo: Path, source: dict[str, Any]) -> FeatureStore:
    """The repo on Feast's built-in store (online_store ``source``): batch views materialized,
    streaming rows pushed (fresh ones and some already past their 300 s window)."""
    set_online_store(repo, {"type": "redis", **source})
    now = datetime.now(UTC)
    write_data(repo, count=len(USERS))
    typed_rows(now - timedelta(minutes=10)).to_parquet(repo / "data" / "user_typed.parquet")
    pd.DataFrame({
        "user_id": [u for u, _ in PAIRS], "merchant_id": [m for _, m in PAIRS],
        "event_timestamp": [now - timedelta(minutes=5)] * len(PAIRS),
        "pair_tx": list(range(len(PAIRS))), "pair_share": [n / 7 for n in range(len(PAIRS))],
    }).to_parquet(repo / "data" / "user_merchant.parquet")  # fmt: skip
    old = apply_repo(repo)
    old.materialize_incremental(end_date=now)
    for users, age, base in ((FRESH, timedelta(seconds=30), 100), (EXPIRED, timedelta(minutes=10), 200)):
        old.push("user_events_push", streaming_frame(users, now - age, base), to=PushMode.ONLINE)
    return old


def make_repos(
    path: Path, destination: str, source: dict[str, Any]
) -> tuple[Path, FeatureStore, FeatureStore]:
    """(repo, old store, new store): the repo filled through Feast's built-in store, then its
    yaml switched to this plugin on ``destination`` and applied, as the README's steps do."""
    repo = write_repo(path, destination)
    with (repo / "features.py").open("a") as f:
        f.write(TYPED_VIEW)
    plugin = yaml.safe_load((repo / "feature_store.yaml").read_text())["online_store"]
    old = fill_builtin_store(repo, source)
    set_online_store(repo, plugin)
    return repo, old, apply_repo(repo)


@pytest.fixture
def repos(tmp_path: Path, server: LocalRedis, r: Any, src: redis.Redis, source_server: LocalRedis) -> Any:
    """(repo, old store on the source server, new store on ``server``)."""
    return make_repos(
        tmp_path / "repo", server.connection_string, {"connection_string": source_server.connection_string}
    )


def answers(store: FeatureStore) -> dict[str, list[tuple[str, Any, int]]]:
    """{feature: [(status, value, event time µs) per user]} of a get_online_features over all views."""
    refs = [f"user_batch_features:{f}" for f in BATCH] + [f"user_streaming_features:{f}" for f in STREAMING]
    refs += [f"user_typed_features:{f}" for f in TYPED]
    proto = store.get_online_features(features=refs, entity_rows=[{"user_id": u} for u in USERS]).proto
    out = {}
    for name, result in zip(proto.metadata.feature_names.val, proto.results):
        if name == "user_id":
            continue
        out[name] = [
            (
                "ABSENT"
                if s == FieldStatus.NOT_FOUND or v.WhichOneof("val") is None
                else FieldStatus.Name(s),
                v.SerializeToString(),
                ts.seconds * 1_000_000 + ts.nanos // 1000,
            )
            for v, s, ts in zip(result.values, result.statuses, result.event_timestamps)
        ]
    return out


class Pusher(threading.Thread):
    """Pushes newer streaming rows of PUSHED_DURING into the new store until stopped."""

    def __init__(self, store: FeatureStore) -> None:
        super().__init__(daemon=True)
        self.store, self.stop, self.pushes, self.error = store, threading.Event(), 0, None
        self.first = threading.Event()
        self.last: pd.DataFrame | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                frame = streaming_frame(PUSHED_DURING, datetime.now(UTC), 5000 + self.pushes)
                self.store.push("user_events_push", frame, to=PushMode.ONLINE)
                self.last, self.pushes = frame, self.pushes + 1
                self.first.set()
                self.stop.wait(0.05)
        except Exception as e:  # reported by the test
            self.error = e
            self.first.set()


def test_migrate_copies_while_pushes_continue_and_a_rerun_changes_nothing(repos, r, src, capsys):
    repo, old, new = repos
    source_before = snapshot(src)
    assert len(source_before) == len(USERS) + len(PAIRS)

    pusher = Pusher(new)
    pusher.start()
    assert pusher.first.wait(60) and pusher.error is None
    pushes_before = pusher.pushes
    started_ms = time.time() * 1000
    capsys.readouterr()
    # The command line in this process (a second Python start-up costs ~10 s of CPU here);
    # the pusher thread keeps writing to the new store meanwhile.
    code = main(
        ["migrate", "--repo", str(repo), "--from", old.config.online_store.connection_string, "--json",
         "--batch-size", "1"]  # one key per round trip: the pusher's pushes interleave with the copy
    )  # fmt: skip
    ended_ms = time.time() * 1000
    pushes_during = pusher.pushes
    pusher_alive = pusher.is_alive()
    pusher.stop.set()
    pusher.join(30)
    out, err = capsys.readouterr()
    # The pusher was pushing before the copy began and was still at it when it ended. (How many
    # of its pushes completed inside the copy depends on the scheduler: not asserted.)
    assert pusher.error is None and pusher_alive and pushes_during >= pushes_before >= 1
    assert code == 0, err
    report = json.loads(out)

    assert report["keys_scanned"] == len(USERS) + len(PAIRS)
    assert report["rows_copied_per_view"] == {
        "user_batch_features": len(USERS),
        "user_streaming_features": len(FRESH) - len(PUSHED_DURING),
        "user_typed_features": len(USERS),
        "user_merchant_features": len(PAIRS),
    }
    assert report["rows_skipped_per_reason"] == {
        SKIP_EXPIRED: len(EXPIRED),
        SKIP_NOT_NEWER: len(PUSHED_DURING),  # the new store already had newer pushes
    }
    check = report["verification"]
    assert check["ok"] and check["mismatched"] == 0 and check["entities"] == len(USERS) + len(PAIRS)
    assert check["expired"] == len(EXPIRED) * len(STREAMING)
    assert check["newer_in_destination"] == len(PUSHED_DURING) * len(STREAMING)
    assert "password" not in out

    # The test's own comparison of both stores' answers.
    before, after = answers(old), answers(new)
    assert set(before) == set(after)
    for name in before:
        for i, user in enumerate(USERS):
            o, n = before[name][i], after[name][i]
            if name in STREAMING and user in PUSHED_DURING:
                assert n[0] == "PRESENT" and n[2] > o[2], (name, user)
            elif name in STREAMING and user in EXPIRED:
                assert o[0] == "PRESENT" and n[0] == "ABSENT", (name, user)
            elif o[0] == "ABSENT":
                assert n[0] == "ABSENT", (name, user, n)
            else:
                assert o == n, (name, user)
    # The values pushed during the copy survived it (no older copied row replaced them).
    last = pusher.last
    assert last is not None and pushes_during >= 1
    pushed = new.get_online_features(
        features=[f"user_streaming_features:{f}" for f in STREAMING],
        entity_rows=[{"user_id": u} for u in PUSHED_DURING],
    ).to_dict()
    assert pushed["tx_count_5m"] == last["tx_count_5m"].tolist()
    assert pushed["last_device_id"] == last["last_device_id"].tolist()

    # TTLs by this store's rules: copied streaming fields expire at event time + 300 s, copied
    # batch entities at the copy's time + key_ttl_seconds.
    event_ms = int(old.get_online_features(
        features=["user_streaming_features:tx_count_5m"], entity_rows=[{"user_id": FRESH[5]}]
    ).proto.results[1].event_timestamps[0].ToMilliseconds())  # fmt: skip
    streaming_view = new.get_feature_view("user_streaming_features")
    key = hexpire_store(new).key_for(new.config, streaming_view, user_key(FRESH[5]))
    field_expiry = [e for e in r.hpexpiretime(key, *r.hkeys(key)) if e > 0]
    assert len(field_expiry) == len(STREAMING) + 1  # the view's fields and its _ts field
    assert all(abs(e - (event_ms + 300_000)) <= 1 for e in field_expiry), (field_expiry, event_ms)
    assert started_ms + 86_400_000 - 1000 <= r.pexpiretime(key) <= ended_ms + 86_400_000 + 1000

    # A rerun writes nothing: the destination is identical, absolute expiry times included.
    dest_before = snapshot(r)
    again = migrate(repo, old.config.online_store.connection_string, progress=False)
    assert sum(again.rows_copied.values()) == 0
    assert again.rows_skipped[SKIP_NOT_NEWER] == COPIED
    assert again.rows_skipped[SKIP_EXPIRED] == len(EXPIRED)
    assert again.verification.ok
    assert snapshot(r) == dest_before

    # The source was only read: every key byte-for-byte as before, expiry included.
    assert snapshot(src) == source_before


def test_bad_input_is_one_line_and_changes_nothing(repos, r, src, tmp_path, capsys):
    repo, old, _ = repos
    source = old.config.online_store.connection_string
    nobody = f"127.0.0.1:{free_port()}"
    empty = LocalRedis("redis").start()
    legacy = None
    try:
        empty.client().set("xfs", "matches *fs but is no built-in key")
        if Path("/usr/bin/redis-server").exists():
            legacy = subprocess.Popen(
                ["/usr/bin/redis-server", "--port", str(port := free_port()), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        else:
            pytest.fail("Debian's redis-server 7.0 is needed for this test (apt-get install redis-server)")
        old_server = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(host="127.0.0.1", port=port).ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server 7.0 did not start"
                time.sleep(0.05)

        cases = [
            (["--from", empty.connection_string], ["no built-in", "project 'fs'", empty.connection_string]),
            (["--from", source, "--project", "nope"], ["project 'nope'", "not in the registry"]),
            (["--from", source, "--to", old_server], ["HEXPIRE", old_server]),
            (["--from", source, "--batch-size", "0"], ["--batch-size must be >= 1"]),
            (["--from", f"{nobody},password=s3cret"], ["cannot reach the source", nobody]),
            (
                ["--from", source, "--to", f"{nobody},password=s3cret"],
                ["cannot reach the destination", nobody],
            ),
        ]
        dest_before, source_before = snapshot(r), snapshot(src)
        capsys.readouterr()
        for args, expected in cases:
            code = main(["migrate", "--repo", str(repo), "--no-progress", *args])
            out, err = capsys.readouterr()
            lines = [line for line in err.splitlines() if line.strip()]
            assert code == 2, (args, out, err)
            assert len(lines) == 1, (args, err)
            assert all(text in lines[0] for text in expected), (args, lines[0])
            assert "s3cret" not in out + err
            assert snapshot(r) == dest_before and snapshot(src) == source_before, args
        assert redis.Redis(host="127.0.0.1", port=port).dbsize() == 0
        assert empty.client().keys() == [b"xfs"]
    finally:
        empty.stop()
        if legacy is not None:
            legacy.terminate()
            legacy.wait(10)


def test_cluster_source(tmp_path, redis_server):
    """The built-in store on a 3-master Redis Cluster (`--from-cluster`), copied to one server."""
    dest = redis_server.client()
    dest.flushall()
    with LocalCluster("redis", masters=3, replicas_per_master=0) as cluster:
        seeds = cluster.connection_string
        repo, old, new = make_repos(
            tmp_path / "repo", redis_server.connection_string,
            {"connection_string": seeds, "redis_type": "redis_cluster"},
        )  # fmt: skip
        nodes = [m.client() for m in cluster.masters]
        before = [snapshot(n) for n in nodes]
        assert sum(len(b) for b in before) == len(USERS) + len(PAIRS) and all(
            before
        )  # spread over the shards
        report = migrate(repo, seeds, source_type=RedisType.redis_cluster, progress=False)
        assert report.keys_scanned == len(USERS) + len(PAIRS)
        assert sum(report.rows_copied.values()) == COPIED
        assert report.rows_skipped == {SKIP_EXPIRED: len(EXPIRED)}
        assert report.verification.ok and report.verification.entities == len(USERS) + len(PAIRS)
        assert report.verification.same == report.verification.values - len(EXPIRED) * len(STREAMING)
        assert [snapshot(n) for n in nodes] == before
        for node in nodes:
            node.close()
    dest.close()


def test_same_server_then_the_readme_teardown_removes_only_the_old_keys(tmp_path, redis_server):
    """Source and destination on one server; then the README's last step: Feast's own teardown
    of the old config, on a copy of the registry, removes the built-in keys and nothing else."""
    client = redis_server.client()
    client.flushall()
    conn = redis_server.connection_string
    repo, old, new = make_repos(tmp_path / "repo", conn, {"connection_string": conn})
    builtin_keys = set(client.keys())
    report = migrate(repo, conn, progress=False)
    assert report.verification.ok and sum(report.rows_copied.values()) == COPIED
    ours = snapshot(client, exclude=builtin_keys)
    assert len(ours) == len(USERS) + len(PAIRS)
    answered = answers(new)

    # README: "Remove the old keys"
    old_dir = tmp_path / "old-store"
    old_dir.mkdir()
    shutil.copy(repo / "data" / "registry.db", old_dir / "registry.db")
    config = yaml.safe_load((repo / "feature_store.yaml").read_text())
    config.update(registry="registry.db", online_store={"type": "redis", "connection_string": conn})
    (old_dir / "feature_store.yaml").write_text(yaml.safe_dump(config))
    feast = Path(sys.executable).with_name("feast")
    done = subprocess.run(
        [str(feast), "-c", str(old_dir), "teardown"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr

    assert set(client.keys()) == set(ours)  # every built-in key gone, ours untouched
    assert snapshot(client) == ours
    assert answers(new) == answered
    assert {v.name for v in new.list_feature_views()} >= {"user_batch_features", "user_typed_features"}
    client.close()


@pytest.mark.parametrize(
    "view,feature", [("user_batch_features", "risk_segment"), ("v", "ü:x"), ("a" * 300, "")]
)
def test_builtin_field_names_are_feasts(view, feature):
    from feast.infra.online_stores.helpers import _mmh3  # Feast's own, to cross-check ours

    assert builtin_field(view, feature) == _mmh3(f"{view}:{feature}")


def test_keys_of_another_project_are_not_decoded():
    from feast.infra.online_stores.helpers import _redis_key

    key = user_key("u0001")
    assert decode_source_key(_redis_key("fs", key), b"fs", 3) == key
    assert decode_source_key(_redis_key("xfs", key), b"fs", 3) is None  # also matches *fs
    assert decode_source_key(b"fs", b"fs", 3) is None
    assert decode_source_key(b"\x01\x00\x00\x00garbage" + b"fs", b"fs", 3) is None


def test_sentinel_source(tmp_path, redis_server, capsys):
    """The built-in store behind sentinels (`--from-sentinel MASTER`), copied to one server."""
    dest = redis_server.client()
    dest.flushall()
    with LocalSentinel("redis") as sentinel:
        online = {"connection_string": sentinel.connection_string, "redis_type": "redis_sentinel"}
        online["sentinel_master"] = sentinel.master_name
        repo, old, new = make_repos(tmp_path / "repo", redis_server.connection_string, online)
        master = sentinel.master.client()
        before = snapshot(master)
        capsys.readouterr()
        args = ["--from", sentinel.connection_string, "--from-sentinel", sentinel.master_name, "--json"]
        assert main(["migrate", "--repo", str(repo), *args]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["rows_copied"] == COPIED and report["verification"]["ok"]
        assert report["source"].startswith("redis_sentinel ")
        assert snapshot(master) == before
        master.close()
    dest.close()
