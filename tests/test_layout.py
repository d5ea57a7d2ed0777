"""Key names: readable, deterministic, injective, glob-safe, and order-independent for compound keys."""

from __future__ import annotations

import fnmatch
from datetime import UTC, datetime

import pytest
from conftest import apply_compound_view, online_store_of, user_key
from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.types import Int64
from hypothesis import given
from hypothesis import strategies as st

from feast_redis_hexpire import layout

SPECIAL = [
    ":",
    "+",
    "{",
    "}",
    "*",
    "?",
    "[",
    "]",
    "\\",
    "%",
    "é",
    "用户",
    "🙂",
    "",
    " ",
    "\n",
    "%3A",
    "a:b",
    "a%3Ab",
]
_GLOB_ACTIVE = set("*?[]\\")


def test_sample_repo_key_is_fs_user_u0001(store, r):
    store.materialize_incremental(end_date=datetime.now(UTC))
    view = store.get_feature_view("user_batch_features")
    assert online_store_of(store).key_for(store.config, view, user_key("u0001")) == b"fs:user:u0001"
    assert r.type("fs:user:u0001") == b"hash"
    fields = {f.decode() for f in r.hkeys("fs:user:u0001")}
    assert fields == {
        "_ts:user_batch_features", "country_iso", "risk_segment", "account_age_days",
        "tx_count_7d", "avg_amount_30d", "chargeback_count_180d",
    }  # fmt: skip
    assert sorted(k.decode() for k in r.keys("*"))[:2] == ["fs:user:u0001", "fs:user:u0002"]
    assert len(r.keys("*")) == 20


@pytest.mark.parametrize("text", SPECIAL)
def test_special_ids_escape_to_plain_glob_free_text(text):
    escaped = layout.escape_id(text)
    assert not (set(escaped) & (_GLOB_ACTIVE | set(":+{}")))
    # A key holding this id is matched literally by the entity's SCAN pattern and nothing wider.
    key = f"fs:user:{escaped}"
    assert fnmatch.fnmatchcase(key, "fs:user:*")


def test_special_ids_give_distinct_keys():
    keys = [layout.KeyBuilder("fs:", ["user"]).key(user_key(t)) for t in SPECIAL]
    assert len(set(keys)) == len(SPECIAL)


@given(st.text(), st.text())
def test_escape_is_injective(a, b):
    if a != b:
        assert layout.escape_id(a) != layout.escape_id(b)


@given(
    st.lists(st.text(max_size=6), min_size=2, max_size=2),
    st.lists(st.text(max_size=6), min_size=2, max_size=2),
)
def test_compound_keys_are_injective(a, b):
    builder = layout.KeyBuilder("fs:", ["merchant", "user"])

    def key(ids: list[str]) -> bytes:
        return builder.key(
            EntityKey(join_keys=["merchant_id", "user_id"], entity_values=[Value(string_val=i) for i in ids])
        )

    if a != b:
        assert key(a) != key(b)


def test_compound_key_is_independent_of_join_key_order():
    builder = layout.KeyBuilder("fs:", ["merchant", "user"])
    forward = EntityKey(
        join_keys=["merchant_id", "user_id"],
        entity_values=[Value(string_val="m7"), Value(string_val="u0001")],
    )
    backward = EntityKey(
        join_keys=["user_id", "merchant_id"],
        entity_values=[Value(string_val="u0001"), Value(string_val="m7")],
    )
    assert builder.key(forward) == builder.key(backward) == b"fs:merchant_id+user_id:m7:u0001"


def test_int_and_bytes_ids_are_readable():
    builder = layout.KeyBuilder("fs:", ["user"])
    assert builder.key(EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=42)])) == b"fs:user:42"
    assert builder.key(EntityKey(join_keys=["user_id"], entity_values=[Value(int32_val=-3)])) == b"fs:user:-3"
    raw = EntityKey(join_keys=["user_id"], entity_values=[Value(bytes_val=b"\x00\xff")])
    assert builder.key(raw) == b"fs:user:0x00ff"


