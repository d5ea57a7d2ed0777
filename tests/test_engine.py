"""The opt-in Arrow materialization engine (feast_redis_hexpire.engine) against Feast's default
engine: the same Redis contents (fields, values, ``_ts``, key TTL and field TTLs bounded by each
write's time), the same skipped / expired rows and the same per-row errors, through
``FeatureStore.materialize``, ``materialize_incremental`` and the real ``feast`` CLI."""

from __future__ import annotations

import math
import os
import random
import re
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
import yaml
from conftest import Window, online_store_of, write_repo, write_window
from feast import FeatureStore
from test_ack import replica  # noqa: F401 -- the fixture: one replica of the test server

from feast_redis_hexpire.demo.repo import apply as apply_repo
from feast_redis_hexpire.engine import ArrowMaterializationEngine, write_arrow
from feast_redis_hexpire.exceptions import ConfigError, HexpireError, StoreUnavailableError
from feast_redis_hexpire.scripts import WRITE_ROWS
from feast_redis_hexpire.synth import batch_rows, streaming_frame, user_id

ENGINE = "feast_redis_hexpire.engine.ArrowMaterializationEngine"
KEY_TTL, FIELD_TTL = 86_400, 300
# A third view with a column of each type the engine encodes itself, and some it leaves to
# Feast's converter (lists, unix timestamps, integers with nulls).
TYPES_VIEW = """
from feast.types import Array, Bool, Bytes, Float32, Int32, UnixTimestamp

user_types = FeatureView(
    name="user_types",
    entities=[user],
    ttl=timedelta(days=2),
    schema=[
        Field(name="t_str", dtype=String),
        Field(name="t_i64", dtype=Int64),
        Field(name="t_i64_nulls", dtype=Int64),
        Field(name="t_i32", dtype=Int32),
        Field(name="t_f64", dtype=Float64),
        Field(name="t_f32", dtype=Float32),
        Field(name="t_bool", dtype=Bool),
        Field(name="t_bytes", dtype=Bytes),
        Field(name="t_list", dtype=Array(Int64)),
        Field(name="t_unix", dtype=UnixTimestamp),
    ],
    source=FileSource(
        name="user_types_source", path=str(DATA / "user_types.parquet"), timestamp_field="event_timestamp"
    ),
    online=True,
)

# Keys from two join keys, and from an integer join key.
merchant = Entity(name="merchant", join_keys=["merchant_id"], value_type=ValueType.STRING)
user_merchant = FeatureView(
    name="user_merchant",
    entities=[user, merchant],
    schema=[Field(name="pair_tx", dtype=Int64)],
    source=FileSource(
        name="user_merchant_source",
        path=str(DATA / "user_merchant.parquet"),
        timestamp_field="event_timestamp",
    ),
    online=True,
)
account = Entity(name="account", join_keys=["account_id"], value_type=ValueType.INT64)
account_stats = FeatureView(
    name="account_stats",
    entities=[account],
    schema=[Field(name="acct_score", dtype=Float64)],
    source=FileSource(
        name="account_source", path=str(DATA / "account.parquet"), timestamp_field="event_timestamp"
    ),
    online=True,
)
"""
ODD_IDS = ["a:b", "100%", "x*y", "sp ace", "ünï", "{tag}"]


