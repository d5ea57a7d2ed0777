"""Writes: key EXPIRE for batch views (re-pinned every time), per-field TTLs for streaming views,
event-time ordering, ttl_from: event, per-view tags, chunking, concurrency, bad entity keys."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from conftest import (
    apply_repo,
    assert_expiry,
    feast_objects,
    online_store_of,
    user_key,
    user_view,
    write_window,
)
from feast import Entity, Field, FileSource, StreamFeatureView, ValueType
from feast.data_format import JsonFormat
from feast.data_source import KafkaSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.types import Float64, Int64, String

from feast_redis_hexpire.codec import encode_ts
from feast_redis_hexpire.constants import KNOWN_TAGS
from feast_redis_hexpire.exceptions import BadValueError, ConfigError
from feast_redis_hexpire.synth import BATCH_FEATURES, STREAMING_FEATURES, streaming_frame

KEY = "fs:user:u0001"
TS_BATCH, TS_STREAM = "_ts:user_batch_features", "_ts:user_streaming_features"


def httl(r, key, *fields):
    return dict(zip(fields, r.httl(key, *fields)))


def materialize(store, end=None, views=None):
    end = end or datetime.now(UTC)
    store.materialize(start_date=end - timedelta(days=1), end_date=end, feature_views=views)


def stream_row(user, ts, n):
    """One streaming-view row whose values all carry ``n`` (to tell writes apart)."""
    values = {
        "last_login_ts": Value(int64_val=n),
        "last_device_id": Value(string_val=f"dev-{n}"),
        "tx_count_5m": Value(int64_val=n),
        "failed_logins_15m": Value(int64_val=n),
        "session_country": Value(string_val=f"c{n}"),
    }
    return (user_key(user), values, ts, None)


def batch_row(user, ts, n):
    values = {
        "country_iso": Value(string_val=f"c{n}"),
        "risk_segment": Value(string_val=f"r{n}"),
        "account_age_days": Value(int64_val=n),
        "tx_count_7d": Value(int64_val=n),
        "avg_amount_30d": Value(double_val=n + 0.5),
        "chargeback_count_180d": Value(int64_val=n),
    }
    return (user_key(user), values, ts, None)


def views(store):
    return store.get_feature_view("user_batch_features"), store.get_feature_view("user_streaming_features")


def test_batch_write_is_hset_plus_key_expire(store, r):
    with write_window() as window:
        materialize(store)
    assert r.hlen(KEY) == len(BATCH_FEATURES) + 1
    assert_expiry([r.pexpiretime(KEY)], window, 86_400, KEY)
    assert set(r.httl(KEY, *BATCH_FEATURES, TS_BATCH)) == {-1}  # batch fields: no field TTL
    assert r.hget(KEY, "account_age_days").isdigit()


def test_rematerializing_unchanged_rows_repins_the_key_ttl(store, r):
    """Feast #3275: rows skipped as not newer must still refresh the key TTL."""
    end = datetime.now(UTC)
    materialize(store, end)
    before = r.hgetall(KEY)
    online = online_store_of(store)
    skipped = online.stats["skipped_not_newer"]
    r.expire(KEY, 100)
    r.expire("fs:user:u0020", 50)
    with write_window() as window:
        materialize(store, end)  # the very same rows again
    assert_expiry([r.pexpiretime(KEY), r.pexpiretime("fs:user:u0020")], window, 86_400, "re-pinned")
    assert r.hgetall(KEY) == before
    assert online.stats["skipped_not_newer"] - skipped == 20


def test_push_sets_field_ttls_on_exactly_the_written_fields(store, r):
    materialize(store)
    key_expiry = r.pexpiretime(KEY)
    with write_window() as window:
        store.push("user_events_push", streaming_frame(["u0001"], random.Random(3)))
    assert_expiry(r.hpexpiretime(KEY, *STREAMING_FEATURES, TS_STREAM), window, 300, "pushed fields")
    assert set(r.httl(KEY, *BATCH_FEATURES, TS_BATCH)) == {-1}
    with_ttl = {f.decode() for f, t in zip(r.hkeys(KEY), r.httl(KEY, *r.hkeys(KEY))) if t > 0}
    assert with_ttl == {*STREAMING_FEATURES, TS_STREAM}
    assert r.pexpiretime(KEY) == key_expiry  # the push leaves the key TTL alone


