"""value_layout: packed: one hash field per view holding its event time and every feature value.

The framing round trips every value type, keeps a null apart from a missing feature and never
reads a value packed for another feature list; writes keep the TTL guarantees (batch: key TTL,
streaming: the one field's TTL, never a field without one), event-time ordering, bad rows
reported by row, partial rows merged; apply refuses switching layouts over existing data;
inspect and `feast-hexpire layout` show the layout.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from conftest import (
    apply_repo,
    assert_expiry,
    cli_main,
    field_statuses,
    online_store_of,
    user_key,
    write_window,
)
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from hypothesis import given, settings
from hypothesis import strategies as st
from test_codec import ALL_VALUE_TYPES, assert_same, natural_kind, value_strategy
from test_security import documented_acl

from feast_redis_hexpire import codec
from feast_redis_hexpire.constants import PACKED_FORMAT
from feast_redis_hexpire.exceptions import ConfigError, FieldTTLError, HexpireError
from feast_redis_hexpire.inspect import inspect_entity
from feast_redis_hexpire.scripts import FIELD_TTL_ERROR, WRITE_PACKED
from feast_redis_hexpire.synth import BATCH_FEATURES, STREAMING_FEATURES, streaming_frame
from feast_redis_hexpire.views import ViewLayout

pytestmark = pytest.mark.parametrize("value_layout", ["packed"])

KEY = "fs:user:u0001"
BATCH, STREAM = "user_batch_features", "user_streaming_features"


# ---- the framing, no server ----


@settings(max_examples=60, deadline=None)
@given(data=st.data(), encoding=st.sampled_from(["text", "proto"]))
def test_packed_values_round_trip_every_type_with_nulls_and_missing(value_layout, data, encoding):
    types = data.draw(st.lists(st.sampled_from(ALL_VALUE_TYPES), min_size=1, max_size=8))
    kinds = [codec.expected_kind(t) for t in types]
    values = [
        data.draw(st.none() | st.just(ValueProto()) | value_strategy(natural_kind(t))) for t in types
    ]  # None: missing; ValueProto(): null
    names = [f"f{i}" for i in range(len(types))]
    head = codec.packed_head(names, encoding)
    ts = data.draw(st.integers(-62135596800000000, 253402300799999999))  # datetime's range, in µs
    encoded = [None if v is None else codec.encode_value(v, k, encoding) for v, k in zip(values, kinds)]
    raw = codec.pack_values(head, ts, encoded)
    assert raw.startswith(PACKED_FORMAT)
    unpacked = codec.unpack_values(raw, head, len(types))
    assert unpacked is not None
    got_ts, got = unpacked
    assert got_ts == ts
    for value, kind, stored in zip(values, kinds, got):
        if value is None:
            assert stored is None  # missing stays missing
        else:
            assert stored is not None
            decoded = codec.decode_value(stored, kind, encoding)
            assert_same(decoded, value)  # a null stays a null, present


def test_event_times_compare_as_their_packed_bytes(value_layout):
    head = codec.packed_head(["a"], "text")
    times = [-(2**40), -1, 0, 1, 1_700_000_000_000_000, 1_700_000_000_000_001, 2**55]
    packed = [codec.pack_values(head, t, [b"x"])[len(head) : len(head) + 8] for t in times]
    assert packed == sorted(packed)


def test_a_value_packed_for_another_feature_list_is_not_read(value_layout):
    old = codec.packed_head(["a", "b"], "text")
    raw = codec.pack_values(old, 5, [b"1", b"2"])
    assert codec.unpack_values(raw, codec.packed_head(["b", "a"], "text"), 2) is None
    assert codec.unpack_values(raw, codec.packed_head(["a", "b"], "proto"), 2) is None
    ts, columns, stale = codec.unpack_columns([raw, None], codec.packed_head(["a", "b", "c"], "text"), 3, [0])
    assert ts == [None, None] and columns == [[None, None]] and stale == [0]
    with pytest.raises(ValueError, match="value_layout: fields"):
        codec.unpack_values(b"1700000000000000", old, 2)


# ---- writes ----


def batch_row(user, ts, n, features=BATCH_FEATURES):
    values = {
        "country_iso": ValueProto(string_val=f"c{n}"),
        "risk_segment": ValueProto(string_val=f"r{n}"),
        "account_age_days": ValueProto(int64_val=n),
        "tx_count_7d": ValueProto(int64_val=n),
        "avg_amount_30d": ValueProto(double_val=n + 0.5),
        "chargeback_count_180d": ValueProto(int64_val=n),
    }
    return (user_key(user), {f: values[f] for f in features}, ts, None)


def stream_row(user, ts, n, features=STREAMING_FEATURES):
    values = {
        "last_login_ts": ValueProto(int64_val=n),
        "last_device_id": ValueProto(string_val=f"dev-{n}"),
        "tx_count_5m": ValueProto(int64_val=n),
        "failed_logins_15m": ValueProto(int64_val=n),
        "session_country": ValueProto(string_val=f"c{n}"),
    }
    return (user_key(user), {f: values[f] for f in features}, ts, None)


def write(store, view, rows):
    online_store_of(store).online_write_batch(store.config, store.get_feature_view(view), rows, None)


def read(store, view, user="u0001"):
    [(ts, values)] = online_store_of(store).online_read(
        store.config, store.get_feature_view(view), [user_key(user)]
    )
    return ts, values


def test_one_field_per_view_with_key_ttl_and_field_ttl(store, r):
    now = datetime.now(UTC)
    with write_window() as batch_window:
        write(store, BATCH, [batch_row("u0001", now, 1)])
    with write_window() as stream_window:
        write(store, STREAM, [stream_row("u0001", now, 2)])
    assert {f.decode() for f in r.hkeys(KEY)} == {BATCH, STREAM}
    assert_expiry([r.pexpiretime(KEY)], batch_window, 86400, "key TTL of the batch write")
    assert_expiry(r.hpexpiretime(KEY, STREAM), stream_window, 300, "the streaming view's field")
    assert r.httl(KEY, BATCH) == [-1]  # batch values live as long as the key
    ts, values = read(store, STREAM)
    assert ts == now and values["last_device_id"].string_val == "dev-2"
    assert read(store, BATCH)[1]["avg_amount_30d"].double_val == 1.5
    assert r.object("encoding", KEY) in (b"listpackex", b"hashtable")


def test_ttl_from_event_sets_the_fields_expiry_from_the_event_time_and_drops_expired_rows(make_repo, r):
    store = apply_repo(make_repo(ttl_from="event"))
    recent = datetime.now(UTC) - timedelta(seconds=100)
    write(
        store, STREAM, [stream_row("u0001", recent, 1), stream_row("u0002", recent - timedelta(hours=1), 1)]
    )
    expected = codec.encode_ts(recent) // 1000 + 300_000
    assert r.hpexpiretime(KEY, STREAM) == [expected]
    assert not r.exists("fs:user:u0002")  # already expired by its event time
    assert online_store_of(store).stats["dropped_expired"] == 1


def test_older_and_equal_rows_never_overwrite_newer(store, r):
    now = datetime.now(UTC)
    write(store, STREAM, [stream_row("u0001", now, 5)])
    before = r.hget(KEY, STREAM)
    write(store, STREAM, [stream_row("u0001", now - timedelta(microseconds=1), 6)])
    write(store, STREAM, [stream_row("u0001", now, 7)])
    assert r.hget(KEY, STREAM) == before
    # out of order within one batch: the newest wins
    rows = [stream_row("u0002", now + timedelta(seconds=s), s) for s in (3, 1, 4, 2)]
    write(store, STREAM, rows)
    assert read(store, STREAM, "u0002")[1]["tx_count_5m"].int64_val == 4
    assert online_store_of(store).stats["skipped_not_newer"] == 4  # 2 above, then 1 and 2 after 3


def test_skip_dedup_lets_an_older_row_overwrite(make_repo, r):
    store = apply_repo(make_repo(skip_dedup=True))
    now = datetime.now(UTC)
    write(store, BATCH, [batch_row("u0001", now, 1)])
    write(store, BATCH, [batch_row("u0001", now - timedelta(days=1), 2)])
    ts, values = read(store, BATCH)
    assert ts == now - timedelta(days=1) and values["tx_count_7d"].int64_val == 2


def test_partial_row_keeps_the_features_it_lacks(store, r):
    now = datetime.now(UTC)
    write(store, STREAM, [stream_row("u0001", now, 1)])
    write(store, STREAM, [stream_row("u0001", now + timedelta(seconds=1), 2, ["tx_count_5m"])])
    ts, values = read(store, STREAM)
    assert ts == now + timedelta(seconds=1)
    assert values["tx_count_5m"].int64_val == 2 and values["last_device_id"].string_val == "dev-1"
    # a partial first write: the features never written read NOT_FOUND; a null is PRESENT
    null_row = (
        user_key("u0002"),
        {"tx_count_5m": ValueProto(), "session_country": ValueProto(string_val="x")},
        now,
        None,
    )
    write(store, STREAM, [null_row])
    response = store.get_online_features(
        features=[f"{STREAM}:tx_count_5m", f"{STREAM}:session_country", f"{STREAM}:last_device_id"],
        entity_rows=[{"user_id": "u0002"}],
    )
    statuses = field_statuses(response)
    assert statuses["tx_count_5m"] == ["PRESENT"] and statuses["session_country"] == ["PRESENT"]
    assert statuses["last_device_id"] == ["NOT_FOUND"]
    assert response.to_dict()["tx_count_5m"] == [None]


def test_a_bad_row_is_reported_by_row_and_the_others_are_written(store, r):
    r.set("fs:user:u0002", "not a hash")
    r.hset("fs:user:u0003", STREAM, "1700000000000000")  # not a packed value
    now = datetime.now(UTC)
    rows = [stream_row(u, now, 1) for u in ("u0001", "u0002", "u0003", "u0004")]
    with pytest.raises(HexpireError) as info:
        write(store, STREAM, rows)
    text = str(info.value)
    assert "2 of 4 row(s)" in text and "row 1 (fs:user:u0002)" in text and "row 2 (fs:user:u0003)" in text
    assert "WRONGTYPE" in text and "not a value of value_layout: packed" in text
    assert read(store, STREAM, "u0001")[1] and read(store, STREAM, "u0004")[1]
    assert r.get("fs:user:u0002") == b"not a hash" and r.hget("fs:user:u0003", STREAM) == b"1700000000000000"


@pytest.mark.parametrize("hsetex", ["1", "0"], ids=["hsetex", "hset+hpexpireat"])
def test_write_script_refuses_an_expiry_past_the_limit_and_leaves_the_hash_as_it_was(store, r, hsetex):
    """Both paths of the script (HSETEX, and HSET + HPEXPIREAT for Redis 7.4)."""
    write(store, STREAM, [stream_row("u0001", datetime.now(UTC), 1)])
    before = (r.hgetall(KEY), r.hpexpiretime(KEY, STREAM))
    lay = ViewLayout.of(store.config, store.get_feature_view(STREAM))
    ts_us = int(time.time() * 1_000_000) + 1_000_000
    value = codec.pack_values(lay.head, ts_us, [b"1"] * 5)
    head = [STREAM, 0, 2**62, 0, hsetex, lay.head]
    got = r.eval(
        WRITE_PACKED.lua,
        2,
        KEY,
        "fs:user:u0002",
        *head,
        0,
        0,
        value,
        int(time.time() * 1000) + 60_000,
        0,
        value,
    )
    assert got[0].startswith(FIELD_TTL_ERROR.encode()) and b"nothing of the row was written" in got[0]
    assert got[1] == 1  # its expiry by event time, within the limit
    assert (r.hgetall(KEY), r.hpexpiretime(KEY, STREAM)) == before
    assert r.httl("fs:user:u0002", STREAM)[0] > 0


@pytest.mark.parametrize("hsetex", ["1", "0"], ids=["hsetex", "hset+hpexpireat"])
def test_acl_refusing_field_ttls_writes_nothing_of_the_row(store, r, server, hsetex):
    """A user allowed HSET but not the commands that set a field TTL: on both paths of the
    script the row fails before anything is written (the probe refuses first on the HSET path)."""
    write(store, STREAM, [stream_row("u0001", datetime.now(UTC), 1)])
    before = (r.hgetall(KEY), r.hpexpiretime(KEY, STREAM))
    user = f"nottl-{uuid.uuid4().hex[:8]}"
    r.execute_command(
        *[t for t in documented_acl(user, "pw") if t not in ("+hpexpire", "+hpexpireat", "+hsetex")]
    )
    lay = ViewLayout.of(store.config, store.get_feature_view(STREAM))
    value = codec.pack_values(lay.head, int(time.time() * 1_000_000) + 1_000_000, [b"2"] * 5)
    try:
        limited = r.__class__(
            host=r.connection_pool.connection_kwargs["host"], port=server.port, username=user, password="pw"
        )
        got = limited.evalsha(  # the store's write above loaded the script
            WRITE_PACKED.sha,
            2,
            KEY,
            "fs:user:u0002",
            STREAM,
            0,
            300_000,
            0,
            hsetex,
            lay.head,
            0,
            0,
            value,
            0,
            0,
            value,
        )
        limited.close()
        assert all(
            g.startswith(FIELD_TTL_ERROR.encode()) and b"nothing of the row was written" in g for g in got
        )
        assert all(b"no permissions" in g for g in got)
    finally:
        r.execute_command("ACL", "DELUSER", user)
    assert (r.hgetall(KEY), r.hpexpiretime(KEY, STREAM)) == before
    assert not r.exists("fs:user:u0002")


def test_acl_refusal_through_the_store_is_a_field_ttl_error(store, r, server):
    user = f"nottl-{uuid.uuid4().hex[:8]}"
    r.execute_command(
        *[t for t in documented_acl(user, "pw") if t not in ("+hpexpire", "+hpexpireat", "+hsetex")]
    )
    try:
        store.config.online_store.connection_string = (
            f"{server.connection_string},username={user},password=pw"
        )
        with pytest.raises(FieldTTLError, match="nothing of the row was written"):
            write(store, STREAM, [stream_row("u0001", datetime.now(UTC), 1)])
    finally:
        r.execute_command("ACL", "DELUSER", user)
    assert not r.exists(KEY)


def test_a_changed_feature_list_reads_not_found_until_written_again(store, r):
    from feast import Field
    from feast.types import Int64

    now = datetime.now(UTC)
    write(store, BATCH, [batch_row("u0001", now, 1)])
    view = store.get_feature_view(BATCH)
    view.schema.append(Field(name="extra", dtype=Int64))
    view.features.append(Field(name="extra", dtype=Int64))
    store.apply([view])
    assert read(store, BATCH) == (None, None)  # never another feature's value
    write(store, BATCH, [batch_row("u0001", now + timedelta(seconds=1), 2)])  # merged with nothing
    ts, values = read(store, BATCH)
    assert values["tx_count_7d"].int64_val == 2 and "extra" not in values


# ---- switching layouts ----


def test_apply_refuses_a_layout_switch_over_existing_data_and_changes_nothing(make_repo, r, value_layout):
    fields_store = apply_repo(make_repo(value_layout="fields"))
    fields_store.materialize_incremental(end_date=datetime.now(UTC))
    keys = r.dbsize()
    snapshot = r.hgetall(KEY)
    with pytest.raises(ConfigError, match="value_layout: packed.*in the fields layout"):
        apply_repo(make_repo(value_layout="packed"))
    assert r.dbsize() == keys and r.hgetall(KEY) == snapshot
    r.flushall()
    packed_store = apply_repo(make_repo(value_layout="packed"))
    packed_store.materialize_incremental(end_date=datetime.now(UTC))
    with pytest.raises(ConfigError, match="value_layout: fields.*in the packed layout"):
        apply_repo(make_repo(value_layout="fields"))
    assert r.hget(KEY, BATCH).startswith(PACKED_FORMAT)


# ---- what users see ----


def test_inspect_and_layout_show_the_packed_values(store, repo, r, capsys):
    now = datetime.now(UTC)
    write(store, BATCH, [batch_row("u0001", now, 3)])
    store.push("user_events_push", streaming_frame(["u0001"], random.Random(1)))
    report = inspect_entity(store, "user", "u0001")
    shown = {f.field: f for f in report.fields}
    assert shown[f"{BATCH}[risk_segment]"].value == "r3"
    assert shown[f"{BATCH}[avg_amount_30d]"].value == "3.5"
    assert shown[BATCH].value.startswith(str(codec.encode_ts(now)))
    assert shown[BATCH].ttl_text == "no TTL" and shown[f"{STREAM}[tx_count_5m]"].ttl_ms > 0
    assert not report.other_fields
    text = report.render()
    assert f"{BATCH}[country_iso]" in text and "c3" in text
    # In process: tests/test_naming.py runs `layout` as a process.
    code, out = cli_main(capsys, "layout", "--repo", str(repo), "--json")
    assert code == 0
    views = {v["view"]: v for v in json.loads(out)}
    assert views[BATCH]["value_layout"] == "packed" and views[BATCH]["ts_field"] == BATCH


def test_the_demo_shows_a_packed_store(server, r, tmp_path, value_layout):
    from feast_redis_hexpire.demo import repo as demo_repo
    from feast_redis_hexpire.demo.core import Demo

    repo = demo_repo.write_demo_repo(
        tmp_path / "demo", server.connection_string, stream_field_ttl_seconds=60, value_layout="packed"
    )
    demo = Demo.create(repo, users_per_tick=2, interval=0.2, worker_seed=1)
    demo.worker.pause()
    demo.worker.start()
    try:
        assert demo.bulk_load(5, 600)["count"] == 5
        user = demo.population[0]
        demo.store.push("user_events_push", streaming_frame([user], random.Random(2)))
        read_back = {f["name"]: f for f in demo.read(user)["features"]}
        assert read_back["risk_segment"]["status"] == "PRESENT" and read_back["risk_segment"]["event_time"]
        assert read_back["risk_segment"]["field"] == f"{BATCH}[risk_segment]"
        assert read_back["tx_count_5m"]["field_ttl_ms"] > 0 and read_back["tx_count_5m"]["event_time"]
        fields = {f["field"]: f for f in demo.inspect(user)["fields"]}
        assert fields[f"{STREAM}[tx_count_5m]"]["value"] is not None
        assert demo.state()["fresh_users"] == 1
        assert demo.reset()["deleted"] == 5 and r.dbsize() == 0
    finally:
        demo.worker.stop()


def test_teardown_and_deleting_a_view_remove_only_packed_fields_of_this_project(store, r):
    now = datetime.now(UTC)
    write(store, BATCH, [batch_row("u0001", now, 1)])
    write(store, STREAM, [stream_row("u0001", now, 1), stream_row("u0002", now, 1)])
    r.hset("fs:user:other", "some_field", "x")  # another application's hash under the pattern
    online = online_store_of(store)
    removed = online.delete_view_fields(store.config, store.get_feature_view(STREAM))
    assert removed == 2 and {f.decode() for f in r.hkeys(KEY)} == {BATCH} and not r.exists("fs:user:u0002")
    unlinked = online.remove_project_keys(store.config, [store.get_feature_view(BATCH)])
    assert unlinked == 1 and r.keys("fs:*") == [b"fs:user:other"]


def test_async_writes_use_the_packed_script_with_its_ttls_and_ordering(store, r):
    import asyncio

    online = online_store_of(store)
    view = store.get_feature_view(STREAM)
    now = datetime.now(UTC)

    async def run():
        await online.online_write_batch_async(store.config, view, [stream_row("u0001", now, 1)], None)
        older = [stream_row("u0001", now - timedelta(seconds=1), 2)]
        await online.online_write_batch_async(store.config, view, older, None)
        await online.close()

    with write_window() as window:
        asyncio.run(run())
    assert {f.decode() for f in r.hkeys(KEY)} == {STREAM}
    assert_expiry(r.hpexpiretime(KEY, STREAM), window, 300, "async write")
    assert read(store, STREAM)[1]["tx_count_5m"].int64_val == 1