def types_table(now: datetime) -> pa.Table:
    """Rows of user_types: nulls, NaN, infinities, -0.0, NUL-led strings and bytes, odd ids; each
    user twice (an older row the engines must not write)."""
    ids = [user_id(i) for i in range(1, 13)] + ODD_IDS
    n = len(ids)
    f64 = [0.1, -0.0, 1e20, float("nan"), float("inf"), float("-inf"), None, 92.4, 1 / 3, 5.0, -2.5, 7e-9]
    strings = ["low", "", "\x00lead", None, "ünï", "a:b", "x" * 300, "NaN", "0", "true", "\x00", " "]
    table = {
        "user_id": ids,
        "t_str": (strings * 2)[:n],
        "t_i64": [i * 10**12 - 7 for i in range(n)],
        "t_i64_nulls": [None if i % 4 == 0 else i for i in range(n)],
        "t_i32": [(-1) ** i * i * 1000 for i in range(n)],
        "t_f64": (f64 * 2)[:n],
        "t_f32": [None if i == 3 else (float("nan") if i == 4 else i / 7) for i in range(n)],
        "t_bool": [None if i % 5 == 0 else bool(i % 2) for i in range(n)],
        "t_bytes": [None if i == 2 else (b"\x00x" if i == 5 else bytes([i, 255 - i])) for i in range(n)],
        "t_list": [None if i == 1 else list(range(i % 4)) for i in range(n)],
        "t_unix": [now - timedelta(days=i) for i in range(n)],
    }
    schema = pa.schema(
        [
            ("user_id", pa.string()),
            ("t_str", pa.string()),
            ("t_i64", pa.int64()),
            ("t_i64_nulls", pa.int64()),
            ("t_i32", pa.int32()),
            ("t_f64", pa.float64()),
            ("t_f32", pa.float32()),
            ("t_bool", pa.bool_()),
            ("t_bytes", pa.binary()),
            ("t_list", pa.list_(pa.int64())),
            ("t_unix", pa.timestamp("us", tz="UTC")),
        ]
    )
    new = pa.Table.from_pydict(table, schema).append_column(
        "event_timestamp", pa.array([now - timedelta(minutes=5, microseconds=i) for i in range(n)])
    )
    old = pa.Table.from_pydict({**table, "t_str": ["old"] * n}, schema).append_column(
        "event_timestamp", pa.array([now - timedelta(hours=5)] * n)
    )
    return pa.concat_tables([old, new])


def make_engine_repo(path: Path, conn: str, now: datetime, users: int = 40, **online_store: Any) -> Path:
    """The sample repo plus user_types, ``users`` batch users (an older and a newer row each),
    streaming rows for every third user (half of them ten minutes old), on ``conn``."""
    repo = write_repo(path, conn, key_ttl_seconds=KEY_TTL, stream_field_ttl_seconds=FIELD_TTL, **online_store)
    with (repo / "features.py").open("a") as f:
        f.write(TYPES_VIEW)
    data = repo / "data"
    old = batch_rows(users, 2, now - timedelta(hours=30))
    new = batch_rows(users, 1, now - timedelta(hours=1))
    pd.concat([old, new]).to_parquet(data / "user_batch.parquet")
    streaming = [user_id(i) for i in range(1, users + 1, 3)]
    half = len(streaming) // 2
    frames = [
        streaming_frame(streaming[:half], random.Random(3), now - timedelta(seconds=30)),
        streaming_frame(streaming[half:], random.Random(4), now - timedelta(minutes=10)),
    ]
    pd.concat(frames).to_parquet(data / "user_streaming.parquet")
    import pyarrow.parquet as pq

    pq.write_table(types_table(now), data / "user_types.parquet")
    when = now - timedelta(minutes=20)
    pairs = [(user_id(i), m) for i in range(1, 6) for m in ("m1", "m:2")]
    pd.DataFrame(
        {
            "user_id": [u for u, _ in pairs],
            "merchant_id": [m for _, m in pairs],
            "pair_tx": range(len(pairs)),
            "event_timestamp": [when] * len(pairs),
        }
    ).to_parquet(data / "user_merchant.parquet")
    pd.DataFrame(
        {"account_id": [7, -3, 2**40], "acct_score": [0.5, 1.25, -2.0], "event_timestamp": [when] * 3}
    ).to_parquet(data / "account.parquet")
    return repo


def set_engine(repo: Path, engine: dict[str, Any] | None) -> None:
    """Put ``batch_engine`` into the repo's yaml (None: remove it, Feast's default engine)."""
    path = repo / "feature_store.yaml"
    config = yaml.safe_load(path.read_text())
    config.pop("batch_engine", None)
    if engine is not None:
        config["batch_engine"] = engine
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def contents(r: Any) -> dict[bytes, dict[bytes, bytes]]:
    return {key: r.hgetall(key) for key in r.scan_iter(count=1000) if r.type(key) == b"hash"}


