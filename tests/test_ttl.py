"""The two TTL layers observed for real, with short TTLs (1 s per streaming field, 3 s per key).

Waits poll the server until the expected expiry happened, with a generous deadline; nothing here
asserts how fast anything is.
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from conftest import apply_repo, field_statuses, online_store_of, user_key
from feast.protos.feast.types.Value_pb2 import Value
from feast.repo_config import FeastConfigError
from test_security import documented_acl

from feast_redis_hexpire.constants import MAX_TTL_SECONDS
from feast_redis_hexpire.exceptions import BadValueError, ConfigError, FieldTTLError
from feast_redis_hexpire.scripts import FIELD_TTL_ERROR, WRITE_ROWS
from feast_redis_hexpire.synth import BATCH_FEATURES, STREAMING_FEATURES, streaming_frame

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


# ---- no error path leaves a streaming field without its TTL (issue 8, item 1) ----

HUGE_TTL = 300_000_000_000  # seconds: past Redis 8.2's latest field expiry (2^46 - 1 ms since the epoch)


def stream_rows(*users, when=None, n=1):
    when = when or datetime.now(UTC)
    values = {"tx_count_5m": Value(int64_val=n), "last_device_id": Value(string_val=f"dev-{n}")}
    return [(user_key(u), dict(values), when, None) for u in users]


def fields_without_ttl(r, key, fields):
    """The fields of ``fields`` present in ``key`` with no TTL (the forbidden state)."""
    return [f for f, t in zip(fields, r.httl(key, *fields)) if t == -1]


@pytest.mark.parametrize("setting", ["stream_field_ttl_seconds", "key_ttl_seconds"])
def test_ttl_setting_beyond_what_redis_accepts_fails_at_load_naming_it(make_repo, r, setting):
    repo = make_repo(**{setting: HUGE_TTL})
    with pytest.raises(FeastConfigError) as info:
        apply_repo(repo)
    assert setting in str(info.value) and f"{MAX_TTL_SECONDS}" in str(info.value)
    assert r.dbsize() == 0


def test_the_largest_ttls_allowed_are_accepted_by_the_server(make_repo, r):
    """The bound is not tighter than needed: at MAX_TTL_SECONDS both servers take the TTLs."""
    store = apply_repo(make_repo(stream_field_ttl_seconds=MAX_TTL_SECONDS, key_ttl_seconds=MAX_TTL_SECONDS))
    online = online_store_of(store)
    before_ms = int(time.time() * 1000)
    online.online_write_batch(store.config, store.get_feature_view("user_streaming_features"),
                              stream_rows("u0001"), None)  # fmt: skip
    store.materialize_incremental(end_date=datetime.now(UTC))
    after_ms = int(time.time() * 1000)
    for at in r.hpexpiretime(KEY, "tx_count_5m", TS_STREAM):
        assert before_ms + MAX_TTL_SECONDS * 1000 <= at <= after_ms + MAX_TTL_SECONDS * 1000
    assert before_ms + MAX_TTL_SECONDS * 1000 <= r.pexpiretime(KEY) <= after_ms + MAX_TTL_SECONDS * 1000


def test_ttl_setting_changed_after_load_is_refused_at_write_naming_it(store, r):
    store.config.online_store.stream_field_ttl_seconds = HUGE_TTL  # a program changing the config
    with pytest.raises(ConfigError) as info:
        store.push("user_events_push", streaming_frame(["u0001"], random.Random(1)))
    assert "stream_field_ttl_seconds" in str(info.value)
    assert r.dbsize() == 0


def _hash_state(r, key):
    """Fields, values and absolute field expiries of ``key``, and its key expiry."""
    values = r.hgetall(key)
    expiries = r.hpexpiretime(key, *values) if values else []
    return values, dict(zip(values, expiries)), r.pexpiretime(key)


@pytest.mark.parametrize("hsetex", ["1", "0"], ids=["hsetex", "hset+hpexpireat"])
@pytest.mark.parametrize("field_ttl_ms", [HUGE_TTL * 1000, 2**62], ids=["300e9s", "2^62ms"])
def test_write_script_refuses_an_expiry_past_the_limit_and_leaves_the_hash_as_it_was(
    store, r, field_ttl_ms, hsetex
):
    """The script itself (whatever a client sends), on both of its paths (HSETEX, and HSET +
    HPEXPIREAT for Redis 7.4): an expiry past what Redis accepts fails the row before anything
    is written, on both servers, also over older values with TTLs; the other row is written."""
    online = online_store_of(store)
    stream = store.get_feature_view("user_streaming_features")
    online.online_write_batch(store.config, stream, stream_rows("u0001", n=1), None)
    before = _hash_state(r, KEY)
    ts_us = int(time.time() * 1_000_000) + 1_000_000
    head = [TS_STREAM, 0, field_ttl_ms, 0, hsetex]
    bad_row = [ts_us, 0, 2, "tx_count_5m", "7", "new_f", "x"]
    good_row = [ts_us, int(time.time() * 1000) + 60_000, 1, "tx_count_5m", "8"]  # by event time
    got = r.eval(WRITE_ROWS.lua, 2, KEY, "fs:user:u0002", *head, *bad_row, *good_row)
    assert got[0].startswith(FIELD_TTL_ERROR.encode()) and b"nothing of the row was written" in got[0]
    assert got[1] == 1
    assert _hash_state(r, KEY) == before
    assert r.hget("fs:user:u0002", "tx_count_5m") == b"8" and r.httl("fs:user:u0002", "tx_count_5m")[0] > 0


def test_event_time_whose_field_expiry_is_past_the_limit_is_refused_before_writing(make_repo, r):
    store = apply_repo(make_repo(ttl_from="event"))
    stream = store.get_feature_view("user_streaming_features")
    rows = stream_rows("u0001") + stream_rows("u0002", when=datetime(4200, 1, 1, tzinfo=UTC))
    with pytest.raises(BadValueError) as info:
        online_store_of(store).online_write_batch(store.config, stream, rows, None)
    assert (
        "row 1" in str(info.value) and "4200" in str(info.value) and "nothing was written" in str(info.value)
    )
    assert r.dbsize() == 0


def test_acl_refusing_field_ttls_writes_nothing_of_the_row(store, r, server):
    """A user allowed HSET but none of the commands that set a field TTL (HSETEX, HPEXPIRE,
    HPEXPIREAT): the row fails before anything is written, the hash (older streaming values
    with their TTLs) stays exactly as it was."""
    online = online_store_of(store)
    stream = store.get_feature_view("user_streaming_features")
    online.online_write_batch(store.config, stream, stream_rows("u0001", n=1), None)
    before = _hash_state(r, KEY)
    user = f"nottl-{uuid.uuid4().hex[:8]}"
    refused = ("+hpexpire", "+hpexpireat", "+hsetex")
    r.execute_command(*[t for t in documented_acl(user, "pw") if t not in refused])
    try:
        cfg = store.config.online_store
        cfg.connection_string = f"{server.connection_string},username={user},password=pw"
        later = datetime.now(UTC) + timedelta(seconds=1)
        with pytest.raises(FieldTTLError) as info:
            online.online_write_batch(
                store.config, stream, stream_rows("u0001", "u0002", when=later, n=2), None
            )
        assert "no permissions to run the 'hsetex' command" in str(info.value)
        assert "nothing of the row was written" in str(info.value) and "2 of 2 row(s)" in str(info.value)
    finally:
        r.execute_command("ACL", "DELUSER", user)
    assert _hash_state(r, KEY) == before
    assert not r.exists("fs:user:u0002")


# ---- key_ttl_seconds: null removes a key TTL set before (issue 8, item 3) ----


def test_null_key_ttl_removes_the_key_ttl_of_earlier_writes(make_repo, r):
    """`null` means keys without a key TTL: the next batch write PERSISTs keys that had one, also
    when its rows are skipped as not newer (as the key TTL is re-pinned for them)."""
    store = apply_repo(make_repo())
    end = datetime.now(UTC)
    store.materialize(start_date=end - timedelta(days=1), end_date=end)
    assert r.ttl(KEY) > 86_000
    store.push("user_events_push", streaming_frame(["u0001"], random.Random(1)))
    store.config.online_store.key_ttl_seconds = None
    store.materialize(start_date=end - timedelta(days=1), end_date=end)  # the same rows: all skipped
    assert r.ttl(KEY) == -1 and r.ttl("fs:user:u0020") == -1
    assert all(t > 0 for t in r.httl(KEY, *STREAMING_FEATURES, TS_STREAM))  # field TTLs untouched
    store.push("user_events_push", streaming_frame(["u0001"], random.Random(2)))
    assert r.ttl(KEY) == -1  # a streaming write leaves the key TTL as it is


# ---- the view's _ts field never expires before a field it dates (issue 8, item 4) ----


def _expiry(r, key, field):
    return r.hpexpiretime(key, field)[0]


def test_skip_dedup_older_row_with_event_ttl_keeps_ts_alive_as_long_as_the_values(make_repo, r):
    store = apply_repo(make_repo(skip_dedup=True, ttl_from="event"))
    online = online_store_of(store)
    stream = store.get_feature_view("user_streaming_features")
    now = datetime.now(UTC)
    full = streaming_frame(["u0001"], random.Random(1), now)
    store.push("user_events_push", full)  # every field, expiring at now + 300 s
    newest = max(r.hpexpiretime(KEY, *STREAMING_FEATURES))
    older = [(user_key("u0001"), {"tx_count_5m": Value(int64_val=1)}, now - timedelta(seconds=100), None)]
    online.online_write_batch(
        store.config, stream, older, None
    )  # skip_dedup: written, expiring 100 s earlier
    assert r.hget(KEY, "tx_count_5m") == b"1"
    assert _expiry(r, KEY, "tx_count_5m") < newest
    assert _expiry(r, KEY, TS_STREAM) >= max(r.hpexpiretime(KEY, *STREAMING_FEATURES)) == newest
    assert r.hget(KEY, TS_STREAM) == str(int((now - timedelta(seconds=100)).timestamp() * 1e6)).encode()


def test_shorter_field_ttl_after_a_setting_change_keeps_ts_alive_as_long_as_the_values(store, r):
    store.push("user_events_push", streaming_frame(["u0001"], random.Random(1)))  # 300 s
    longest = max(r.hpexpiretime(KEY, *STREAMING_FEATURES))
    store.config.online_store.stream_field_ttl_seconds = 60
    later = [(user_key("u0001"), {"tx_count_5m": Value(int64_val=1)}, datetime.now(UTC), None)]
    online_store_of(store).online_write_batch(store.config, store.get_feature_view("user_streaming_features"),
                                              later, None)  # fmt: skip
    assert _expiry(r, KEY, "tx_count_5m") < longest
    assert _expiry(r, KEY, TS_STREAM) == longest
