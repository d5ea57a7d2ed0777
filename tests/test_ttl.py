"""The two TTL layers observed for real, with short TTLs (2 s per streaming field, 6 s per key).

Nothing here depends on how fast the machine is: the expiry times the writes set are checked as
absolute times (HPEXPIRETIME / PEXPIRETIME against the write's time bounds), each read's expected
status follows from those times and the read's own time bounds, and waits poll the server until
the expiry happened, with a deadline.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from conftest import (
    apply_repo,
    assert_expiry,
    field_statuses,
    now_ms,
    online_store_of,
    user_key,
    wait_for,  # fmt: skip
    write_window,
)
from feast.protos.feast.types.Value_pb2 import Value

from feast_redis_hexpire.synth import BATCH_FEATURES, streaming_frame

KEY = "fs:user:u0001"
TS_STREAM = "_ts:user_streaming_features"
FEATURES = ["user_batch_features:risk_segment", "user_streaming_features:tx_count_5m",
            "user_streaming_features:last_device_id"]  # fmt: skip
FIELD_TTL, KEY_TTL = 2, 6


def statuses(store):
    return field_statuses(store.get_online_features(features=FEATURES, entity_rows=[{"user_id": "u0001"}]))


def read_against(store, expiries: dict[str, int]) -> dict[str, list[str]]:
    """Read, and check every feature in ``expiries`` (name -> absolute expiry ms) is PRESENT if the
    read ended before its expiry and NOT_FOUND if it began after (a read that straddles the expiry
    instant may see either)."""
    before = now_ms()
    got = statuses(store)
    after = now_ms() + 1
    for feature, expiry in expiries.items():
        if after < expiry:
            assert got[feature] == ["PRESENT"], (feature, got)
        elif before >= expiry:
            assert got[feature] == ["NOT_FOUND"], (feature, got)
    return got


def test_streaming_fields_expire_one_by_one_then_the_key(make_repo, r):
    store = apply_repo(make_repo(stream_field_ttl_seconds=FIELD_TTL, key_ttl_seconds=KEY_TTL))
    online = online_store_of(store)
    stream = store.get_feature_view("user_streaming_features")
    with write_window() as batch_write:
        store.materialize_incremental(end_date=datetime.now(UTC))
    now = datetime.now(UTC)
    with write_window() as first:
        row = (user_key("u0001"), {"tx_count_5m": Value(int64_val=3)}, now, None)
        online.online_write_batch(store.config, stream, [row], None)
    assert set(r.httl(KEY, *BATCH_FEATURES)) == {-1}
    (first_expiry,) = r.hpexpiretime(KEY, "tx_count_5m")
    assert_expiry([first_expiry], first, FIELD_TTL, "tx_count_5m")
    key_expiry = r.pexpiretime(KEY)
    assert_expiry([key_expiry], batch_write, KEY_TTL, "key")

    # A later write of another field of the view gets a later expiry (its own write's bounds).
    wait_for("the clock to pass the first write", lambda: now_ms() > first.after)
    later = now + timedelta(milliseconds=500)
    with write_window() as second:
        row = (user_key("u0001"), {"last_device_id": Value(string_val="ios-9f02")}, later, None)
        online.online_write_batch(store.config, stream, [row], None)
    (second_expiry,) = r.hpexpiretime(KEY, "last_device_id")
    assert_expiry([second_expiry], second, FIELD_TTL, "last_device_id")
    assert second_expiry > first_expiry
    expiries = {"tx_count_5m": first_expiry, "last_device_id": second_expiry, "risk_segment": key_expiry}
    read_against(store, expiries)

    # First streaming field gone; the later one and every batch field stay until their expiry.
    wait_for("tx_count_5m to expire", lambda: not r.hexists(KEY, "tx_count_5m"), timeout=FIELD_TTL + 30)
    assert now_ms() >= first_expiry  # gone by its expiry, not earlier
    device, batch = r.hget(KEY, "last_device_id"), [r.hexists(KEY, f) for f in BATCH_FEATURES]
    if now_ms() < second_expiry:  # read before its expiry: still there
        assert device == b"ios-9f02"
    if now_ms() < key_expiry:
        assert all(batch)
    read_against(store, expiries)

    # Every streaming field gone (timestamp field included): the view is NOT_FOUND, batch PRESENT
    # until the key's own expiry.
    wait_for("last_device_id to expire", lambda: not r.hexists(KEY, "last_device_id"), timeout=FIELD_TTL + 30)
    assert now_ms() >= second_expiry
    assert r.hexists(KEY, "tx_count_5m") == r.hexists(KEY, TS_STREAM) == 0
    batch = [r.hexists(KEY, f) for f in BATCH_FEATURES]
    if now_ms() < key_expiry:
        assert all(batch)
    got = read_against(store, expiries)
    assert got["tx_count_5m"] == got["last_device_id"] == ["NOT_FOUND"]

    # The key TTL removes the whole entity.
    wait_for("the key to expire", lambda: r.exists(KEY) == 0, timeout=KEY_TTL + 30)
    assert now_ms() >= key_expiry
    got = statuses(store)
    assert got["risk_segment"] == got["tx_count_5m"] == ["NOT_FOUND"]


def test_key_ttl_removes_streaming_fields_too_and_push_revives_only_them(make_repo, r):
    """A batch key TTL ends the hash, streaming fields included; a later push writes only its view.

    The push comes first (60 s field TTLs), then the batch write pins a 1 s key TTL on that hash:
    no race between a short key TTL and the push (pushed into an already expired key, the fields
    would start a new hash without a key TTL)."""
    store = apply_repo(make_repo(stream_field_ttl_seconds=60, key_ttl_seconds=1))
    with write_window() as push:
        store.push("user_events_push", streaming_frame(["u0001"], random.Random(1)))
    with write_window() as batch_write:
        store.materialize_incremental(end_date=datetime.now(UTC))
    field_expiry = r.hpexpiretime(KEY, "tx_count_5m")
    key_expiry = r.pexpiretime(KEY)
    if key_expiry != -2:  # -2: the 1 s key TTL has already ended the hash
        assert_expiry([key_expiry], batch_write, 1, "key")
        assert_expiry(field_expiry, push, 60, "tx_count_5m")  # it would outlive the key
    wait_for("the key to expire", lambda: r.exists(KEY) == 0, timeout=30)
    assert now_ms() >= batch_write.before + 1000
    assert now_ms() < push.before + 60_000  # the fields went with the key, not by their own TTL
    store.push("user_events_push", streaming_frame(["u0001"], random.Random(2)))
    assert r.ttl(KEY) == -1  # only field TTLs: the streaming write does not set a key TTL
    got = statuses(store)
    assert got["risk_segment"] == ["NOT_FOUND"]
    assert got["tx_count_5m"] == ["PRESENT"]