def ttl_shape(r: Any, window: Window) -> dict[bytes, tuple]:
    """Per hash: where its key expiry lies (in the write's bounds for the key TTL, or none), and
    for each field: a field TTL in the write's bounds, one counted from the streaming row's event
    time (ttl_from: event), none, or something else."""
    key_low, key_high = window.bounds(KEY_TTL)
    field_low, field_high = window.bounds(FIELD_TTL)
    shape = {}
    for key in r.scan_iter(count=1000):
        if r.type(key) != b"hash":
            continue
        at = r.pexpiretime(key)
        key_state = "key-ttl" if key_low <= at <= key_high else ("none" if at == -1 else f"bad {at}")
        fields = sorted(r.hkeys(key))
        times = r.execute_command("HPEXPIRETIME", key, "FIELDS", len(fields), *fields)
        event = r.hget(key, "_ts:user_streaming_features")
        by_event = int(event) // 1000 + FIELD_TTL * 1000 if event else None
        states = []
        for field, t in zip(fields, times):
            state = "none" if t == -1 else ("field-ttl" if field_low <= t <= field_high else "other")
            states.append((field, "event-ttl" if t == by_event else state))
        shape[key] = (key_state, tuple(states))
    return shape


def run_both(r: Any, repo: Path, action: Any) -> list[tuple[dict, dict, dict]]:
    """Run ``action(store)`` with Feast's default engine, then with this engine, each on an
    emptied server and from the registry as applied; per engine: (contents, TTL shape, store
    counters)."""
    registry = repo / "data" / "registry.db"
    applied = registry.read_bytes()
    results = []
    for engine in (None, {"type": ENGINE}):
        r.flushall()
        registry.write_bytes(applied)  # no materialization recorded yet: both engines start alike
        set_engine(repo, engine)
        store = FeatureStore(repo_path=str(repo))
        online = online_store_of(store)
        online.stats.clear()
        with write_window() as window:
            action(store)
        results.append((contents(r), ttl_shape(r, window), dict(online.stats)))
    return results


@pytest.mark.parametrize("ttl_from", ["write", "event"])
def test_same_redis_contents_as_the_default_engine(tmp_path, server, r, ttl_from):
    now = datetime.now(UTC)
    repo = make_engine_repo(tmp_path / "repo", server.connection_string, now, ttl_from=ttl_from)
    apply_repo(repo)

    def twice(store: FeatureStore) -> None:  # the second run skips every row as not newer
        store.materialize(now - timedelta(days=1), now)
        store.materialize(now - timedelta(days=1), now)

    (default, default_ttl, default_stats), (engine, engine_ttl, engine_stats) = run_both(r, repo, twice)
    assert engine == default
    assert engine_ttl == default_ttl
    assert engine_stats == default_stats
    # The data reached every case the comparison is about.
    assert engine[b"fs:user:u0002"][b"t_str"] == b""
    assert engine[b"fs:user:u0004"][b"t_str"] == engine[b"fs:user:u0004"][b"t_f64"] == b"\x00"  # NaN: null
    assert engine[b"fs:user:a%3Ab"][b"t_str"] == b"low" and b"fs:user:100%25" in engine
    assert engine[b"fs:user:u0005"][b"t_f64"] == b"Infinity"
    assert engine[b"fs:user:u0003"][b"t_str"].startswith(b"\x00P")  # NUL-led: the tagged form
    assert all(v[b"t_str"] != b"old" for k, v in engine.items() if b"t_str" in v)
    assert engine[b"fs:merchant_id+user_id:m%3A2:u0003"][b"pair_tx"] == b"5"
    assert engine[b"fs:account:-3"][b"acct_score"] == b"1.25" and b"fs:account:1099511627776" in engine
    stream_fields = [s for _, states in engine_ttl.values() for f, s in states if f == b"tx_count_5m"]
    assert stream_fields and set(stream_fields) == {"field-ttl" if ttl_from == "write" else "event-ttl"}
    assert {state for state, _ in engine_ttl.values()} == {"key-ttl"}
    assert engine_stats["skipped_not_newer"] >= engine_stats["written"] > 0
    if ttl_from == "event":  # the ten-minute-old streaming rows are past their 300 s field TTL
        assert engine_stats["dropped_expired"] > 0


