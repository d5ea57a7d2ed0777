"""Bad input through Feast's API on real servers: awkward entity ids, NaN/inf, huge strings, nulls,
wrong types, a null entity id, views deleted or renamed between applies.

Each case is an exact round trip or a clear error, and a byte-exact snapshot (DUMP + PEXPIRETIME)
of every other key in the database shows that nothing else changed. RELIABILITY.md lists which
case gets which outcome.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest
from conftest import apply_repo, assert_expiry, feast_objects, write_data, write_repo, write_window
from snapshot import seed_neighbours, snapshot

from feast_redis_hexpire.exceptions import BadValueError
from feast_redis_hexpire.synth import streaming_frame

# A view with one feature of each scalar kind, fed by its own push source (batch mode, so the
# values keep no field TTL and the key TTL is the only expiry).
PROBE_VIEW = """
from feast.types import Bool, Float32

probe_push = PushSource(name="probe_push", batch_source=user_events_push.batch_source)
probe_features = FeatureView(
    name="probe_features",
    entities=[user],
    ttl=timedelta(days=1),
    schema=[
        Field(name="p_f64", dtype=Float64),
        Field(name="p_f32", dtype=Float32),
        Field(name="p_i64", dtype=Int64),
        Field(name="p_str", dtype=String),
        Field(name="p_bool", dtype=Bool),
    ],
    source=probe_push,
    online=True,
    tags={"hexpire.mode": "batch"},
)
"""
PROBE_FEATURES = [f"probe_features:{f}" for f in ("p_f64", "p_f32", "p_i64", "p_str", "p_bool")]
BASE = {"p_f64": 1.5, "p_f32": 2.5, "p_i64": 3, "p_str": "s", "p_bool": True}


@pytest.fixture
def probe(tmp_path, server, r) -> Any:
    """The sample repo plus the probe view, applied, with neighbour keys seeded."""
    repo = write_repo(tmp_path / "repo", server.connection_string)
    write_data(repo)
    (repo / "features.py").write_text((repo / "features.py").read_text() + PROBE_VIEW)
    seed_neighbours(r)
    return apply_repo(repo)


def push(store: Any, rows: list[dict]) -> None:
    frame = pd.DataFrame(rows)
    frame["event_timestamp"] = pd.Timestamp(datetime.now(UTC))
    store.push("probe_push", frame)


def read(store: Any, ids: list[Any]) -> dict[str, list]:
    return store.get_online_features(
        features=PROBE_FEATURES, entity_rows=[{"user_id": x} for x in ids]
    ).to_dict()


# Entity ids and the exact key each one gets (layout.py escapes %, :, +, braces, glob characters,
# backslash and control characters; everything else, unicode included, stays as it is).
ENTITY_IDS = {
    "a:b": "fs:user:a%3Ab",
    "a%3Ab": "fs:user:a%253Ab",  # the escaped form of "a:b" is a different id and key
    "a+b": "fs:user:a%2Bb",
    "{vip}": "fs:user:%7Bvip%7D",  # braces cannot become a cluster hash tag
    "{vip}u1": "fs:user:%7Bvip%7Du1",
    "*": "fs:user:%2A",
    "?": "fs:user:%3F",
    "[ab]": "fs:user:%5Bab%5D",
    "a\\b": "fs:user:a%5Cb",
    "a\nb": "fs:user:a%0Ab",
    "ünï©ødé 😀": "fs:user:ünï©ødé 😀",
    "": "fs:user:",
    " ": "fs:user: ",
    "fs:user:u1": "fs:user:fs%3Auser%3Au1",
}


def test_entity_ids_round_trip_with_distinct_keys(probe, r):
    before = snapshot(r)
    ids = list(ENTITY_IDS)
    push(probe, [{"user_id": x, **BASE, "p_i64": i} for i, x in enumerate(ids)])
    created = {k.encode() for k in ENTITY_IDS.values()}
    assert set(r.keys("*")) - set(before) == created  # one distinct key per id, as documented
    assert read(probe, ids)["p_i64"] == list(range(len(ids)))
    assert snapshot(r, exclude=created) == before


def test_float_specials(probe, r):
    before = snapshot(r)
    push(probe, [
        {"user_id": "inf", **BASE, "p_f64": math.inf, "p_f32": -math.inf},
        {"user_id": "nan", **BASE, "p_f64": math.nan, "p_f32": math.nan},
    ])  # fmt: skip
    assert r.hmget("fs:user:inf", "p_f64", "p_f32") == [b"Infinity", b"-Infinity"]
    # Feast turns NaN into an unset value before the store sees it: stored and read as null.
    assert r.hmget("fs:user:nan", "p_f64", "p_f32") == [b"\x00", b"\x00"]
    got = read(probe, ["inf", "nan"])
    assert got["p_f64"] == [math.inf, None] and got["p_f32"] == [-math.inf, None]
    assert got["p_i64"] == [3, 3]
    assert snapshot(r, exclude={b"fs:user:inf", b"fs:user:nan"}) == before


def test_huge_string_round_trips(probe, r):
    before = snapshot(r)
    huge = "é" + "x" * (1 << 20) + "\x00end"  # 1 MB, non-ASCII start, a NUL inside
    push(probe, [{"user_id": "big", **BASE, "p_str": huge}])
    assert read(probe, ["big"])["p_str"] == [huge]
    assert snapshot(r, exclude={b"fs:user:big"}) == before


def test_nulls_round_trip_as_nulls(probe, r):
    before = snapshot(r)
    nulls = {"p_f64": None, "p_f32": 2.5, "p_i64": None, "p_str": None, "p_bool": None}
    push(probe, [{"user_id": "nul", **nulls}])
    stored = r.hgetall("fs:user:nul")
    assert [stored[f.encode()] for f in ("p_f64", "p_i64", "p_str", "p_bool")] == [b"\x00"] * 4
    got = read(probe, ["nul"])
    assert (got["p_f64"], got["p_f32"], got["p_i64"], got["p_str"], got["p_bool"]) == (
        [None],
        [2.5],
        [None],
        [None],
        [None],
    )
    assert snapshot(r, exclude={b"fs:user:nul"}) == before


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"p_i64": "abc"}, "'abc'.*column p_i64"),
        ({"p_f64": "abc"}, "'abc'.*column p_f64"),
        ({"p_bool": "yes"}, "'yes'.*column p_bool"),
    ],
    ids=["str-in-int64", "str-in-float64", "str-in-bool"],
)
def test_wrong_types_are_refused_and_nothing_is_written(probe, r, bad, message):
    before = snapshot(r)
    with pytest.raises(Exception, match=message):  # raised by Feast's type conversion
        push(probe, [{"user_id": "good", **BASE}, {"user_id": "bad", **BASE, **bad}])
    assert snapshot(r) == before  # not even the good row of the frame


def test_types_feast_coerces(probe, r):
    """Not refused: Feast converts these before the store sees them (documented, not exact)."""
    push(probe, [{"user_id": "c", **BASE, "p_str": 12, "p_i64": 2.7}])
    got = read(probe, ["c"])
    assert got["p_str"] == ["12"] and got["p_i64"] == [2]  # int -> text, float -> truncated int


def test_null_entity_id_is_refused(probe, r):
    before = snapshot(r)
    with pytest.raises(BadValueError, match="probe_features.*null join-key value.*nothing was written"):
        push(probe, [{"user_id": "ok", **BASE}, {"user_id": None, **BASE}])
    assert snapshot(r) == before


# ---- views deleted or renamed between applies ----


@pytest.fixture
def loaded(tmp_path, server, r) -> Any:
    """The sample repo materialized, five users pushed, neighbours seeded."""
    repo = write_repo(tmp_path / "repo", server.connection_string)
    write_data(repo)
    seed_neighbours(r)  # a string and a list under fs:user:* too: deletion must skip them
    store = apply_repo(repo)
    store.materialize_incremental(end_date=datetime.now(UTC))
    store.push("user_events_push", streaming_frame([f"u000{i}" for i in range(1, 6)], random.Random(2)))
    return store, repo


STREAM_FIELDS = [b"_ts:user_streaming_features", b"last_login_ts", b"last_device_id", b"tx_count_5m",
                 b"failed_logins_15m", b"session_country"]  # fmt: skip


def _project_state(r: Any) -> dict[bytes, tuple[dict, int]]:
    """Every project hash's fields other than the streaming view's, and its key expiry time."""
    return {
        k: ({f: v for f, v in r.hgetall(k).items() if f not in STREAM_FIELDS}, r.pexpiretime(k))
        for k in r.scan_iter(match="fs:user:u*")
    }


def _apply_without_streaming_view(store: Any, repo: Any, replacement: Any = None) -> None:
    gone = {"user_streaming_features", "fraud_model"}
    keep = [o for o in feast_objects(repo) if o.name not in gone]
    store.apply(
        keep + ([replacement] if replacement is not None else []),
        objects_to_delete=[store.get_feature_view("user_streaming_features"),
                           store.get_feature_service("fraud_model")],
        partial=False,
    )  # fmt: skip


def test_deleted_view_fields_are_removed_and_nothing_else(loaded, r):
    store, repo = loaded
    neighbours = snapshot(r, exclude=set(r.keys("fs:user:u*")))
    state = _project_state(r)
    assert r.hget("fs:user:u0001", "tx_count_5m") is not None
    _apply_without_streaming_view(store, repo)
    for key in r.keys("fs:user:u*"):
        assert r.hmget(key, STREAM_FIELDS) == [None] * len(STREAM_FIELDS)
    assert _project_state(r) == state  # batch fields and key TTLs untouched
    assert snapshot(r, exclude=set(state)) == neighbours


V2 = ["user_streaming_v2:tx_count_5m"]


def test_renamed_view_starts_empty_and_old_fields_go(loaded, r):
    store, repo = loaded
    neighbours = snapshot(r, exclude=set(r.keys("fs:user:u*")))
    state = _project_state(r)
    renamed = store.get_feature_view("user_streaming_features").__copy__()
    renamed.name = "user_streaming_v2"
    _apply_without_streaming_view(store, repo, renamed)
    assert r.hget("fs:user:u0001", "_ts:user_streaming_features") is None
    got = store.get_online_features(features=V2, entity_rows=[{"user_id": "u0001"}])
    assert got.to_dict()["tx_count_5m"] == [None]
    with write_window() as pushed:
        store.push("user_events_push", streaming_frame(["u0001"], random.Random(4)))
    assert_expiry(
        r.hpexpiretime("fs:user:u0001", "_ts:user_streaming_v2"), pushed, 300, "_ts:user_streaming_v2"
    )
    got = store.get_online_features(features=V2, entity_rows=[{"user_id": "u0001"}])
    assert got.to_dict()["tx_count_5m"] == [int(r.hget("fs:user:u0001", "tx_count_5m"))]
    after = _project_state(r)
    del after[b"fs:user:u0001"][0][b"_ts:user_streaming_v2"]  # the one field the push added
    assert after == state
    assert snapshot(r, exclude=set(state)) == neighbours


def test_deleted_view_passed_as_python_object_loses_its_fields(loaded, r):
    """Feast's Python API takes the view object from features.py, whose join keys are not
    inferred yet; the key pattern must still be the entity's."""
    store, repo = loaded
    neighbours = snapshot(r, exclude=set(r.keys("fs:user:u*")))
    objects = feast_objects(repo)
    gone = {"user_streaming_features", "fraud_model"}
    store.apply(
        [o for o in objects if o.name not in gone],
        objects_to_delete=[o for o in objects if o.name in gone],
        partial=False,
    )
    assert r.hget("fs:user:u0001", "tx_count_5m") is None
    assert snapshot(r, exclude=set(r.keys("fs:user:u*"))) == neighbours
