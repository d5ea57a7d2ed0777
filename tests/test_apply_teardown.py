"""`feast apply` (update) and `feast teardown`: field collisions, deleted views, only our keys
removed, and an old server refused with a message naming it."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import yaml
from conftest import (
    apply_compound_view,
    apply_repo,
    feast_objects,
    online_store_of,
    user_key,
    user_view,
    write_data,
    write_repo,
)
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.types import Int64, String

from feast_redis_hexpire.exceptions import (
    ConfigError,
    FieldCollisionError,
    FieldTTLError,
    ServerUnsupportedError,
)
from feast_redis_hexpire.local_redis import free_port
from feast_redis_hexpire.synth import BATCH_FEATURES, streaming_frame

KEY = "fs:user:u0001"


def load(store, users=("u0001", "u0002")):
    store.materialize_incremental(end_date=datetime.now(UTC))
    store.push("user_events_push", streaming_frame(list(users), random.Random(1)))


# ---- two views, one field: refused only with the strict field_names: feature ----


def test_two_views_writing_one_field_are_refused_naming_both(make_repo, r):
    store = apply_repo(make_repo(field_names="feature"))
    clash_a = user_view("clash_a", {"shared_score": Int64, "a_only": Int64})
    clash_b = user_view("clash_b", {"shared_score": Int64}, push=True)
    with pytest.raises(FieldCollisionError) as info:
        store.apply([clash_a, clash_b])
    message = str(info.value)
    assert "clash_a" in message and "clash_b" in message and "shared_score" in message
    assert "field_names" in message  # says how to allow it
    registered = FeatureStore(repo_path=str(store.repo_path)).list_feature_views()
    assert "clash_a" not in [v.name for v in registered]


def test_a_view_clashing_with_a_sample_view_is_refused(make_repo, r):
    """The whole repo, as `feast apply` passes it, plus a view reusing `risk_segment`."""
    repo = make_repo(field_names="feature")
    store = FeatureStore(repo_path=str(repo))
    clash = user_view("risk_copy", {"risk_segment": String})
    with pytest.raises(FieldCollisionError) as info:
        store.apply([*feast_objects(repo), clash])
    assert "user_batch_features" in str(info.value) and "risk_copy" in str(info.value)


def test_a_view_clashing_with_an_already_registered_view_is_refused(make_repo, r):
    """Applying a new view alone must not slip past a view registered by an earlier apply."""
    store = apply_repo(make_repo(field_names="feature"))
    with pytest.raises(FieldCollisionError) as info:
        store.apply([user_view("risk_copy", {"risk_segment": String})])
    assert "user_batch_features" in str(info.value) and "risk_copy" in str(info.value)


def test_the_default_config_accepts_a_view_sharing_a_sample_feature(store, r):
    """field_names: auto (the default): the sample view keeps `risk_segment`, the new view's
    feature gets `risk_copy:risk_segment` (tests/test_naming.py covers the rule)."""
    store.apply([user_view("risk_copy", {"risk_segment": String})])
    assert r.hgetall("fs:_fields") == {b"user:risk_segment": b"user_batch_features"}


def test_view_feature_field_names_allow_the_same_feature_in_two_views(make_repo, r):
    store = apply_repo(make_repo(field_names="view_feature"))
    store.apply(
        [user_view("clash_a", {"shared_score": Int64}), user_view("clash_b", {"shared_score": Int64})]
    )
    online = online_store_of(store)
    now = datetime.now(UTC)
    for name, n in (("clash_a", 1), ("clash_b", 2)):
        view = store.get_feature_view(name)
        online.online_write_batch(
            store.config, view, [(user_key("u0001"), {"shared_score": Value(int64_val=n)}, now, None)], None
        )
    assert r.hget(KEY, "clash_a:shared_score") == b"1"
    assert r.hget(KEY, "clash_b:shared_score") == b"2"
    got = store.get_online_features(
        features=["clash_a:shared_score", "clash_b:shared_score"], entity_rows=[{"user_id": "u0001"}],
        full_feature_names=True,
    ).to_dict()  # fmt: skip
    assert got["clash_a__shared_score"] == [1] and got["clash_b__shared_score"] == [2]


def test_feature_named_like_a_timestamp_field_is_refused(store, r):
    with pytest.raises(ConfigError) as info:
        store.apply([user_view("sneaky", {"_ts:user_batch_features": Int64})])
    assert "sneaky" in str(info.value) and "_ts:" in str(info.value)


# ---- deleting a view ----


def test_deleting_a_view_removes_its_fields_and_keeps_the_others(store, repo, r):
    load(store)
    assert r.hexists(KEY, "tx_count_5m")
    key_expiry = r.pexpiretime(KEY)
    objects = [o for o in feast_objects(repo) if o.name not in ("user_streaming_features", "fraud_model")]
    deleted = [store.get_feature_view("user_streaming_features"), store.get_feature_service("fraud_model")]
    store.apply(objects, objects_to_delete=deleted, partial=False)  # what `feast apply` does
    for key in ("fs:user:u0001", "fs:user:u0002"):
        fields = {f.decode() for f in r.hkeys(key)}
        assert fields == {*BATCH_FEATURES, "_ts:user_batch_features"}, key
    assert len(r.keys("fs:user:*")) == 20
    assert key_expiry > 0 and r.pexpiretime(KEY) == key_expiry  # the deletion left the key TTL alone
    assert isinstance(store.get_feature_view("user_batch_features").name, str)


def test_deleting_a_view_leaves_same_named_fields_of_other_hashes_alone(store, repo, r):
    load(store)
    # Not ours: a hash of the same entity pattern without the deleted view's timestamp field.
    r.hset("fs:user:foreign", mapping={"tx_count_5m": "9"})
    objects = [o for o in feast_objects(repo) if o.name not in ("user_streaming_features", "fraud_model")]
    deleted = [store.get_feature_view("user_streaming_features"), store.get_feature_service("fraud_model")]
    store.apply(objects, objects_to_delete=deleted, partial=False)
    assert r.hget("fs:user:foreign", "tx_count_5m") == b"9"


def test_full_scan_for_deletion_off_keeps_the_fields(make_repo, r):
    repo = make_repo(full_scan_for_deletion=False)
    store = apply_repo(repo)
    load(store)
    objects = [o for o in feast_objects(repo) if o.name not in ("user_streaming_features", "fraud_model")]
    deleted = [store.get_feature_view("user_streaming_features"), store.get_feature_service("fraud_model")]
    store.apply(objects, objects_to_delete=deleted, partial=False)
    assert r.hexists(KEY, "tx_count_5m") and r.hexists(KEY, "_ts:user_streaming_features")


# ---- teardown ----

UNRELATED = {
    "other:user:u0001": "hash_ts",  # another prefix, our field names
    "fsx:user:u0001": "hash_ts",
    "fs:userx:u0001": "hash_ts",
    "fs:merchant:u0001": "hash_ts",
    "fs:user:x": "string",  # same-looking key, other type
    "fs:user:y": "hash_plain",  # same-looking hash without our timestamp fields
    "fs:user:*": "string",
    "fs:user:[ab]?": "hash_plain",
    "fs:user:\\": "list",
    "f*:user:u0001": "hash_ts",
    "fs": "string",
}


def _put_unrelated(r) -> None:
    for key, kind in UNRELATED.items():
        if kind == "hash_ts":
            r.hset(key, mapping={"_ts:user_batch_features": "1", "risk_segment": "low"})
        elif kind == "hash_plain":
            r.hset(key, mapping={"risk_segment": "low"})
        elif kind == "list":
            r.rpush(key, "a")
        else:
            r.set(key, "v")


def test_teardown_removes_only_this_projects_keys(store, r):
    load(store)
    _put_unrelated(r)
    assert len(r.keys("fs:user:u*")) == 20
    store.teardown()
    assert r.keys("fs:user:u*") == []
    survivors = {k.decode() for k in r.keys("*")}
    assert survivors == set(UNRELATED)
    assert r.hget("fs:user:y", "risk_segment") == b"low"


def test_teardown_with_a_glob_like_prefix_does_not_widen(make_repo, r):
    ours = apply_repo(make_repo())  # default prefix "fs:"
    load(ours)
    globby = apply_repo(make_repo(key_prefix="f*:"))
    load(globby, users=("u0001",))
    assert r.exists("f*:user:u0001")
    assert 86_000 < r.ttl("f*:user:u0001")
    globby.teardown()
    assert not r.exists("f*:user:u0001")
    assert len(r.keys("fs:user:u*")) == 20  # nothing of the "fs:" project was touched
    assert r.hexists(KEY, "tx_count_5m")


def test_teardown_keeps_another_projects_fields_in_shared_hashes(make_repo, r):
    """Two projects configured to share one key_prefix share hashes; tearing one down must leave
    the other project's fields (and the hash) in place."""
    ours = apply_repo(make_repo(key_prefix="shared:"))
    other_repo = make_repo(key_prefix="shared:")
    config = yaml.safe_load((other_repo / "feature_store.yaml").read_text())
    config["project"] = "other"
    (other_repo / "feature_store.yaml").write_text(yaml.safe_dump(config))
    other = FeatureStore(repo_path=str(other_repo))
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    other.apply([user, user_view("other_view", {"other_score": Int64})])
    now = datetime.now(UTC)
    row = (user_key("u0001"), {"other_score": Value(int64_val=7)}, now, None)
    online_store_of(other).online_write_batch(other.config, other.get_feature_view("other_view"), [row], None)
    load(ours)
    assert r.hget("shared:user:u0001", "other_score") == b"7"
    assert r.hexists("shared:user:u0001", "risk_segment")
    ours.teardown()
    assert r.hget("shared:user:u0001", "other_score") == b"7"
    assert r.hexists("shared:user:u0001", "_ts:other_view")
    assert not r.exists("shared:user:u0002")  # only ours: gone
    got = other.get_online_features(features=["other_view:other_score"], entity_rows=[{"user_id": "u0001"}])
    assert got.to_dict()["other_score"] == [7]