def test_incremental_runs_match_the_default_engine(tmp_path, server, r):
    now = datetime.now(UTC)
    repo = make_engine_repo(tmp_path / "repo", server.connection_string, now)
    apply_repo(repo)

    def incremental(store: FeatureStore) -> None:
        store.materialize_incremental(end_date=now - timedelta(minutes=3))
        store.materialize_incremental(end_date=now)  # the rows of the last three minutes

    (default, default_ttl, default_stats), (engine, engine_ttl, engine_stats) = run_both(r, repo, incremental)
    assert engine == default and engine_ttl == default_ttl and engine_stats == default_stats
    assert engine_stats["written"] > 0


def test_a_bad_row_is_reported_by_row_as_by_the_default_engine(tmp_path, server, r):
    now = datetime.now(UTC)
    repo = make_engine_repo(tmp_path / "repo", server.connection_string, now, write_rows_per_call=7)
    apply_repo(repo)
    errors = []
    for engine in (None, {"type": ENGINE}):
        r.flushall()
        r.set("fs:user:u0004", "a string, not a hash")
        set_engine(repo, engine)
        store = FeatureStore(repo_path=str(repo))
        with pytest.raises(HexpireError) as err:
            store.materialize(now - timedelta(days=1), now, ["user_batch_features"])
        errors.append(str(err.value))
        assert r.get("fs:user:u0004") == b"a string, not a hash"
        assert r.dbsize() == 40  # every other row was written
    assert "1 of 40 row(s)" in errors[1] and "(fs:user:u0004): WRONGTYPE" in errors[1]
    # The same error; only the row's position differs (the default engine's dedup step reorders
    # the rows it reads, this engine writes them in the offline store's order).
    assert re.sub(r"row \d+ \(", "row N (", errors[1]) == re.sub(r"row \d+ \(", "row N (", errors[0])