def test_partial_streaming_write_sets_ttl_only_on_its_fields(store, r):
    batch, stream = views(store)
    online = online_store_of(store)
    now = datetime.now(UTC)
    online.online_write_batch(store.config, batch, [batch_row("u0001", now, 1)], None)
    partial = (user_key("u0001"), {"tx_count_5m": Value(int64_val=4)}, now, None)
    online.online_write_batch(store.config, stream, [partial], None)
    assert {f.decode() for f in r.hkeys(KEY)} == {*BATCH_FEATURES, TS_BATCH, "tx_count_5m", TS_STREAM}
    assert all(t > 0 for t in r.httl(KEY, "tx_count_5m", TS_STREAM))
    assert set(r.httl(KEY, *BATCH_FEATURES)) == {-1}


def test_older_push_never_overwrites_newer(store, r):
    now = datetime.now(UTC)
    newer = streaming_frame(["u0001"], random.Random(1), now)
    newer["tx_count_5m"] = 11
    older = streaming_frame(["u0001"], random.Random(2), now - timedelta(minutes=1))
    older["tx_count_5m"] = 7
    online = online_store_of(store)
    skipped = online.stats["skipped_not_newer"]
    store.push("user_events_push", newer)
    store.push("user_events_push", older)
    assert r.hget(KEY, "tx_count_5m") == b"11"
    assert online.stats["skipped_not_newer"] - skipped == 1
    got = store.get_online_features(
        features=["user_streaming_features:tx_count_5m"], entity_rows=[{"user_id": "u0001"}]
    )
    assert got.to_dict()["tx_count_5m"] == [11]


@pytest.mark.parametrize("order", ["newer_first", "older_first"])
def test_out_of_order_rows_in_one_batch_keep_the_newest(store, r, order):
    _, stream = views(store)
    now = datetime.now(UTC)
    rows = [stream_row("u0001", now, 2), stream_row("u0001", now - timedelta(seconds=30), 1)]
    if order == "older_first":
        rows.reverse()
    online_store_of(store).online_write_batch(store.config, stream, rows, None)
    assert r.hget(KEY, "tx_count_5m") == b"2"
    assert r.hget(KEY, "last_device_id") == b"dev-2"
    assert int(r.hget(KEY, TS_STREAM)) == int(now.timestamp()) * 1_000_000 + now.microsecond


def test_equal_timestamp_does_not_overwrite(store, r):
    _, stream = views(store)
    now = datetime.now(UTC)
    online = online_store_of(store)
    online.online_write_batch(store.config, stream, [stream_row("u0001", now, 1)], None)
    online.online_write_batch(store.config, stream, [stream_row("u0001", now, 2)], None)
    assert r.hget(KEY, "tx_count_5m") == b"1"


def test_skip_dedup_lets_older_rows_overwrite(make_repo, r):
    store = apply_repo(make_repo(skip_dedup=True))
    _, stream = views(store)
    now = datetime.now(UTC)
    online = online_store_of(store)
    online.online_write_batch(store.config, stream, [stream_row("u0001", now, 2)], None)
    online.online_write_batch(
        store.config, stream, [stream_row("u0001", now - timedelta(minutes=1), 1)], None
    )
    assert r.hget(KEY, "tx_count_5m") == b"1"
    assert all(t > 0 for t in r.httl(KEY, *STREAMING_FEATURES))


def test_ttl_from_event_shortens_late_events_and_drops_expired_ones(make_repo, r):
    store = apply_repo(make_repo(ttl_from="event"))
    online = online_store_of(store)
    now = datetime.now(UTC)
    late = now - timedelta(seconds=100)
    store.push("user_events_push", streaming_frame(["u0001"], random.Random(1), late))
    # The TTL counts from the event: the fields expire exactly 300 s after it (HPEXPIREAT).
    expected = encode_ts(late) // 1000 + 300_000
    assert r.hpexpiretime(KEY, *STREAMING_FEATURES, TS_STREAM) == [expected] * (len(STREAMING_FEATURES) + 1)
    store.push("user_events_push", streaming_frame(["u0002"], random.Random(1), now))
    assert r.hpexpiretime("fs:user:u0002", *STREAMING_FEATURES) == [encode_ts(now) // 1000 + 300_000] * len(
        STREAMING_FEATURES
    )
    dropped = online.stats["dropped_expired"]
    store.push("user_events_push", streaming_frame(["u0003"], random.Random(1), now - timedelta(seconds=400)))
    assert not r.exists("fs:user:u0003")
    assert online.stats["dropped_expired"] - dropped == 1


