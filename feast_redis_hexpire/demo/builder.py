"""The batch builder: synthetic users -> the offline parquet source -> ``FeatureStore.materialize``.

The demo's stand-in for a nightly materialization. The rows go where a real pipeline would put
them (the batch view's offline source) and reach Redis through Feast's own materialize path.

The key TTL of one bulk load is chosen per call: the store's config is read on every write, so
``online_store.key_ttl_seconds`` is set for the duration of the materialize and restored after
(under a lock, so two loads never mix their TTLs). The view tag would fix the TTL for every load.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from feast import FeatureStore
from redis.exceptions import RedisError
from tqdm import tqdm

from ..synth import batch_rows, user_id
from . import repo as demo_repo
from .errors import InputError, quote

__all__ = ["BulkLoadResult", "bulk_load", "check_count", "check_ttl", "key_ttl", "MAX_COUNT", "MAX_TTL"]

MAX_COUNT = 1_000_000
PROGRESS_MIN_SLICE = 2_000  # users per materialize call when a progress bar is shown
MAX_TTL = 10 * 365 * 24 * 3600  # ten years: anything longer is almost certainly a typo

_ttl_lock = threading.Lock()


@dataclass
class BulkLoadResult:
    count: int
    ttl_seconds: int
    seed: int
    population: int  # users in the offline source after the load
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_int(field: str, value: Any) -> int:
    if isinstance(value, bool):
        raise InputError(field, f"must be an integer, got {quote(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise InputError(field, f"must be an integer, got {quote(value)}") from None


def check_count(value: Any, field: str = "count", maximum: int = MAX_COUNT) -> int:
    count = _as_int(field, value)
    if not 1 <= count <= maximum:
        raise InputError(field, f"must be between 1 and {maximum}, got {count}")
    return count


def check_ttl(value: Any, field: str = "ttl_seconds") -> int:
    ttl = _as_int(field, value)
    if not 1 <= ttl <= MAX_TTL:
        raise InputError(field, f"must be between 1 and {MAX_TTL} seconds, got {ttl}")
    return ttl


@contextlib.contextmanager
def key_ttl(store: FeatureStore, seconds: int) -> Iterator[None]:
    """The batch key TTL of every write made inside the block."""
    with _ttl_lock:
        cfg = store.config.online_store
        before = cfg.key_ttl_seconds
        cfg.key_ttl_seconds = seconds
        try:
            yield
        finally:
            cfg.key_ttl_seconds = before


def bulk_load(
    store: FeatureStore, count: int, ttl_seconds: int, seed: int = 1, progress: bool = False
) -> BulkLoadResult:
    """Write ``count`` synthetic users (``u0001..``) and materialize them with a key TTL.

    Values are checked before anything is written: a bad count or TTL never reaches Redis. With
    ``progress``, a large load is materialized in slices (each slice's rows carry their own
    millisecond of event time, so each materialize window holds exactly one slice) under a
    tqdm bar; Feast's local engine reports no progress of its own.
    """
    count, ttl_seconds = check_count(count), check_ttl(ttl_seconds)
    seed = _as_int("seed", seed)
    started = time.perf_counter()
    now = datetime.now(UTC)  # microseconds: two loads never share a window
    rows = batch_rows(count, seed, now)
    slice_size = max(PROGRESS_MIN_SLICE, -(-count // 50)) if progress else count
    slices = -(-count // slice_size)
    step = timedelta(milliseconds=1)
    rows["event_timestamp"] = [pd.Timestamp(now + step * (i // slice_size)) for i in range(count)]
    population = demo_repo.write_offline_rows(store, rows)
    bar = tqdm(total=count, unit="user", disable=not progress or slices == 1, file=sys.stderr)
    quiet = contextlib.redirect_stdout(io.StringIO()) if progress else contextlib.nullcontext()
    with key_ttl(store, ttl_seconds), bar, quiet:
        for i in range(slices):
            # Only this slice's rows fall in the window: older rows of other users stay in the
            # offline source (they are still the population) but are not re-materialized.
            store.materialize(
                start_date=now + step * i,
                end_date=now + step * (i + 1),
                feature_views=[demo_repo.BATCH_VIEW],
            )
            bar.update(min(slice_size, count - i * slice_size))
    return BulkLoadResult(
        count=count,
        ttl_seconds=ttl_seconds,
        seed=seed,
        population=len(population),
        seconds=round(time.perf_counter() - started, 3),
    )


def default_repo(connection_string: str) -> Path:
    """The demo's default work dir (the one ``feast-hexpire demo`` on port 8087 uses)."""
    return demo_repo.write_demo_repo(
        Path(tempfile.gettempdir()) / "feast-hexpire-demo-8087", connection_string
    )


def run_cli(args: Any) -> int:
    """``feast-hexpire build-features``: check the values, reach the server, apply, load.

    Errors are raised with one-line messages; the CLI prints them without a traceback."""
    count = check_count(args.count, "--count")
    ttl = check_ttl(args.ttl_seconds, "--ttl-seconds")
    seed = _as_int("--seed", args.seed)
    connection = args.redis or os.environ.get("REDIS_CONNECTION_STRING")
    if args.repo:
        repo = Path(args.repo)
        if not (repo / "feature_store.yaml").exists():
            raise InputError("--repo", f"{repo} has no feature_store.yaml")
        if connection:  # for a yaml that names either variable (the sample repo's, the demo's)
            os.environ["REDIS_CONNECTION_STRING"] = connection
            os.environ[demo_repo.CONNECTION_ENV] = connection
    else:
        repo = default_repo(connection or "localhost:6379")
    store = FeatureStore(repo_path=str(repo))
    if connection:
        store.config.online_store.connection_string = connection
    online: Any = store._get_provider().online_store
    where = store.config.online_store.connection_string.split(",")[0]
    try:
        online.client(store.config).ping()
    except (RedisError, OSError) as e:
        raise ConnectionError(f"cannot reach Redis at {where}: {e}") from None
    store.apply(demo_repo.feast_objects(repo))
    print(f"Loading {count} user(s) into {where} (key TTL {ttl}s, seed {seed}) via {repo}", flush=True)
    result = bulk_load(store, count, ttl, seed, progress=count >= PROGRESS_MIN_SLICE * 2)
    # Check the outcome instead of trusting it: both ends of the load must exist with a key TTL.
    keys = demo_repo.key_builder(store)
    client = online.client(store.config)
    for user in {user_id(1), user_id(count)}:
        key = keys.key(demo_repo.user_entity_key(user))
        remaining = client.ttl(key)
        if remaining <= 0:
            raise RuntimeError(f"after materialize, {key.decode()} has TTL {remaining}; the load failed")
    print(
        f"Materialized {count} user(s) with a {ttl}s key TTL in {result.seconds}s; "
        f"{result.population} user(s) in the offline source.",
        flush=True,
    )
    return 0