def test_batches_rows_per_call_progress_and_metrics(tmp_path, server, r):
    """write_batch_size (rows per round trip, each reported to the progress callback and timed),
    write_rows_per_call (rows per script call) and the store's counters and Prometheus metrics
    hold as for online_write_batch."""
    from prometheus_client import REGISTRY

    now = datetime.now(UTC)
    repo = make_engine_repo(
        tmp_path / "repo", server.connection_string, now, write_batch_size=16, write_rows_per_call=5
    )
    store = apply_repo(repo)
    view = store.get_feature_view("user_batch_features")
    online = online_store_of(store)
    table = pa.Table.from_pandas(batch_rows(40, 1, now - timedelta(hours=1)), preserve_index=False)

    def counts() -> tuple[int, float, float]:
        calls = int(r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
        written = {"view": "user_batch_features", "mode": "batch", "outcome": "written"}
        rows = REGISTRY.get_sample_value("feast_hexpire_rows_total", written) or 0.0
        batches = (
            REGISTRY.get_sample_value("feast_hexpire_write_batch_seconds_count", {"mode": "batch"}) or 0.0
        )
        return calls, rows, batches

    r.script_load(WRITE_ROWS.lua)  # no NOSCRIPT round to count
    before, seen = counts(), []
    write_arrow(online, store.config, view, table, seen.append)
    after = counts()
    assert seen == [16, 16, 8]
    assert after[0] - before[0] == 4 + 4 + 2  # 16 rows in calls of 5, 5, 5, 1; 8 rows in 5, 3
    assert (after[1] - before[1], after[2] - before[2]) == (40, 3)
    assert online.stats["written"] == 40 and r.dbsize() == 40


def test_another_online_store_is_a_clear_error_naming_the_setting(tmp_path, server, r, monkeypatch):
    """At apply (FeatureStore.apply runs what `feast apply` runs; tests/test_engine_cli.py runs
    the CLI) and at materialize; nothing is written."""
    now = datetime.now(UTC)
    monkeypatch.setenv("REDIS_CONNECTION_STRING", server.connection_string)
    repo = make_engine_repo(tmp_path / "repo", server.connection_string, now)
    path = repo / "feature_store.yaml"
    config = yaml.safe_load(path.read_text())
    config["online_store"] = {"type": "redis", "connection_string": server.connection_string}
    path.write_text(yaml.safe_dump(config))
    apply_repo(repo)  # registered with Feast's default engine
    set_engine(repo, {"type": ENGINE})
    named = "batch_engine: .* online_store type is 'redis'; set online_store type: "
    with pytest.raises(ConfigError, match=named):
        apply_repo(repo)
    store = FeatureStore(repo_path=str(repo))
    with pytest.raises(ConfigError, match=named):
        store.materialize(now - timedelta(days=1), now, ["user_batch_features"])
    assert r.dbsize() == 0


def test_an_unknown_engine_setting_is_refused_naming_it(store):
    provider = store._get_provider()
    with pytest.raises(ConfigError, match="batch_engine: rows_per_batch: Extra inputs"):
        ArrowMaterializationEngine(
            repo_config=store.config,
            offline_store=provider.offline_store,
            online_store=provider.online_store,
            type=ENGINE,
            rows_per_batch=5,
        )


def test_float_texts_are_the_codec_texts():
    """The float columns' texts, for values around the shortest-repr edge cases."""
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.value_type import ValueType

    from feast_redis_hexpire import codec
    from feast_redis_hexpire.engine import _text_column

    values = [0.1, 1e16, 1e-7, 123456789.123, -0.0, 2.0**60, math.pi, 5e-324, 1.7976931348623157e308]
    for arrow_type, value_type, kind in (
        (pa.float64(), ValueType.DOUBLE, "double_val"),
        (pa.float32(), ValueType.FLOAT, "float_val"),
    ):
        column = pa.array(values, arrow_type)
        texts = _text_column(column, value_type, kind)
        assert texts is not None
        expected = [codec.encode_value(Value(**{kind: v}), kind) for v in column.to_pylist()]
        assert [t.encode() if isinstance(t, str) else t for t in texts] == expected


def test_views_it_leaves_to_feasts_default_engine_are_materialized_by_it(tmp_path, server, r):
    """A view this engine does not handle itself (here: one with validation on) goes to Feast's
    default engine, which writes what this engine writes for the same view without it."""
    from feast.infra.common.materialization_job import MaterializationJobStatus, MaterializationTask

    now = datetime.now(UTC)
    repo = make_engine_repo(tmp_path / "repo", server.connection_string, now)
    set_engine(repo, {"type": ENGINE})
    store = apply_repo(repo)
    engine = store._get_provider().batch_engine
    written = []
    for validate in (False, True):
        r.flushall()
        view = store.get_feature_view("user_batch_features")
        view.enable_validation = validate
        view.validation_config = {}  # Feast 0.55's validation step reads it; a FeatureView has none
        task = MaterializationTask(
            project=store.project, feature_view=view, start_time=now - timedelta(days=1), end_time=now
        )
        [job] = engine.materialize(store.registry, task)
        assert job.status() == MaterializationJobStatus.SUCCEEDED, job.error()
        written.append(contents(r))
    assert type(engine._default).__name__ == "LocalComputeEngine"  # the second run went there
    assert written[1] == written[0] and len(written[0]) == 40


def test_acknowledgements_hold_for_the_engine(tmp_path, server, r, replica):  # noqa: F811
    """ack_replicas: each batch waits for the replica; without it the rows are named as not
    acknowledged, as for online_write_batch."""
    now = datetime.now(UTC)
    repo = make_engine_repo(
        tmp_path / "repo", server.connection_string, now, ack_replicas=1, ack_timeout_seconds=3,
        write_batch_size=16,
    )  # fmt: skip
    set_engine(repo, {"type": ENGINE})
    store = apply_repo(repo)
    store.materialize(now - timedelta(days=1), now, ["user_batch_features"])
    assert replica.client().dbsize() == r.dbsize() == 40  # acknowledged: the replica has every row
    r.flushall()
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(
            StoreUnavailableError, match=r"rows 0\.\.15 were written to .* acknowledged by only 0 of 1"
        ):
            store.materialize(now - timedelta(days=1), now, ["user_batch_features"])
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    assert r.dbsize() == 16  # the next batch was not sent
