"""Shared fixtures: real Redis 8.2 and Valkey 9.1 servers, and copies of the sample repo.

Every test that takes ``server`` runs once against each server kind. Tests clean their server
with FLUSHALL at the start (the test owns the server; the plugin itself never flushes).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest
from feast import FeatureStore
from feast.entity import Entity

# Re-exported for the test modules: the sample-repo helpers live in the package (the demo uses them).
from feast_redis_hexpire.demo.repo import apply as apply_repo  # noqa: F401
from feast_redis_hexpire.demo.repo import feast_objects, write_repo  # noqa: F401
from feast_redis_hexpire.demo.sample import SAMPLE_REPO  # noqa: F401
from feast_redis_hexpire.local_redis import LocalRedis
from feast_redis_hexpire.online_store import hexpire_store
from feast_redis_hexpire.synth import batch_rows

ROOT = Path(__file__).resolve().parent.parent
SERVER_KINDS = ("redis", "valkey")


# ---- test dependencies that do not come from PyPI ----
# A test marked ``@pytest.mark.needs("stunnel")`` FAILS when stunnel is missing, naming the Debian
# package that provides it (`make system-deps` installs them all). Someone without them may opt
# out explicitly: HEXPIRE_ALLOW_MISSING=stunnel,chromium deselects those tests (and says so in the
# summary). CI never sets it (.ci/run unsets it), so there a missing dependency fails the run.

ALLOW_MISSING_ENV = "HEXPIRE_ALLOW_MISSING"
_MISSING_KEY = pytest.StashKey[dict[str, bool]]()
_DROPPED_KEY = pytest.StashKey[int]()


def old_redis_server() -> Path | None:
    """Debian's redis-server 7.0 (no hash-field expiration), if it is on PATH."""
    found = shutil.which("redis-server")
    if not found:
        return None
    version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"v=(\d+)\.(\d+)", version)
    return Path(found) if match and (int(match[1]), int(match[2])) < (7, 4) else None


def _stunnel_present() -> bool:
    from tls import stunnel_binary

    return stunnel_binary() is not None


# name -> (is it there?, what provides it)
TEST_DEPENDENCIES: dict[str, tuple[Callable[[], bool], str]] = {
    "stunnel": (_stunnel_present, "stunnel4 (Debian package stunnel4)"),
    "chromium": (
        lambda: all(shutil.which(b) for b in ("chromium", "chromedriver")),
        "chromium and chromedriver (Debian packages chromium and chromium-driver)",
    ),
    "old-redis-server": (
        lambda: old_redis_server() is not None,
        "a redis-server older than 7.4 on PATH (Debian 12 package redis-server, 7.0)",
    ),
}


def _allowed_missing() -> set[str]:
    names = {n.strip() for n in os.environ.get(ALLOW_MISSING_ENV, "").split(",") if n.strip()}
    unknown = names - set(TEST_DEPENDENCIES)
    if unknown:
        raise pytest.UsageError(
            f"{ALLOW_MISSING_ENV}: unknown {sorted(unknown)}; known: {sorted(TEST_DEPENDENCIES)}"
        )
    return names


def _missing(config: pytest.Config, name: str) -> bool:
    cache = config.stash.setdefault(_MISSING_KEY, {})
    if name not in cache:
        if name not in TEST_DEPENDENCIES:
            raise pytest.UsageError(
                f"needs({name!r}): unknown test dependency; known: {sorted(TEST_DEPENDENCIES)}"
            )
        cache[name] = not TEST_DEPENDENCIES[name][0]()
    return bool(cache[name])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs(name): the test needs a non-PyPI dependency (see TEST_DEPENDENCIES)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    allowed = _allowed_missing()
    keep, dropped = [], []
    for item in items:
        names = [m.args[0] for m in item.iter_markers("needs")]
        if any(n in allowed and _missing(config, n) for n in names):
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
        config.stash[_DROPPED_KEY] = len(dropped)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("needs"):
        name = marker.args[0]
        if _missing(item.config, name):
            pytest.fail(
                f"missing test dependency {name!r}: install {TEST_DEPENDENCIES[name][1]} "
                f"(make system-deps), or opt out with {ALLOW_MISSING_ENV}={name}",
                pytrace=False,
            )


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    dropped = config.stash.get(_DROPPED_KEY, 0)
    if dropped:
        terminalreporter.write_line(
            f"{ALLOW_MISSING_ENV}={os.environ.get(ALLOW_MISSING_ENV)}: {dropped} test(s) NOT RUN "
            "because their dependency is missing",
            yellow=True,
        )


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
def value_layout() -> str:
    """The ``value_layout`` of the ``repo`` / ``make_repo`` repos; a test module covers both with
    ``pytest.mark.parametrize("value_layout", LAYOUTS)``."""
    return "fields"