def test_unreachable_server_fails_at_apply_naming_the_address(tmp_path, monkeypatch):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("REDIS_CONNECTION_STRING", address)
    repo = write_repo(tmp_path / "repo", address, retries=0, socket_connect_timeout=2)
    write_data(repo, count=2)
    with pytest.raises(Exception) as info:  # noqa: B017 -- the message is what matters
        apply_repo(repo)
    assert address in str(info.value)


# ---- a server without hash-field expiration ----

OLD_SERVER = Path("/usr/bin/redis-server")  # Debian 12's redis-server 7.0: no hash-field expiration


@pytest.fixture
def old_redis(tmp_path):
    binary = OLD_SERVER if OLD_SERVER.exists() else shutil.which("redis-server")
    if binary is None:
        pytest.fail("Debian's redis-server 7.0 is needed for this test (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server 7.0 did not start"
            time.sleep(0.05)
    yield f"127.0.0.1:{port}", client
    client.close()
    process.terminate()
    process.wait(10)


def test_old_server_is_refused_at_apply_naming_it(tmp_path, old_redis, monkeypatch):
    address, client = old_redis
    version = client.info("server")["redis_version"]
    assert version.startswith("7.0")
    monkeypatch.setenv("REDIS_CONNECTION_STRING", address)
    repo = write_repo(tmp_path / "repo", address)
    write_data(repo, count=3)
    # The real CLI runs alongside the Python API check (its start-up takes seconds).
    feast = Path(sys.executable).with_name("feast")
    cli = subprocess.Popen(
        [str(feast), "apply"], cwd=repo, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    with pytest.raises(ServerUnsupportedError) as info:
        apply_repo(repo)
    message = str(info.value)
    assert f"Redis {version}" in message
    assert address in message
    assert "HEXPIRE" in message
    assert client.dbsize() == 0

    # The same through the real CLI: non-zero exit, the message on stderr.
    _, stderr = cli.communicate(timeout=300)
    assert cli.returncode != 0
    assert f"Redis {version}" in stderr and address in stderr and "HEXPIRE" in stderr
    assert client.dbsize() == 0


def test_push_to_a_server_without_hfe_behind_an_applied_repo_leaves_nothing(store, r, old_redis):
    """The server behind an applied repo is replaced by one without hash-field expiration: a
    streaming write fails naming the cause, and not one field is left there (without a TTL)."""
    address, old = old_redis
    store.config.online_store.connection_string = address
    online = online_store_of(store)
    stream = store.get_feature_view("user_streaming_features")
    now = datetime.now(UTC)
    values = {"tx_count_5m": Value(int64_val=3), "last_device_id": Value(string_val="d")}
    rows = [(user_key(u), values, now, None) for u in ("u0001", "u0002")]
    with pytest.raises(FieldTTLError) as info:
        online.online_write_batch(store.config, stream, rows, None)
    message = str(info.value)
    assert "Unknown" in message and "HPEXPIREAT" in message and address in message
    assert "nothing of the row was written" in message
    assert old.dbsize() == 0
    with pytest.raises(FieldTTLError):  # the async path (push_async, feast serve) alike
        asyncio.run(online.online_write_batch_async(store.config, stream, rows, None))
    assert old.dbsize() == 0


# ---- wide and compound views ----


def test_deleting_and_tearing_down_a_view_of_10000_features(store, repo, r):
    """Lua's unpack() stops near 8,000 values: the delete and teardown scripts work in slices."""
    width = 10_000
    load(store, users=("u0001",))
    store.apply([user_view("wide", {f"w{i}": Int64 for i in range(width)}, push=True)])
    view = store.get_feature_view("wide")
    values = {f"w{i}": Value(int64_val=i) for i in range(width)}
    online = online_store_of(store)

    def write(user: str) -> None:
        online.online_write_batch(
            store.config, view, [(user_key(user), values, datetime.now(UTC), None)], None
        )

    write("u0001")
    write("wide-only")
    assert r.hlen(KEY) == width + 1 + len(BATCH_FEATURES) + 1 + 6
    kept = {f: v for f, v in r.hgetall(KEY).items() if not f.startswith((b"w", b"_ts:wide"))}
    store.apply([], objects_to_delete=[view], partial=False)
    assert r.hgetall(KEY) == kept
    assert not r.exists("fs:user:wide-only")  # held only the wide view's fields

    # teardown of a hash shared with another project (same key_prefix): only our fields go
    write("u0001")
    r.hset(KEY, mapping={"_ts:foreign_view": "1", "foreign": "x"})
    online.teardown(store.config, [view], [])  # what `feast teardown` calls, with this view
    assert r.hgetall(KEY) == {
        b"_ts:foreign_view": b"1",
        b"foreign": b"x",
        **{f: r.hget(KEY, f) for f in kept},
    }


def pair_key(user: str, merchant: str) -> EntityKey:
    values = [Value(string_val=user), Value(string_val=merchant)]
    return EntityKey(join_keys=["user_id", "merchant_id"], entity_values=values)


def _pair_view() -> FeatureView:
    """The compound view of conftest.apply_compound_view, as Python code defines it: Feast has
    not inferred its join keys yet."""
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    merchant = Entity(name="merchant", join_keys=["merchant_id"], value_type=ValueType.STRING)
    source = FileSource(name="pair_source", path="unused.parquet", timestamp_field="event_timestamp")
    schema = [Field(name="pair_tx", dtype=Int64)]
    return FeatureView(
        name="user_merchant", entities=[user, merchant], schema=schema, source=source, online=True
    )


def test_deleting_a_compound_view_passed_as_a_python_object_removes_its_fields(store, r):
    load(store)
    registered = apply_compound_view(store)
    now = datetime.now(UTC)
    pairs = (("u0001", "m1"), ("u0002", "m2"))
    rows = [(pair_key(u, m), {"pair_tx": Value(int64_val=5)}, now, None) for u, m in pairs]
    online_store_of(store).online_write_batch(store.config, registered, rows, None)
    r.hset("fs:merchant_id+user_id:m1:u0001", "extra", "kept")  # another field in the hash stays
    pair_keys = sorted(r.keys("fs:merchant_id+user_id:*"))
    assert len(pair_keys) == 2
    user_hashes = {k: r.hgetall(k) for k in r.keys("fs:user:*")}
    view = _pair_view()
    assert not view.join_keys  # the case: nothing inferred, only the entity names
    store.apply([], objects_to_delete=[view], partial=False)  # nor are the entities passed
    assert r.hgetall("fs:merchant_id+user_id:m1:u0001") == {b"extra": b"kept"}
    assert not r.exists("fs:merchant_id+user_id:m2:u0002")
    assert {k: r.hgetall(k) for k in r.keys("fs:user:*")} == user_hashes


def test_teardown_removes_a_compound_views_hashes(store, r):
    registered = apply_compound_view(store)
    row = (pair_key("u1", "m1"), {"pair_tx": Value(int64_val=5)}, datetime.now(UTC), None)
    online_store_of(store).online_write_batch(store.config, registered, [row], None)
    assert r.exists("fs:merchant_id+user_id:m1:u1")
    online_store_of(store).teardown(store.config, [_pair_view()], [])  # objects from Python code
    assert not r.exists("fs:merchant_id+user_id:m1:u1")