def test_ttl_from_event_does_not_touch_batch_views(make_repo, r):
    store = apply_repo(make_repo(ttl_from="event"))
    with write_window() as window:
        materialize(store)
    assert_expiry([r.pexpiretime(KEY)], window, 86_400, KEY)
    assert set(r.httl(KEY, *BATCH_FEATURES)) == {-1}


def test_view_tags_override_the_ttls_and_the_mode(store, r):
    tagged = [
        user_view("short_key", {"sk": Int64}, tags={"hexpire.key_ttl_seconds": "600"}),
        user_view("forced_stream", {"fs_f": Int64}, tags={"hexpire.mode": "streaming"}),
        user_view("short_field", {"sf": String}, push=True, tags={"hexpire.field_ttl_seconds": "30"}),
        user_view("forced_batch", {"fb": Int64}, push=True, tags={"hexpire.mode": "batch"}),
    ]
    store.apply(tagged)
    online = online_store_of(store)
    now = datetime.now(UTC)
    with write_window() as window:
        for name, feature, value in (
            ("short_key", "sk", Value(int64_val=1)),
            ("forced_stream", "fs_f", Value(int64_val=2)),
            ("short_field", "sf", Value(string_val="x")),
            ("forced_batch", "fb", Value(int64_val=3)),
        ):
            view = store.get_feature_view(name)
            online.online_write_batch(
                store.config, view, [(user_key(name), {feature: value}, now, None)], None
            )
    assert_expiry([r.pexpiretime("fs:user:short_key")], window, 600, "short_key")
    assert r.httl("fs:user:short_key", "sk") == [-1]
    assert r.ttl("fs:user:forced_stream") == -1  # streaming: no key TTL ...
    assert_expiry(
        r.hpexpiretime("fs:user:forced_stream", "fs_f"), window, 300, "forced_stream"
    )  # ... a field TTL
    assert_expiry(r.hpexpiretime("fs:user:short_field", "sf"), window, 30, "short_field")
    assert r.httl("fs:user:forced_batch", "fb") == [-1]
    assert_expiry([r.pexpiretime("fs:user:forced_batch")], window, 86_400, "forced_batch")


@pytest.mark.parametrize(
    ("tag", "value"),
    [
        ("hexpire.key_ttl_seconds", "0"),
        ("hexpire.key_ttl_seconds", "-5"),
        ("hexpire.field_ttl_seconds", "soon"),
        ("hexpire.field_ttl_seconds", "300000000000"),  # past the latest field expiry Redis accepts
        ("hexpire.key_ttl_seconds", "300000000000"),
        ("hexpire.mode", "sometimes"),
    ],
)
def test_bad_view_tag_is_refused_at_apply_naming_view_and_tag(store, r, tag, value):
    with pytest.raises(ConfigError) as info:
        store.apply([user_view("badly_tagged", {"bt": Int64}, tags={tag: value})])
    assert "badly_tagged" in str(info.value)
    assert tag in str(info.value)


@pytest.mark.parametrize("tag", ["hexpire.field_ttl", "hexpire.Mode", "hexpire.key_ttl", "hexpire."])
def test_unknown_hexpire_tag_is_refused_at_apply_naming_it_and_the_known_ones(store, r, tag):
    """A misspelled tag must not silently leave the view on the default TTL."""
    with pytest.raises(ConfigError) as info:
        store.apply([user_view("misspelled", {"ms": Int64}, push=True, tags={tag: "60"})])
    message = str(info.value)
    assert "misspelled" in message and f"unknown tag {tag}" in message
    assert all(known in message for known in KNOWN_TAGS)
    assert "misspelled" not in [v.name for v in store.list_feature_views()]


def test_other_tags_are_left_to_their_owners(store, r):
    store.apply([user_view("team_tagged", {"tt": Int64}, tags={"team": "fraud", "hexpire_note": "x"})])
    assert "team_tagged" in [v.name for v in store.list_feature_views()]


