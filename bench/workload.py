"""The benchmark's two feature repos (plugin and Feast's built-in redis store) and their data.

Both repos are copies of the sample repo (same views, same features, same offline data) under
different project names, so their keys never collide on the one server they share.
"""

from __future__ import annotations

import random
import runpy
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from feast import FeatureStore
from feast.base_feature_view import BaseFeatureView
from feast.entity import Entity
from feast.feature_service import FeatureService
from feast.utils import _convert_arrow_to_proto

from feast_redis_hexpire.demo.sample import SAMPLE_REPO
from feast_redis_hexpire.synth import STREAMING_FEATURES, batch_rows, streaming_frame, user_id

ROOT = Path(__file__).resolve().parent.parent
BATCH_VIEW = "user_batch_features"
STREAM_VIEW = "user_streaming_features"
PUSH_SOURCE = "user_events_push"
KEY_TTL_SECONDS = 86400
# Longer than the seed's 300 s so streaming fields outlive a slow read phase on a busy machine;
# the TTL's length does not change the cost of setting it.
FIELD_TTL_SECONDS = 3600

PLUGIN_STORE = {
    "type": "feast_redis_hexpire.RedisHexpireOnlineStore",
    "key_ttl_seconds": KEY_TTL_SECONDS,
    "stream_field_ttl_seconds": FIELD_TTL_SECONDS,
}
BUILTIN_STORE = {"type": "redis", "key_ttl_seconds": KEY_TTL_SECONDS}


@dataclass
class Bench:
    """One store under test: its FeatureStore and the views it writes."""

    label: str
    store: FeatureStore
    batch_view: Any
    stream_view: Any

    @property
    def online(self) -> Any:
        return self.store._get_provider().online_store  # type: ignore[attr-defined]

    @property
    def config(self) -> Any:
        return self.store.config

    def write(self, view: Any, rows: list) -> None:
        self.online.online_write_batch(self.config, view, rows, None)


def write_repo(path: Path, project: str, connection_string: str, online_store: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE_REPO / "features.py", path / "features.py")
    config = yaml.safe_load((SAMPLE_REPO / "feature_store.yaml").read_text())
    config["project"] = project
    config["online_store"] = {**online_store, "connection_string": connection_string}
    (path / "feature_store.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_data(repo: Path, users: int, event_time: datetime) -> None:
    """Offline parquet of ``users`` batch rows (the seed's distributions) and a tiny streaming file."""
    data = repo / "data"
    data.mkdir(exist_ok=True)
    batch_rows(users, 1, event_time).to_parquet(data / "user_batch.parquet")
    streaming_frame([user_id(1)], random.Random(1), event_time - timedelta(days=30)).to_parquet(
        data / "user_streaming.parquet"
    )


def apply(repo: Path) -> FeatureStore:
    namespace = runpy.run_path(str(repo / "features.py"))
    objects = [v for v in namespace.values() if isinstance(v, (Entity, BaseFeatureView, FeatureService))]
    store = FeatureStore(repo_path=str(repo))
    store.apply(objects)
    return store


def make_bench(
    label: str, root: Path, project: str, conn: str, online_store: dict, users: int, event_time: datetime
) -> Bench:
    repo = write_repo(root / project, project, conn, online_store)
    write_data(repo, users, event_time)
    store = apply(repo)
    return Bench(label, store, store.get_feature_view(BATCH_VIEW), store.get_feature_view(STREAM_VIEW))


def batch_proto_rows(bench: Bench) -> list:
    """The rows ``materialize`` hands to online_write_batch: Feast's own arrow -> proto conversion."""
    table = pq.read_table(Path(bench.store.repo_path) / "data" / "user_batch.parquet")
    join_keys = {e.name: e.dtype.to_value_type() for e in bench.batch_view.entity_columns}
    return _convert_arrow_to_proto(table, bench.batch_view, join_keys)


def streaming_proto_rows(bench: Bench, users: int, event_time: datetime) -> list:
    frame = streaming_frame([user_id(i) for i in range(1, users + 1)], random.Random(2), event_time)
    table = pa.Table.from_pandas(frame)  # as FeatureStore.push does
    join_keys = {e.name: e.dtype.to_value_type() for e in bench.stream_view.entity_columns}
    return _convert_arrow_to_proto(table, bench.stream_view, join_keys)


def stream_rows_of(bench: Bench, frame: pd.DataFrame) -> list:
    """A push DataFrame as the rows push hands to online_write_batch."""
    join_keys = {e.name: e.dtype.to_value_type() for e in bench.stream_view.entity_columns}
    return _convert_arrow_to_proto(pa.Table.from_pandas(frame), bench.stream_view, join_keys)


def push_frames(users: int, batch: int, count: int, start: datetime, seed: int) -> list[pd.DataFrame]:
    """``count`` push DataFrames of ``batch`` rows, each with a later event time than the one
    before, so neither store skips a row as not newer."""
    rng = random.Random(seed)
    frames = []
    for i in range(count):
        ids = [user_id(rng.randint(1, users)) for _ in range(batch)]
        frames.append(streaming_frame(ids, rng, start + timedelta(milliseconds=i + 1)))
    return frames


def feature_refs() -> list[str]:
    """3 batch + 2 streaming features: the sample repo's fraud_model service."""
    return [
        f"{BATCH_VIEW}:risk_segment",
        f"{BATCH_VIEW}:tx_count_7d",
        f"{BATCH_VIEW}:avg_amount_30d",
        f"{STREAM_VIEW}:tx_count_5m",
        f"{STREAM_VIEW}:failed_logins_15m",
    ]


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


__all__ = [
    "BATCH_VIEW",
    "BUILTIN_STORE",
    "PLUGIN_STORE",
    "PUSH_SOURCE",
    "STREAM_VIEW",
    "STREAMING_FEATURES",
    "Bench",
    "batch_proto_rows",
    "feature_refs",
    "make_bench",
    "now_utc",
    "push_frames",
    "stream_rows_of",
    "streaming_proto_rows",
]
