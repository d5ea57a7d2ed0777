"""Reads: NOT_FOUND for missing entities and expired views, one HMGET per entity for all views,
the read-time freshness check."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from conftest import LAYOUTS as _LAYOUTS
from conftest import apply_repo, field_statuses, online_store_of, stored, user_key, user_view, wait_for
from feast.protos.feast.types.Value_pb2 import Value
from feast.types import Int64, String

from feast_redis_hexpire.exceptions import BadValueError
from feast_redis_hexpire.synth import STREAMING_FEATURES, streaming_frame

KEY = "fs:user:u0001"
FEATURES = [
    "user_batch_features:risk_segment",
    "user_batch_features:avg_amount_30d",
    "user_streaming_features:tx_count_5m",
    "user_streaming_features:last_device_id",
]

pytestmark = pytest.mark.parametrize("value_layout", _LAYOUTS)


def load(store, users=("u0001", "u0002"), pushed_at=None):
    store.materialize_incremental(end_date=datetime.now(UTC))
    store.push("user_events_push", streaming_frame(list(users), random.Random(5), pushed_at))


def read(store, users, features=FEATURES):
    return store.get_online_features(features=features, entity_rows=[{"user_id": u} for u in users])


def test_missing_entity_is_not_found(store, r):
    load(store)
    response = read(store, ["u0001", "nobody"])
    statuses = field_statuses(response)
    for feature in ("risk_segment", "avg_amount_30d", "tx_count_5m", "last_device_id"):
        assert statuses[feature] == ["PRESENT", "NOT_FOUND"], feature
    values = response.to_dict()
    assert values["risk_segment"][0] == stored(store, r, KEY, "user_batch_features", "risk_segment").decode()
    assert values["avg_amount_30d"][0] == float(
        stored(store, r, KEY, "user_batch_features", "avg_amount_30d")
    )
    assert values["risk_segment"][1] is None


def test_online_read_returns_none_for_a_missing_entity(store, r):
    load(store)
    view = store.get_feature_view("user_batch_features")
    rows = online_store_of(store).online_read(store.config, view, [user_key("nobody"), user_key("u0001")])
    assert rows[0] == (None, None)
    event_ts, values = rows[1]
    assert event_ts is not None and values is not None
    assert (
        values["risk_segment"].string_val
        == stored(store, r, KEY, "user_batch_features", "risk_segment").decode()
    )


def test_view_with_expired_fields_is_not_found_while_the_other_is_present(store, r):
    load(store)
    fields = [*STREAMING_FEATURES, "_ts:user_streaming_features", "user_streaming_features"]
    r.hpexpire(KEY, 1, *fields)  # real expiry, 1 ms (either layout's fields)
    wait_for(
        "the streaming fields to expire",
        lambda: stored(store, r, KEY, "user_streaming_features", "tx_count_5m") is None,
        timeout=10,
    )
    statuses = field_statuses(read(store, ["u0001", "u0002"]))
    assert statuses["risk_segment"] == ["PRESENT", "PRESENT"]
    assert statuses["avg_amount_30d"] == ["PRESENT", "PRESENT"]
    assert statuses["tx_count_5m"] == ["NOT_FOUND", "PRESENT"]
    assert statuses["last_device_id"] == ["NOT_FOUND", "PRESENT"]


def _commandstats(r):
    stats = r.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


@pytest.mark.parametrize("users", [["u0001"], ["u0001", "u0002", "nobody"], ["u0003", "u0003", "u0004"]])
def test_one_hmget_per_entity_for_all_views_and_no_hgetall(store, r, users):
    load(store, users=("u0001", "u0002", "u0003"))
    read(store, users)  # warm-up: registry and clients are cached after the first read
    r.config_resetstat()
    response = read(store, users)
    calls = _commandstats(r)
    assert calls.get("hmget") == len(set(users)), calls
    assert "hgetall" not in calls and "hget" not in calls, calls
    assert field_statuses(response)["tx_count_5m"][0] in ("PRESENT", "NOT_FOUND")


def test_feature_service_reads_one_hmget_per_entity(store, r):
    load(store)
    service = store.get_feature_service("fraud_model")
    read(store, ["u0001"], features=service)
    r.config_resetstat()
    response = store.get_online_features(
        features=service, entity_rows=[{"user_id": "u0001"}, {"user_id": "u0002"}]
    )
    assert _commandstats(r).get("hmget") == 2
    statuses = field_statuses(response)
    assert len(statuses) == 6  # user_id + the service's five features
    assert all(s == ["PRESENT", "PRESENT"] for s in statuses.values()), statuses
    assert response.to_dict()["tx_count_5m"][0] == int(
        stored(store, r, KEY, "user_streaming_features", "tx_count_5m")
    )


@pytest.mark.parametrize(
    ("mode", "streaming_status"),
    [("off", "PRESENT"), ("flag", "OUTSIDE_MAX_AGE"), ("drop", "NOT_FOUND")],
)
def test_freshness_check(make_repo, r, mode, streaming_status):
    """The streaming view's ttl is 5 min; an event an hour old is stale, the batch row is not."""
    store = apply_repo(make_repo(freshness_check=mode))
    load(store, users=("u0001",), pushed_at=datetime.now(UTC) - timedelta(hours=1))
    assert (
        stored(store, r, KEY, "user_streaming_features", "tx_count_5m") is not None
    )  # it is stored (the TTL counts from the write)
    response = read(store, ["u0001"])
    statuses = field_statuses(response)
    assert statuses["tx_count_5m"] == [streaming_status]
    assert statuses["last_device_id"] == [streaming_status]
    assert statuses["risk_segment"] == ["PRESENT"]
    values = response.to_dict()
    if mode == "drop":
        assert values["tx_count_5m"] == [None]
    else:
        assert values["tx_count_5m"] == [int(stored(store, r, KEY, "user_streaming_features", "tx_count_5m"))]
    assert values["risk_segment"] == [stored(store, r, KEY, "user_batch_features", "risk_segment").decode()]