def test_large_batches_are_chunked_and_progress_is_reported(make_repo, r):
    store = apply_repo(make_repo(write_batch_size=7))
    batch, _ = views(store)
    now = datetime.now(UTC)
    rows = [batch_row(f"c{i:02d}", now, i) for i in range(50)]
    calls: list[int] = []
    online = online_store_of(store)
    written = online.stats["written"]
    online.online_write_batch(store.config, batch, rows, calls.append)
    assert calls == [7] * 7 + [1]
    assert online.stats["written"] - written == 50
    assert sum(calls) == 50
    assert len(r.keys("fs:user:c*")) == 50
    assert [r.hget(f"fs:user:c{i:02d}", "tx_count_7d") for i in range(50)] == [
        str(i).encode() for i in range(50)
    ]


def test_concurrent_batch_and_streaming_writes_lose_nothing(store, r):
    """Batch and streaming writers hammer the same 20 entities from threads at once."""
    batch, stream = views(store)
    online = online_store_of(store)
    users = [f"u{i:04d}" for i in range(1, 21)]
    base = datetime.now(UTC) - timedelta(seconds=30)
    rounds = 15
    errors: list[BaseException] = []

    def writer(view, make_row, offset):
        try:
            for n in range(rounds):
                ts = base + timedelta(milliseconds=10 * n + offset)
                rows = [make_row(u, ts, n) for u in users]
                online.online_write_batch(store.config, view, rows, None)
        except BaseException as e:  # noqa: BLE001 -- reported by the main thread
            errors.append(e)

    threads = [
        threading.Thread(target=writer, args=(batch, batch_row, 0)),
        threading.Thread(target=writer, args=(batch, batch_row, 1)),
        threading.Thread(target=writer, args=(stream, stream_row, 0)),
        threading.Thread(target=writer, args=(stream, stream_row, 1)),
    ]
    for t in threads:
        t.start()
    pushes = [
        streaming_frame(users, random.Random(n), base + timedelta(milliseconds=10 * n + 5)) for n in range(5)
    ]
    for frame in pushes:  # a real FeatureStore.push alongside
        store.push("user_events_push", frame)
    for t in threads:
        t.join()
    assert not errors, errors
    for user in users:
        key = f"fs:user:{user}"
        fields = {f.decode() for f in r.hkeys(key)}
        assert fields == {*BATCH_FEATURES, *STREAMING_FEATURES, TS_BATCH, TS_STREAM}, key
        assert all(t > 0 for t in r.httl(key, *STREAMING_FEATURES, TS_STREAM)), key
        assert set(r.httl(key, *BATCH_FEATURES, TS_BATCH)) == {-1}, key
        assert r.ttl(key) > 86_000
        # The newest batch row (round 14, offset 1) won.
        assert r.hget(key, "tx_count_7d") == str(rounds - 1).encode()


@pytest.mark.parametrize(
    "bad",
    [
        EntityKey(join_keys=["user_id"], entity_values=[Value(double_val=1.5)]),
        EntityKey(join_keys=["user_id"], entity_values=[Value()]),
        EntityKey(join_keys=["user_id"], entity_values=[Value(bool_val=True)]),
    ],
    ids=["float", "null", "bool"],
)
@pytest.mark.parametrize("view_name", ["user_batch_features", "user_streaming_features"])
def test_bad_entity_key_names_the_view_and_writes_nothing(store, r, bad, view_name):
    view = store.get_feature_view(view_name)
    now = datetime.now(UTC)
    make = batch_row if view_name == "user_batch_features" else stream_row
    rows = [make("u0001", now, 1), make("u0002", now, 1)]
    rows.insert(1, (bad, rows[0][1], now, None))
    with pytest.raises(BadValueError) as info:
        online_store_of(store).online_write_batch(store.config, view, rows, None)
    assert view_name in str(info.value)
    assert r.dbsize() == 0


def test_null_key_ttl_leaves_batch_keys_without_expiry(make_repo, r):
    store = apply_repo(make_repo(key_ttl_seconds=None))
    materialize(store)
    assert r.hlen(KEY) == len(BATCH_FEATURES) + 1
    assert r.ttl(KEY) == -1


