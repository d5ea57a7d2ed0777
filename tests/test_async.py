"""The async paths (what `feast serve` uses): push_async and get_online_features_async, also
across separate asyncio.run() calls, where Feast's built-in redis store fails."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest
from conftest import LAYOUTS as _LAYOUTS
from conftest import apply_repo, assert_expiry, field_statuses, online_store_of, user_key, write_window
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from feast_redis_hexpire.exceptions import BadValueError
from feast_redis_hexpire.synth import STREAMING_FEATURES, streaming_frame

KEY = "fs:user:u0001"
FEATURES = ["user_batch_features:risk_segment", "user_streaming_features:tx_count_5m"]


async def push_and_read(store, users, tx_count, when):
    frame = streaming_frame(users, random.Random(tx_count), when)
    frame["tx_count_5m"] = tx_count
    await store.push_async("user_events_push", frame)
    return await store.get_online_features_async(
        features=FEATURES, entity_rows=[{"user_id": u} for u in [*users, "nobody"]]
    )


def test_push_and_read_async_across_two_event_loops(store, r):
    store.materialize_incremental(end_date=datetime.now(UTC))
    now = datetime.now(UTC)
    first = asyncio.run(push_and_read(store, ["u0001"], 3, now - timedelta(seconds=10)))
    with write_window() as pushed:
        second = asyncio.run(push_and_read(store, ["u0001", "u0002"], 8, now))  # a new loop, same store
    assert first.to_dict()["tx_count_5m"] == [3, None]
    assert second.to_dict()["tx_count_5m"] == [8, 8, None]
    assert field_statuses(second)["tx_count_5m"] == ["PRESENT", "PRESENT", "NOT_FOUND"]
    assert field_statuses(second)["risk_segment"] == ["PRESENT", "PRESENT", "NOT_FOUND"]
    assert second.to_dict()["risk_segment"][0] == r.hget(KEY, "risk_segment").decode()
    assert_expiry(r.hpexpiretime(KEY, *STREAMING_FEATURES, "_ts:user_streaming_features"), pushed, 300, KEY)
    third = asyncio.run(push_and_read(store, ["u0001"], 1, now - timedelta(minutes=1)))  # older: skipped
    assert third.to_dict()["tx_count_5m"] == [8, None]


def test_async_write_keeps_event_order_and_ttls(store, r):
    online = online_store_of(store)
    view = store.get_feature_view("user_streaming_features")
    now = datetime.now(UTC)

    def row(n, ts):
        return (user_key("u0001"), {"tx_count_5m": Value(int64_val=n)}, ts, None)

    calls: list[int] = []
    rows = [row(2, now), row(1, now - timedelta(seconds=5))]
    with write_window() as written:
        asyncio.run(online.online_write_batch_async(store.config, view, rows, calls.append))
    assert calls == [2]
    assert r.hget(KEY, "tx_count_5m") == b"2"
    assert_expiry(r.hpexpiretime(KEY, "tx_count_5m"), written, 300, KEY)
    [(event_ts, values)] = asyncio.run(online.online_read_async(store.config, view, [user_key("u0001")]))
    assert event_ts == now
    assert values["tx_count_5m"].int64_val == 2
    assert asyncio.run(online.online_read_async(store.config, view, [user_key("nobody")])) == [(None, None)]


@pytest.mark.parametrize("value_layout", _LAYOUTS)
def test_async_read_is_one_hmget_per_entity(store, r):
    store.materialize_incremental(end_date=datetime.now(UTC))
    rows = [{"user_id": u} for u in ("u0001", "u0002", "u0003")]

    async def read():
        return await store.get_online_features_async(features=FEATURES, entity_rows=rows)

    asyncio.run(read())
    r.config_resetstat()
    response = asyncio.run(read())
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in r.info("commandstats").items()}
    assert calls.get("hmget") == 3, calls
    assert "hgetall" not in calls
    assert field_statuses(response)["risk_segment"] == ["PRESENT"] * 3
    assert field_statuses(response)["tx_count_5m"] == ["NOT_FOUND"] * 3


@pytest.mark.parametrize("value_layout", _LAYOUTS)
def test_initialize_and_close_per_loop(store, r):
    """The feature server's lifespan: initialize, serve, close; a later loop starts afresh."""
    online = online_store_of(store)

    async def lifespan():
        await online.initialize(store.config)
        response = await store.get_online_features_async(
            features=FEATURES, entity_rows=[{"user_id": "u0001"}]
        )
        await online.close()
        return response

    for _ in range(2):
        assert field_statuses(asyncio.run(lifespan()))["risk_segment"] == ["NOT_FOUND"]


def test_async_write_chunks_and_refuses_bad_keys(make_repo, r):
    store = apply_repo(make_repo(write_batch_size=7))
    online = online_store_of(store)
    view = store.get_feature_view("user_streaming_features")
    now = datetime.now(UTC)
    rows = [(user_key(f"a{i:02d}"), {"tx_count_5m": Value(int64_val=i)}, now, None) for i in range(50)]
    calls: list[int] = []
    with write_window() as written:
        asyncio.run(online.online_write_batch_async(store.config, view, rows, calls.append))
    assert calls == [7] * 7 + [1]
    assert len(r.keys("fs:user:a*")) == 50
    expiries = [r.hpexpiretime(f"fs:user:a{i:02d}", "tx_count_5m")[0] for i in range(50)]
    assert_expiry(expiries, written, 300, "fs:user:a*")
    r.flushall()
    bad = EntityKey(join_keys=["user_id"], entity_values=[Value(double_val=2.5)])
    with pytest.raises(BadValueError) as info:
        asyncio.run(
            online.online_write_batch_async(store.config, view, [rows[0], (bad, {}, now, None)], None)
        )
    assert "user_streaming_features" in str(info.value)
    assert r.dbsize() == 0


@pytest.mark.parametrize("value_layout", _LAYOUTS)
@pytest.mark.parametrize(("mode", "status"), [("flag", "OUTSIDE_MAX_AGE"), ("drop", "NOT_FOUND")])
def test_async_read_applies_the_freshness_check(make_repo, r, mode, status):
    store = apply_repo(make_repo(freshness_check=mode))
    store.materialize_incremental(end_date=datetime.now(UTC))
    old = streaming_frame(["u0001"], random.Random(1), datetime.now(UTC) - timedelta(hours=1))
    response = asyncio.run(push_and_read(store, ["u0001"], 5, old["event_timestamp"][0].to_pydatetime()))
    statuses = field_statuses(response)
    assert statuses["tx_count_5m"] == [status, "NOT_FOUND"]
    assert statuses["risk_segment"] == ["PRESENT", "NOT_FOUND"]