@pytest.mark.parametrize("ttl", [None, timedelta(0)], ids=["none", "zero"])
def test_a_view_without_ttl_is_never_stale(store, r, ttl):
    """ttl None or 0 means forever: even `drop` keeps a year-old value."""
    store.config.online_store.freshness_check = "drop"  # config is read on every call
    store.apply([user_view("forever", {"forever_f": Int64}, ttl=ttl)])
    view = store.get_feature_view("forever")
    old = datetime.now(UTC) - timedelta(days=365)
    row = (user_key("u0001"), {"forever_f": Value(int64_val=1)}, old, None)
    online_store_of(store).online_write_batch(store.config, view, [row], None)
    response = read(store, ["u0001"], features=["forever:forever_f"])
    assert field_statuses(response)["forever_f"] == ["PRESENT"]
    assert response.to_dict()["forever_f"] == [1]


def test_value_stored_under_an_older_feature_type_gives_a_clear_error(store, r):
    """A feature re-declared String -> Int64 while Redis still holds text: the read fails with
    BadValueError (not a bare int() error, not a silent NOT_FOUND that would hide the stale
    data), naming the view, the feature, the key, the stored value and the remedy; and the
    failed read changes nothing in Redis."""
    store.apply([user_view("retyped", {"seg": String})])
    now = datetime.now(UTC)
    row = (user_key("u0001"), {"seg": Value(string_val="low")}, now, None)
    online_store_of(store).online_write_batch(store.config, store.get_feature_view("retyped"), [row], None)
    store.apply([user_view("retyped", {"seg": Int64})])
    before = r.hgetall(KEY)
    with pytest.raises(BadValueError) as caught:
        read(store, ["u0001"], features=["retyped:seg"])
    message = str(caught.value)
    for part in ("feature view 'retyped'", "feature 'seg'", KEY, "b'low'", "materialize the view again"):
        assert part in message, message
    assert r.hgetall(KEY) == before


def test_flagged_staleness_covers_repeated_entities_and_full_names(make_repo, r):
    store = apply_repo(make_repo(freshness_check="flag"))
    load(store, users=("u0001",), pushed_at=datetime.now(UTC) - timedelta(hours=1))
    response = store.get_online_features(
        features=FEATURES,
        entity_rows=[{"user_id": "u0001"}, {"user_id": "nobody"}, {"user_id": "u0001"}],
        full_feature_names=True,
    )
    statuses = field_statuses(response)
    assert statuses["user_streaming_features__tx_count_5m"] == [
        "OUTSIDE_MAX_AGE",
        "NOT_FOUND",
        "OUTSIDE_MAX_AGE",
    ]
    assert statuses["user_batch_features__risk_segment"] == ["PRESENT", "NOT_FOUND", "PRESENT"]
    values = response.to_dict()["user_streaming_features__tx_count_5m"]
    assert values[0] == values[2] == int(stored(store, r, KEY, "user_streaming_features", "tx_count_5m"))