def test_stream_feature_view_is_streaming_and_does_not_store_its_join_key(store, r):
    """A StreamFeatureView gets per-field TTLs; a join key listed among its features is no field."""
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    batch_source = FileSource(name="clicks_batch", path="unused.parquet", timestamp_field="event_timestamp")
    kafka = KafkaSource(
        name="user_clicks_kafka",
        timestamp_field="event_timestamp",
        message_format=JsonFormat(schema_json=""),
        kafka_bootstrap_servers="127.0.0.1:9",
        topic="clicks",
        batch_source=batch_source,
    )  # fmt: skip
    sfv = StreamFeatureView(
        name="user_clicks", source=kafka, entities=[user], timestamp_field="event_timestamp",
        schema=[Field(name="user_id", dtype=String), Field(name="clicks_1m", dtype=Int64)],
    )  # fmt: skip
    store.apply([sfv])
    view = store.get_stream_feature_view("user_clicks")
    now = datetime.now(UTC)
    values = {"user_id": Value(string_val="u0001"), "clicks_1m": Value(int64_val=9)}
    online_store_of(store).online_write_batch(
        store.config, view, [(user_key("u0001"), values, now, None)], None
    )
    assert {f.decode() for f in r.hkeys(KEY)} == {"clicks_1m", "_ts:user_clicks"}
    assert all(0 < t <= 300 for t in r.httl(KEY, "clicks_1m", "_ts:user_clicks"))  # no lower bound: no race
    assert r.ttl(KEY) == -1
    got = store.get_online_features(features=["user_clicks:clicks_1m"], entity_rows=[{"user_id": "u0001"}])
    assert got.to_dict()["clicks_1m"] == [9]


@pytest.mark.parametrize("push", [False, True], ids=["batch", "streaming"])
def test_wide_view_of_5000_features_is_written(store, r, push):
    """Wide views exist (embedding-like tables); every feature of the row must land, with its TTL."""
    width = 5000
    store.apply([user_view("wide", {f"w{i}": Int64 for i in range(width)}, push=push)])
    view = store.get_feature_view("wide")
    values = {f"w{i}": Value(int64_val=i) for i in range(width)}
    now = datetime.now(UTC)
    online_store_of(store).online_write_batch(
        store.config, view, [(user_key("u0001"), values, now, None)], None
    )
    assert r.hlen(KEY) == width + 1
    assert r.hget(KEY, f"w{width - 1}") == str(width - 1).encode()
    if push:
        assert min(r.httl(KEY, *values)) > 0
    else:
        assert r.ttl(KEY) > 86_000


def test_on_demand_view_written_to_the_online_store(store, repo, r):
    """An OnDemandFeatureView with write_to_online_store=True reaches the store as `table`."""
    objects = {o.name: o for o in feast_objects(repo)}

    @on_demand_feature_view(
        sources=[objects["user_batch_features"]],
        schema=[Field(name="amount_x2", dtype=Float64)],
        mode="pandas",
        write_to_online_store=True,
        entities=[objects["user"]],
    )
    def doubled(inputs: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"amount_x2": inputs["avg_amount_30d"] * 2})

    store.apply([doubled])
    frame = pd.DataFrame(
        {"user_id": ["u0001"], "avg_amount_30d": [10.5], "event_timestamp": [pd.Timestamp.now(tz="UTC")]}
    )
    store.write_to_online_store("doubled", frame)
    assert r.hget(KEY, "amount_x2") == b"21.0"
    assert r.hexists(KEY, "_ts:doubled")
    got = store.get_online_features(
        features=["doubled:amount_x2"], entity_rows=[{"user_id": "u0001"}, {"user_id": "x"}]
    )
    assert got.to_dict()["amount_x2"] == [21.0, None]


def test_the_latest_batch_write_sets_the_key_ttl_of_the_shared_hash(store, r):
    """Views of one entity share its hash and its key TTL: the latest batch write sets it, as in
    the seed's BulkLoad (README, "Batch write"), so a shorter key TTL on one view shortens the
    entity's life and a later write of the longer view restores it."""
    store.apply([user_view("short_key", {"sk": Int64}, tags={"hexpire.key_ttl_seconds": "600"})])
    with write_window() as window:
        materialize(store, views=["user_batch_features"])  # 86400 s
    assert_expiry([r.pexpiretime(KEY)], window, 86_400, "first batch write")
    now = datetime.now(UTC)
    row = (user_key("u0001"), {"sk": Value(int64_val=1)}, now, None)
    with write_window() as window:
        online_store_of(store).online_write_batch(
            store.config, store.get_feature_view("short_key"), [row], None
        )
    assert_expiry([r.pexpiretime(KEY)], window, 600, "the shorter view's write")
    with write_window() as window:
        materialize(store, views=["user_batch_features"])  # unchanged rows: the TTL is re-pinned
    assert_expiry([r.pexpiretime(KEY)], window, 86_400, "re-pinned")
