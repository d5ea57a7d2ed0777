"""The two TTL layers observed for real, with short TTLs (2 s per streaming field, 6 s per key).

Nothing here depends on how fast the machine is: the expiry times the writes set are checked as
absolute times (HPEXPIRETIME / PEXPIRETIME against the write's time bounds), each read's expected
status follows from those times and the read's own time bounds, and waits poll the server until
the expiry happened, with a deadline.
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
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
FIELD_TTL, KEY_TTL = 2, 6


def statuses(store):
    return field_statuses(store.get_online_features(features=FEATURES, entity_rows=[{"user_id": "u0001"}]))


def read_against(store, expiries: dict[str, int]) -> dict[str, list[str]]:
    """Read, and check every feature in ``expiries`` (name -> absolute expiry ms) is PRESENT if the
    read ended before its expiry and NOT_FOUND if it began after the expiry's millisecond (a read
    that straddles it may see either)."""
    before = now_ms()
    got = statuses(store)
    after = now_ms() + 1
    for feature, expiry in expiries.items():
        if after < expiry:
            assert got[feature] == ["PRESENT"], (feature, got)
        elif before > expiry:  # a field expiring at ms T is still served at T (expiry < now)
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
    head = [TS_STREAM, 0, field_ttl_ms, 0, hsetex, len(STREAMING_FEATURES)]
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


@pytest.mark.parametrize("hsetex", [True, False], ids=["hsetex", "hset+hpexpireat"])
def test_complete_row_after_a_shorter_field_ttl_gives_ts_the_expiry_of_every_field(
    store, r, hsetex, monkeypatch
):
    """A row with every feature of the view skips reading the stored "_ts" expiry: after it, every
    feature field expires at the row's expiry, and "_ts" with them, not later (the partial row
    above is the case that must keep the later one). On both write paths of the script."""
    monkeypatch.setattr(online_store_of(store), "_hsetex", lambda config: hsetex)
    store.push("user_events_push", streaming_frame(["u0001"], random.Random(1)))  # 300 s
    longest = max(r.hpexpiretime(KEY, *STREAMING_FEATURES))
    store.config.online_store.stream_field_ttl_seconds = 60
    store.push("user_events_push", streaming_frame(["u0001"], random.Random(2)))  # 60 s, complete
    expiries = r.hpexpiretime(KEY, *STREAMING_FEATURES, TS_STREAM)
    assert len(set(expiries)) == 1 and expiries[0] < longest
