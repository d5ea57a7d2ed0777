"""The sample repo (package data) and the demo's own Feast repo: a copy of it with the connection
and TTLs filled in.

Nothing writes into the sample repo itself: ``init_sample`` copies it for a user
(``feast-hexpire init-sample DIR``), and the demo's registry, offline parquet files and yaml live
in a work directory (by default one per HTTP port under the system temp directory).
"""

from __future__ import annotations

import runpy
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from feast import FeatureStore
from feast.base_feature_view import BaseFeatureView
from feast.entity import Entity
from feast.feature_service import FeatureService
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from ..layout import KeyBuilder

__all__ = [
    "BATCH_VIEW",
    "ENTITY",
    "PUSH_SOURCE",
    "STREAMING_VIEW",
    "SAMPLE_REPO",
    "apply",
    "key_builder",
    "user_entity_key",
    "clear_offline_rows",
    "init_sample",
    "batch_source_path",
    "read_population",
    "write_offline_rows",
    "write_repo",
]

# Shipped inside the package (package data), so wheel installs have it too.
SAMPLE_REPO = Path(__file__).resolve().parent.parent / "sample_repo"
SAMPLE_FILES = ("feature_store.yaml", "features.py", "generate_data.py")
ENTITY = "user"
JOIN_KEY = "user_id"
BATCH_VIEW = "user_batch_features"
STREAMING_VIEW = "user_streaming_features"
PUSH_SOURCE = "user_events_push"


def _sample_file(name: str) -> Path:
    path = SAMPLE_REPO / name
    if not path.exists():
        raise FileNotFoundError(f"the sample repo is missing from the installed package: {path}")
    return path


def init_sample(path: Path) -> Path:
    """Copy the sample repo as it ships (the yaml reads ``${REDIS_CONNECTION_STRING}``) to
    ``path``; refuses to overwrite any file already there."""
    existing = [name for name in SAMPLE_FILES if (path / name).exists()]
    if existing:
        raise FileExistsError(f"{path} already has {', '.join(existing)}; choose an empty directory")
    sources = [_sample_file(name) for name in SAMPLE_FILES]
    path.mkdir(parents=True, exist_ok=True)
    for source in sources:
        shutil.copy(source, path / source.name)
    return path


def write_repo(path: Path, connection_string: str, **online_store: Any) -> Path:
    """Copy the sample repo's definitions to ``path`` with ``online_store`` merged into its yaml.

    The connection string is written literally (not as ``${REDIS_CONNECTION_STRING}``), so the
    repo works without environment variables.
    """
    features, yaml_file = _sample_file("features.py"), _sample_file("feature_store.yaml")
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(features, path / "features.py")
    config = yaml.safe_load(yaml_file.read_text())
    config["online_store"].update(connection_string=connection_string, **online_store)
    (path / "feature_store.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (path / "data").mkdir(exist_ok=True)
    return path


def feast_objects(repo: Path) -> list[Any]:
    """The Feast objects ``features.py`` defines (what `feast apply` registers)."""
    namespace = runpy.run_path(str(repo / "features.py"))
    kinds = (Entity, BaseFeatureView, FeatureService)
    return [v for v in namespace.values() if isinstance(v, kinds)]


def apply(repo: Path) -> FeatureStore:
    """`feast apply` of ``repo``: registers the views and checks the server (HPEXPIRE)."""
    store = FeatureStore(repo_path=str(repo))
    store.apply(feast_objects(repo))
    return store


def batch_source_path(store: FeatureStore) -> Path:
    source: Any = store.get_feature_view(BATCH_VIEW).batch_source
    return Path(source.path)


def read_population(store: FeatureStore) -> list[str]:
    """Every user id in the batch view's offline source (sorted), [] when there is none."""
    path = batch_source_path(store)
    if not path.exists():
        return []
    ids = pd.read_parquet(path, columns=[JOIN_KEY])[JOIN_KEY]
    return sorted(ids.drop_duplicates().tolist())


def write_offline_rows(store: FeatureStore, rows: pd.DataFrame) -> list[str]:
    """Upsert ``rows`` into the batch view's parquet source (one row per user, newest kept);
    returns the whole population afterwards."""
    path = batch_source_path(store)
    if path.exists():
        old = pd.read_parquet(path)
        old = old[~old[JOIN_KEY].isin(rows[JOIN_KEY])]
        rows = pd.concat([old, rows], ignore_index=True) if len(old) else rows
    path.parent.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(path)
    return sorted(rows[JOIN_KEY].tolist())


def clear_offline_rows(store: FeatureStore) -> None:
    batch_source_path(store).unlink(missing_ok=True)


def user_entity_key(user: str) -> EntityKeyProto:
    """The EntityKeyProto Feast builds for a ``user_id`` (a string join key)."""
    return EntityKeyProto(join_keys=[JOIN_KEY], entity_values=[ValueProto(string_val=user)])


def key_builder(store: FeatureStore) -> KeyBuilder:
    cfg = store.config
    return KeyBuilder(cfg.online_store.prefix_for(cfg.project), [ENTITY])
