"""Shared fixtures: real Redis 8.2 and Valkey 9.1 servers, and copies of the sample repo.

Every test that takes ``server`` runs once against each server kind. Tests clean their server
with FLUSHALL at the start (the test owns the server; the plugin itself never flushes).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest
from feast import FeatureStore
from feast.entity import Entity

# Re-exported for the test modules: the sample-repo helpers live in the package (the demo uses them).
from feast_redis_hexpire.demo.repo import SAMPLE_REPO, feast_objects, write_repo  # noqa: F401
from feast_redis_hexpire.demo.repo import apply as apply_repo  # noqa: F401
from feast_redis_hexpire.local_redis import LocalRedis
from feast_redis_hexpire.online_store import hexpire_store
from feast_redis_hexpire.synth import batch_rows

ROOT = Path(__file__).resolve().parent.parent
SERVER_KINDS = ("redis", "valkey")


@pytest.fixture(scope="session", params=SERVER_KINDS)
def server(request: pytest.FixtureRequest) -> Iterator[LocalRedis]:
    with LocalRedis(request.param) as running:
        yield running


@pytest.fixture
def r(server: LocalRedis) -> Iterator[Any]:
    """A raw redis-py client on an emptied server."""
    client = server.client()
    client.flushall()
    yield client
    client.close()


def write_data(repo: Path, count: int = 20, seed: int = 1, event_time: datetime | None = None) -> None:
    """The offline parquet files of ``repo``: ``count`` batch users, no streaming history."""
    data = repo / "data"
    data.mkdir(exist_ok=True)
    ts = event_time or datetime.now(UTC) - timedelta(minutes=10)
    batch_rows(count, seed, ts).to_parquet(data / "user_batch.parquet")
    frame = batch_rows(1, seed, ts - timedelta(days=30))[["user_id", "event_timestamp"]]
    for name, value in (("last_login_ts", 0), ("last_device_id", "x"), ("tx_count_5m", 0)):
        frame[name] = value
    frame["failed_logins_15m"] = 0
    frame["session_country"] = "US"
    frame.to_parquet(data / "user_streaming.parquet")


@pytest.fixture
def repo(tmp_path: Path, server: LocalRedis, r: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A sample repo with 20 users of offline data, pointed at ``server``."""
    monkeypatch.setenv("REDIS_CONNECTION_STRING", server.connection_string)
    path = write_repo(tmp_path / "repo", server.connection_string)
    write_data(path)
    return path


@pytest.fixture
def store(repo: Path) -> FeatureStore:
    """The sample repo applied (not yet materialized)."""
    return apply_repo(repo)


# ---- helpers shared by the issue-2 suite (test_codec ... test_async) ----


online_store_of = hexpire_store  # the plugin instance behind a FeatureStore (its `.stats` live here)


def field_statuses(response: Any) -> dict[str, list[str]]:
    """{feature name: [FieldStatus name per entity row]} of an OnlineResponse."""
    from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

    proto = response.proto
    names = list(proto.metadata.feature_names.val)
    return {
        name: [FieldStatus.Name(s) for s in result.statuses] for name, result in zip(names, proto.results)
    }


def user_key(user_id: str) -> Any:
    """The EntityKeyProto of the sample repo's `user` entity."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    return EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=user_id)])


@pytest.fixture
def make_repo(tmp_path: Path, server: LocalRedis, r: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Factory: a sample-repo copy (20 users of data) with extra online_store settings, on ``server``."""
    monkeypatch.setenv("REDIS_CONNECTION_STRING", server.connection_string)
    made = iter(range(1000))

    def make(**online_store: Any) -> Path:
        path = write_repo(tmp_path / f"repo{next(made)}", server.connection_string, **online_store)
        write_data(path)
        return path

    return make


def user_view(
    name: str,
    features: dict[str, Any],
    tags: dict[str, str] | None = None,
    push: bool = False,
    ttl: timedelta | None = None,
) -> Any:
    """A feature view on the sample `user` entity; ``push=True`` gives it its own PushSource."""
    from feast import FeatureView, Field, FileSource, PushSource, ValueType

    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    # Never read: these tests write through the online store, not from an offline source.
    source: Any = FileSource(name=f"{name}_source", path="unused.parquet", timestamp_field="event_timestamp")
    if push:
        source = PushSource(name=f"{name}_push", batch_source=source)
    return FeatureView(
        name=name,
        entities=[user],
        ttl=ttl,
        schema=[Field(name=f, dtype=t) for f, t in features.items()],
        source=source,
        tags=tags or {},
        online=True,
    )


def apply_compound_view(store: FeatureStore) -> Any:
    """Register `user_merchant`, a view of two entities (user_id, merchant_id) with one Int64
    feature `pair_tx`, and return it as the registry hands it out."""
    from feast import FeatureView, Field, FileSource, ValueType
    from feast.types import Int64

    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    merchant = Entity(name="merchant", join_keys=["merchant_id"], value_type=ValueType.STRING)
    source = FileSource(name="pair_source", path="unused.parquet", timestamp_field="event_timestamp")
    view = FeatureView(
        name="user_merchant", entities=[user, merchant], schema=[Field(name="pair_tx", dtype=Int64)],
        source=source, online=True,
    )  # fmt: skip
    store.apply([merchant, view])
    return store.get_feature_view("user_merchant")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[LocalRedis]:
    """One Redis 8.2 for a module (the demo tests run on Redis only)."""
    with LocalRedis("redis") as running:
        yield running
