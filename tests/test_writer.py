"""The direct streaming writer: rows of a view through the store's own write path, as a push."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pytest
from conftest import LAYOUTS as _LAYOUTS
from conftest import online_store_of

from feast_redis_hexpire.constants import TAG_FIELD_TTL
from feast_redis_hexpire.exceptions import BadValueError, ConfigError
from feast_redis_hexpire.synth import STREAMING_FEATURES, streaming_frame
from feast_redis_hexpire.writer import StreamWriter

VIEW = "user_streaming_features"
TTL_MS = 300_000
FIELDS = [*STREAMING_FEATURES, f"_ts:{VIEW}"]


def row_of(user: str, seed: int, when: datetime) -> dict:
    return streaming_frame([user], random.Random(seed), when).to_dict("records")[0]


def test_a_written_row_is_stored_exactly_as_a_push_of_it(store, r):
    writer = StreamWriter(store, VIEW)
    now = datetime.now(UTC).replace(microsecond=0)
    frame = streaming_frame(["u0001"], random.Random(3), now)
    store.push("user_events_push", frame)
    row = {**frame.to_dict("records")[0], "user_id": "u0002"}
    t0 = int(time.time() * 1000)
    assert writer.write(row) == 1
    t1 = int(time.time() * 1000)
    pushed, written = r.hgetall("fs:user:u0001"), r.hgetall("fs:user:u0002")
    assert written == pushed and set(written) == {f.encode() for f in FIELDS}
    for when in r.hpexpiretime("fs:user:u0002", *FIELDS):
        assert t0 + TTL_MS <= when <= t1 + TTL_MS
    assert r.pexpiretime("fs:user:u0002") == -1  # streaming fields only: no key TTL
    read = store.get_online_features(
        features=[f"{VIEW}:tx_count_5m"], entity_rows=[{"user_id": "u0002"}]
    ).to_dict()
    assert read["tx_count_5m"] == [row["tx_count_5m"]]


def test_event_time_order_tables_and_async(store, r):
    writer = StreamWriter(store, VIEW)
    stats = online_store_of(store).stats
    now = datetime.now(UTC)
    newer, older = row_of("u0001", 1, now), row_of("u0001", 2, now - timedelta(seconds=5))
    writer.write_rows([newer, older])
    assert stats["skipped_not_newer"] == 1
    assert r.hget("fs:user:u0001", "tx_count_5m") == str(newer["tx_count_5m"]).encode()
    frame = streaming_frame(["u0003", "u0004"], random.Random(4), now)
    assert writer.write_table(pa.Table.from_pandas(frame, preserve_index=False)) == 2
    assert writer.write_table(streaming_frame(["u0005"], random.Random(5), now)) == 1  # a DataFrame
    assert asyncio.run(writer.write_async(row_of("u0006", 6, now))) == 1
    assert asyncio.run(writer.write_table_async(streaming_frame(["u0007"], random.Random(7), now))) == 1
    for user in ("u0003", "u0004", "u0005", "u0006", "u0007"):
        assert all(t > 0 for t in r.hpexpiretime(f"fs:user:{user}", *FIELDS)), user


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda row: row.pop("tx_count_5m"), r"row 1: missing \['tx_count_5m'\]"),
        (lambda row: row.update(tx_count_5mm=1), r"row 1: unknown \['tx_count_5mm'\]"),
        (lambda row: row.update(tx_count_5m="three"), "row 1, column 'tx_count_5m'"),
        (lambda row: row.update(event_timestamp="yesterday"), "row 1, column 'event_timestamp'"),
        (lambda row: row.update(event_timestamp=pd.NaT), "row 1, column 'event_timestamp': .* is missing"),
        (lambda row: row.update(tx_count_5m=2**63), "row 1, column 'tx_count_5m': Value out of range"),
        (lambda row: row.update(user_id=None), "row 1, column 'user_id': a join key may not be null"),
        (lambda row: row.update(user_id=[1]), "row 1, column 'user_id'"),
    ],
)
@pytest.mark.parametrize("value_layout", _LAYOUTS)
def test_a_bad_row_names_row_and_column_and_nothing_is_written(store, r, change, message):
    writer = StreamWriter(store, VIEW)
    now = datetime.now(UTC)
    good, bad = row_of("u0001", 1, now), row_of("u0002", 2, now)
    change(bad)
    with pytest.raises(BadValueError, match=message):
        writer.write_rows([good, bad])
    assert r.dbsize() == 0


@pytest.mark.parametrize("value_layout", _LAYOUTS)
def test_an_unknown_view_is_a_clear_error(store, r):
    with pytest.raises(ConfigError, match="no feature view 'nope'"):
        StreamWriter(store, "nope").write(row_of("u0001", 1, datetime.now(UTC)))


def test_nulls_are_stored_and_read_as_a_push_stores_them(store, r):
    writer = StreamWriter(store, VIEW)
    now = datetime.now(UTC).replace(microsecond=0)
    frame = streaming_frame(["p1"], random.Random(8), now)
    frame["last_device_id"] = None
    frame["session_country"] = None
    store.push("user_events_push", frame)
    writer.write({**frame.to_dict("records")[0], "user_id": "w1"})
    assert r.hgetall("fs:user:w1") == r.hgetall("fs:user:p1")
    read = store.get_online_features(
        features=[f"{VIEW}:{f}" for f in STREAMING_FEATURES],
        entity_rows=[{"user_id": "w1"}, {"user_id": "p1"}],
    ).to_dict()
    for feature in STREAMING_FEATURES:
        assert read[feature][0] == read[feature][1], feature
    assert read["last_device_id"] == [None, None]


def _assert_field_ttl(r, key: str, t0: int, t1: int, ttl_ms: int) -> None:
    for when in r.hpexpiretime(key, *FIELDS):
        assert t0 + ttl_ms <= when <= t1 + ttl_ms, (key, when, ttl_ms)


def test_a_changed_ttl_setting_or_view_takes_effect(store, r):
    """The writer's cached view, encoders and TTL policy follow a setting changed at run time and
    a view applied again with a new TTL tag."""
    writer = StreamWriter(store, VIEW)
    now = datetime.now(UTC)
    t0 = int(time.time() * 1000)
    writer.write(row_of("u0001", 1, now))
    store.config.online_store.stream_field_ttl_seconds = 120
    writer.write(row_of("u0002", 2, now))
    view = store.get_feature_view(VIEW)
    view.tags = {**view.tags, TAG_FIELD_TTL: "60"}
    store.apply([view])
    writer.write(row_of("u0003", 3, now))
    t1 = int(time.time() * 1000)
    _assert_field_ttl(r, "fs:user:u0001", t0, t1, TTL_MS)
    _assert_field_ttl(r, "fs:user:u0002", t0, t1, 120_000)
    _assert_field_ttl(r, "fs:user:u0003", t0, t1, 60_000)