def test_scan_pattern_of_a_glob_like_prefix_matches_only_itself(r):
    pattern = layout.scan_pattern("f*[x]?:", "user")
    assert pattern == "f\\*\\[x\\]\\?:user:*"
    for key in ("f*[x]?:user:u1", "fs:user:u1", "fx?:user:u1", "f*[x]?:userx:u1", "f*x?:user:u1"):
        r.set(key, 1)
    assert set(r.scan_iter(match=pattern, count=100)) == {b"f*[x]?:user:u1"}


def test_special_ids_round_trip_through_redis(store, r):
    """Each special id gets its own hash, found again by online_read, with SCAN seeing them all."""
    online = online_store_of(store)
    view = store.get_feature_view("user_batch_features")
    ts = datetime.now(UTC)
    rows = [
        (user_key(t), {"risk_segment": Value(string_val=f"v{i}")}, ts, None) for i, t in enumerate(SPECIAL)
    ]
    online.online_write_batch(store.config, view, rows, None)
    assert len(r.keys("*")) == len(SPECIAL)
    read = online.online_read(store.config, view, [row[0] for row in rows], ["risk_segment"])
    assert [values["risk_segment"].string_val for _, values in read] == [f"v{i}" for i in range(len(SPECIAL))]
    scanned = set(r.scan_iter(match=layout.scan_pattern("fs:", "user"), count=1000))
    assert len(scanned) == len(SPECIAL)


def test_compound_entity_view_round_trips(store, r):
    """A two-entity view writes `fs:merchant_id+user_id:<m>:<u>` whatever order the keys come in."""
    view = apply_compound_view(store)
    online = online_store_of(store)
    ts = datetime.now(UTC)
    key = EntityKey(
        join_keys=["user_id", "merchant_id"], entity_values=[Value(string_val="u:1"), Value(string_val="m*7")]
    )
    online.online_write_batch(store.config, view, [(key, {"pair_tx": Value(int64_val=5)}, ts, None)], None)
    assert r.hget("fs:merchant_id+user_id:m%2A7:u%3A1", "pair_tx") == b"5"
    result = store.get_online_features(
        features=["user_merchant:pair_tx"], entity_rows=[{"merchant_id": "m*7", "user_id": "u:1"}]
    ).to_dict()
    assert result["pair_tx"] == [5]


def test_int64_entity_through_write_to_online_store(store, r):
    """An int join key: key `fs:driver:42`, written from a DataFrame and read back by Feast."""
    import pandas as pd

    driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
    source = FileSource(name="driver_source", path="unused.parquet", timestamp_field="event_timestamp")
    schema = [Field(name="trips_today", dtype=Int64)]
    view = FeatureView(name="driver_stats", entities=[driver], schema=schema, source=source, online=True)
    store.apply([driver, view])
    frame = pd.DataFrame(
        {"driver_id": [42, -7], "trips_today": [3, 4], "event_timestamp": [pd.Timestamp.now(tz="UTC")] * 2}
    )
    store.write_to_online_store("driver_stats", frame)
    assert r.hget("fs:driver:42", "trips_today") == b"3"
    assert r.hget("fs:driver:-7", "trips_today") == b"4"
    got = store.get_online_features(
        features=["driver_stats:trips_today"],
        entity_rows=[{"driver_id": 42}, {"driver_id": -7}, {"driver_id": 1}],
    ).to_dict()
    assert got["trips_today"] == [3, 4, None]


_ID_VALUES = (
    st.text(max_size=8).map(lambda t: Value(string_val=t))
    | st.sampled_from(SPECIAL).map(lambda t: Value(string_val=t))
    | st.integers(-(2**63), 2**63 - 1).map(lambda n: Value(int64_val=n))
    | st.binary(max_size=4).map(lambda b: Value(bytes_val=b))
)


@given(st.lists(_ID_VALUES, max_size=8), st.sampled_from([["user"], ["merchant", "user"]]))
def test_keys_of_a_batch_are_each_entity_keys_key(ids, entities):
    """KeyBuilder.keys (the write path's short path for one string id) gives what key gives."""
    builder = layout.KeyBuilder("fs:", entities)
    join_keys = [f"{e}_id" for e in entities]
    entity_keys = [EntityKey(join_keys=join_keys, entity_values=[value] * len(join_keys)) for value in ids]
    assert builder.keys(entity_keys) == [builder.key(k) for k in entity_keys]
