"""The two TTL layers observed for real, with short TTLs (1 s per streaming field, 3 s per key).

Waits poll the server until the expected expiry happened, with a generous deadline; nothing here
asserts how fast anything is.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta

from conftest import apply_repo, field_statuses, online_store_of, user_key
from feast.protos.feast.types.Value_pb2 import Value

from feast_redis_hexpire.synth import BATCH_FEATURES, streaming_frame

KEY = "fs:user:u0001"
TS_STREAM = "_ts:user_streaming_features"
FEATURES = ["user_batch_features:risk_segment", "user_streaming_features:tx_count_5m",
            "user_streaming_features:last_device_id"]  # fmt: skip


def wait_until(condition, timeout=8.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "expiry did not happen in time"
        time.sleep(0.02)


def statuses(store):
    return field_statuses(store.get_online_features(features=FEATURES, entity_rows=[{"user_id": "u0001"}]))


def test_streaming_fields_expire_one_by_one_then_the_key(make_repo, r):
    store = apply_repo(make_repo(stream_field_ttl_seconds=1, key_ttl_seconds=3))
    online = online_store_of(store)
    stream = store.get_feature_view("user_streaming_features")
    store.materialize_incremental(end_date=datetime.now(UTC))
    now = datetime.now(UTC)
    online.online_write_batch(
        store.config, stream, [(user_key("u0001"), {"tx_count_5m": Value(int64_val=3)}, now, None)], None
    )
    assert set(r.httl(KEY, *BATCH_FEATURES)) == {-1}
    assert 0 < r.hpttl(KEY, "tx_count_5m")[0] <= 1000
    assert 0 < r.pttl(KEY) <= 3000
    time.sleep(0.5)
    later = now + timedelta(milliseconds=500)
    row = (user_key("u0001"), {"last_device_id": Value(string_val="ios-9f02")}, later, None)
    online.online_write_batch(store.config, stream, [row], None)
    assert r.hpttl(KEY, "last_device_id")[0] > r.hpttl(KEY, "tx_count_5m")[0] > 0
    assert statuses(store) == {"user_id": ["PRESENT"], "risk_segment": ["PRESENT"],
                               "tx_count_5m": ["PRESENT"], "last_device_id": ["PRESENT"]}  # fmt: skip

    # First streaming field gone; the later one and every batch field stay.
    wait_until(lambda: r.hexists(KEY, "tx_count_5m") == 0)
    assert r.hget(KEY, "last_device_id") == b"ios-9f02"
    assert all(r.hexists(KEY, f) for f in BATCH_FEATURES)
    assert statuses(store)["tx_count_5m"] == ["NOT_FOUND"]

    # Every streaming field gone (timestamp field included): the view is NOT_FOUND, batch PRESENT.
    wait_until(lambda: r.hexists(KEY, "last_device_id") == 0)
    assert r.httl(KEY, "tx_count_5m", "last_device_id", TS_STREAM) == [-2, -2, -2]
    assert all(r.hexists(KEY, f) for f in BATCH_FEATURES)
    got = statuses(store)
    assert got["tx_count_5m"] == got["last_device_id"] == ["NOT_FOUND"]
    assert got["risk_segment"] == ["PRESENT"]

    # The key TTL removes the whole entity.
    wait_until(lambda: r.exists(KEY) == 0)
    got = statuses(store)
    assert got["risk_segment"] == got["tx_count_5m"] == ["NOT_FOUND"]


def test_key_ttl_removes_streaming_fields_too_and_push_revives_only_them(make_repo, r):
    """A batch key TTL ends the hash, streaming fields included; a later push writes only its view."""
    store = apply_repo(make_repo(stream_field_ttl_seconds=60, key_ttl_seconds=1))
    store.materialize_incremental(end_date=datetime.now(UTC))
    store.push("user_events_push", streaming_frame(["u0001"], random.Random(1)))
    assert r.httl(KEY, "tx_count_5m")[0] > 1
    wait_until(lambda: r.exists(KEY) == 0)
    store.push("user_events_push", streaming_frame(["u0001"], random.Random(2)))
    assert r.ttl(KEY) == -1  # only field TTLs: the streaming write does not set a key TTL
    got = statuses(store)
    assert got["risk_segment"] == ["NOT_FOUND"]
    assert got["tx_count_5m"] == ["PRESENT"]
