"""Writes of several batches on one connection (scripts.run_batches), against a real server."""

from datetime import UTC, datetime

import pytest
from conftest import assert_expiry, online_store_of, user_key, write_window
from feast.protos.feast.types.Value_pb2 import Value

from feast_redis_hexpire.exceptions import HexpireError
from feast_redis_hexpire.scripts import WRITE_ROWS


def _rows(n, when):
    return [(user_key(f"u{i:04d}"), {"tx_count_7d": Value(int64_val=i)}, when, None) for i in range(n)]


def test_script_flushed_between_writes_is_loaded_again_and_no_row_is_lost(store, r):
    store.config.online_store.write_batch_size = 7
    view = store.get_feature_view("user_batch_features")
    online = online_store_of(store)
    online.online_write_batch(store.config, view, _rows(5, datetime(2026, 1, 1, tzinfo=UTC)), None)
    r.script_flush()
    assert r.script_exists(WRITE_ROWS.sha) == [False]
    seen = []
    with write_window() as written:
        online.online_write_batch(
            store.config, view, _rows(50, datetime(2026, 1, 2, tzinfo=UTC)), seen.append
        )
    assert seen == [7] * 7 + [1]
    assert [int(r.hget(f"fs:user:u{i:04d}", "tx_count_7d")) for i in range(50)] == list(range(50))
    assert_expiry([r.pexpiretime(f"fs:user:u{i:04d}") for i in range(50)], written, 86_400, "fs:user:u*")


def test_rows_of_one_entity_spread_over_batches_keep_event_time_order(store, r):
    store.config.online_store.write_batch_size = 3
    view = store.get_feature_view("user_batch_features")
    rows = [
        (user_key("u0001"), {"tx_count_7d": Value(int64_val=day)}, datetime(2026, 1, day, tzinfo=UTC), None)
        for day in (5, 1, 9, 2, 8, 3, 7)  # newest (9) in the middle batch
    ]
    online_store_of(store).online_write_batch(store.config, view, rows, None)
    assert r.hget("fs:user:u0001", "tx_count_7d") == b"9"
    assert online_store_of(store).stats["skipped_not_newer"] >= 4
    # The connection went back to the pool in step: the next command on it reads its own reply.
    assert r.ping() and online_store_of(store).client(store.config).ping()


def test_write_to_an_unresponsive_server_retries_exactly_as_configured(store, r):
    """Connecting for a batched write follows `retries`: one connection per attempt, then a
    clear error naming the address; nothing is written anywhere."""
    from test_faults import Blackhole

    from feast_redis_hexpire.exceptions import StoreUnavailableError

    view = store.get_feature_view("user_batch_features")
    hole = Blackhole()
    try:
        cfg = store.config.online_store
        cfg.connection_string, cfg.retries, cfg.socket_timeout = f"127.0.0.1:{hole.port}", 2, 0.2
        with pytest.raises(StoreUnavailableError) as err:
            online_store_of(store).online_write_batch(store.config, view, _rows(3, datetime.now(UTC)), None)
        assert f"127.0.0.1:{hole.port}" in str(err.value)
        assert len(hole.accepted) == 2 + 1
    finally:
        hole.close()
    assert r.dbsize() == 0


@pytest.mark.parametrize("view_name", ["user_batch_features", "user_streaming_features"])
def test_a_bad_row_is_reported_by_row_and_the_others_are_written(store, r, view_name):
    """Rows go to the server many per script call; a row the server refuses (its key holds a
    string) fails alone: the error names it, every other row of its call and batch is written."""
    cfg = store.config.online_store
    cfg.write_batch_size, cfg.write_rows_per_call = 7, 3
    r.set("fs:user:u0004", "a string, not a hash")
    r.set("fs:user:u0011", "another string")
    view = store.get_feature_view(view_name)
    feature = "tx_count_7d" if view_name == "user_batch_features" else "tx_count_5m"
    rows = [
        (user_key(f"u{i:04d}"), {feature: Value(int64_val=i)}, datetime.now(UTC), None) for i in range(20)
    ]
    seen = []
    with pytest.raises(HexpireError) as err:
        online_store_of(store).online_write_batch(store.config, view, rows, seen.append)
    message = str(err.value)
    assert (
        "2 of 20 row(s)" in message
        and "row 4 (fs:user:u0004)" in message
        and "row 11 (fs:user:u0011)" in message
    )
    assert "WRONGTYPE" in message
    assert seen == [7, 7, 6]
    for i in range(20):
        if i not in (4, 11):
            assert r.hget(f"fs:user:u{i:04d}", feature) == str(i).encode(), i
    assert r.get("fs:user:u0004") == b"a string, not a hash"
