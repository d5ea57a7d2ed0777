"""The demo's own Feast repo: a copy of the sample repo (:mod:`.sample`) with the connection and
TTLs filled in.

Nothing writes into the sample repo itself: ``init_sample`` (:mod:`.sample`) copies it for a user
(``feast-hexpire init-sample DIR``), and the demo's registry, offline parquet files and yaml live
in a work directory (by default one per HTTP port under the system temp directory).

The demo's own repo (:func:`write_demo_repo`) keeps the connection string, which may hold a
password, out of the file: the yaml says ``${FEAST_HEXPIRE_DEMO_REDIS}`` (Feast substitutes
environment variables in feature_store.yaml when it loads it) and the value lives only in this
process's environment. Every yaml written here is readable by its owner only (0600).

Reads go on while a bulk load materializes: each of the demo's FeatureStores keeps the registry it
loaded at start (``cache_mode: thread`` with ``cache_ttl_seconds: 0``: never re-read; the demo
applies its views once, at start), so a read never sees the view's transient ``MATERIALIZING``
state nor a registry file that the load is rewriting in place; and should a store re-read it,
``serve_features_while_materializing`` keeps the view serving.
"""

from __future__ import annotations

import os
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
from .sample import sample_file

__all__ = [
    "BATCH_VIEW",
    "ENTITY",
    "PUSH_SOURCE",
    "STREAMING_VIEW",
    "apply",
    "key_builder",
    "user_entity_key",
    "clear_offline_rows",
    "batch_source_path",
    "read_population",
    "write_offline_rows",
    "write_demo_repo",
    "write_repo",
    "CONNECTION_ENV",
]

ENTITY = "user"
JOIN_KEY = "user_id"
BATCH_VIEW = "user_batch_features"
STREAMING_VIEW = "user_streaming_features"
PUSH_SOURCE = "user_events_push"
CONNECTION_ENV = "FEAST_HEXPIRE_DEMO_REDIS"  # the demo repo's connection string, never in its file
DEMO_REGISTRY = {"cache_mode": "thread", "cache_ttl_seconds": 0, "serve_features_while_materializing": True}


def write_repo(
    path: Path, connection_string: str, *, registry: dict[str, Any] | None = None, **online_store: Any
) -> Path:
    """Copy the sample repo's definitions to ``path`` with ``online_store`` merged into its yaml
    (and ``registry`` settings, if given, into its registry section).

    The connection string is written as given (the tests' repos work without environment
    variables); the yaml is readable by its owner only. The demo uses :func:`write_demo_repo`.
    """
    features, yaml_file = sample_file("features.py"), sample_file("feature_store.yaml")
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(features, path / "features.py")
    config = yaml.safe_load(yaml_file.read_text())
    config["online_store"].update(connection_string=connection_string, **online_store)
    if registry:
        config["registry"] = {"path": config["registry"], **registry}
    yml = path / "feature_store.yaml"
    fd = os.open(yml, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # also when the file existed with wider permissions
        f.write(yaml.safe_dump(config, sort_keys=False))
    (path / "data").mkdir(exist_ok=True)
    return path


def write_demo_repo(path: Path, connection_string: str, **online_store: Any) -> Path:
    """The demo's repo: the connection string only in this process's environment
    (``CONNECTION_ENV``; open the store in this process, or export it to use the feast CLI there),
    and a registry that keeps serving while a bulk load materializes."""
    os.environ[CONNECTION_ENV] = connection_string
    return write_repo(
        path,
        "${" + CONNECTION_ENV + "}",
        registry=DEMO_REGISTRY,
        **online_store,
    )


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