LAYOUTS = ["fields", "packed"]


def stored(store: FeatureStore, r: Any, key: str, view: str, feature: str) -> bytes | None:
    """The stored bytes of one feature of one entity, in either value layout (packed: unpacked
    from the view's field)."""
    from feast_redis_hexpire import codec
    from feast_redis_hexpire.views import ViewLayout

    lay = ViewLayout.of(store.config, store.get_feature_view(view))
    if not lay.packed:
        return r.hget(key, lay.fields[feature][0])
    raw = r.hget(key, lay.ts_field)
    unpacked = None if raw is None else codec.unpack_values(raw, lay.head, len(lay.fields))
    return None if unpacked is None or lay.order is None else unpacked[1][lay.order[feature]]


def _layout_setting(value_layout: str) -> dict[str, str]:
    return {} if value_layout == "fields" else {"value_layout": value_layout}


@pytest.fixture
def repo(
    tmp_path: Path, server: LocalRedis, r: Any, monkeypatch: pytest.MonkeyPatch, value_layout: str
) -> Path:
    """A sample repo with 20 users of offline data, pointed at ``server``."""
    monkeypatch.setenv("REDIS_CONNECTION_STRING", server.connection_string)
    path = write_repo(tmp_path / "repo", server.connection_string, **_layout_setting(value_layout))
    write_data(path)
    return path


@pytest.fixture
def store(repo: Path) -> FeatureStore:
    """The sample repo applied (not yet materialized)."""
    return apply_repo(repo)


# ---- time: absolute expiry times against the write's time bounds, waits with deadlines ----
# A TTL read after the write (`0 < ttl <= 300`, `290 <= ttl <= 300`) depends on how long the
# machine took in between; the absolute expiry time (PEXPIRETIME / HPEXPIRETIME) does not: a write
# that ran between `before` and `after` (wall clock, ms) with a TTL of T expires in
# [before + T, after + T], however slow the machine was.


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Window:
    """The wall-clock bounds (ms) of a write."""

    before: int
    after: int = 0

    def bounds(self, ttl_seconds: float) -> tuple[int, int]:
        ttl_ms = round(ttl_seconds * 1000)
        return self.before + ttl_ms, self.after + ttl_ms


@contextlib.contextmanager
def write_window() -> Iterator[Window]:
    window = Window(now_ms())
    yield window
    window.after = now_ms() + 1  # the server may round its ms clock up relative to ours


def assert_expiry(times: Iterable[int], window: Window, ttl_seconds: float, what: str = "") -> None:
    """Every absolute expiry time (ms, from PEXPIRETIME/HPEXPIRETIME) lies in the write's bounds."""
    low, high = window.bounds(ttl_seconds)
    times = list(times)
    bad = [t for t in times if not low <= t <= high]
    assert times and not bad, (
        f"{what}: expiry times {bad or times} not in [{low}, {high}] (write between {window.before} "
        f"and {window.after} ms, TTL {ttl_seconds}s)"
    )


def wait_for(what: str, condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> Any:
    """Poll ``condition`` until it is truthy (returned) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(interval)


# ---- helpers shared by the issue-2 suite (test_codec ... test_async) ----


online_store_of = hexpire_store  # the plugin instance behind a FeatureStore (its `.stats` live here)


def cli_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``feast-hexpire ARGS`` through the CLI's ``main`` in this process: the exit code its process
    ends with (``sys.exit(main())``) and its output. For a test whose command already runs once as
    a process elsewhere: each process start imports Feast (seconds of CPU)."""
    from feast_redis_hexpire.cli import main

    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().out


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
def make_repo(
    tmp_path: Path, server: LocalRedis, r: Any, monkeypatch: pytest.MonkeyPatch, value_layout: str
) -> Any:
    """Factory: a sample-repo copy (20 users of data) with extra online_store settings, on ``server``."""
    monkeypatch.setenv("REDIS_CONNECTION_STRING", server.connection_string)
    made = iter(range(1000))

    def make(**online_store: Any) -> Path:
        settings = {**_layout_setting(value_layout), **online_store}
        path = write_repo(tmp_path / f"repo{next(made)}", server.connection_string, **settings)
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
