"""Scale-out: the store pickles at any point of its life and works in another process; store
instances share one client pool per process (fork-safe); asyncio clients of finished event loops
are closed; the counters and the client registry are safe under threads."""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing
import pickle
import subprocess
import sys
import textwrap
import threading
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from conftest import online_store_of, user_key, wait_for
from feast.protos.feast.types.Value_pb2 import Value

from feast_redis_hexpire import clients
from feast_redis_hexpire.online_store import RedisHexpireOnlineStore

BATCH_VIEW = "user_batch_features"


def rows(users: list[str], segment: str, when: datetime | None = None) -> list[Any]:
    ts = when or datetime.now(UTC)
    return [(user_key(u), {"risk_segment": Value(string_val=segment)}, ts, None) for u in users]


def server_connections(r: Any) -> int:
    """Client connections the server holds, the test's own admin connection excluded."""
    return len(r.client_list()) - 1


# ---- pickling (Feast's Ray engine ships the store to its workers) ----

CHILD = textwrap.dedent(
    """
    import json, pickle, sys
    from datetime import UTC, datetime
    from feast import FeatureStore
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    repo, blob, segment = sys.argv[1], sys.argv[2], sys.argv[3]
    online = pickle.load(open(blob, "rb"))
    store = FeatureStore(repo_path=repo)
    view = store.get_feature_view("user_batch_features")
    key = EntityKey(join_keys=["user_id"], entity_values=[Value(string_val="u0042")])
    row = (key, {"risk_segment": Value(string_val=segment)}, datetime.now(UTC), None)
    online.online_write_batch(store.config, view, [row], None)
    [(ts, values)] = online.online_read(store.config, view, [key], ["risk_segment"])
    print(json.dumps({"read": values["risk_segment"].string_val, "type": type(online).__name__,
                      "written": online.stats["written"]}))
    """
)


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
def test_a_used_store_pickles_and_works_in_another_process(store, r, tmp_path, dumps):
    online = online_store_of(store)
    view = store.get_feature_view(BATCH_VIEW)
    online.online_write_batch(store.config, view, rows(["u0001"], "low"), None)  # sync client made
    assert (
        online.online_read(store.config, view, [user_key("u0001")])[0][1]["risk_segment"].string_val == "low"
    )

    async def use_async() -> None:  # an asyncio client made (and its loop finished)
        await online.online_read_async(store.config, view, [user_key("u0001")])

    asyncio.run(use_async())
    blob = tmp_path / "store.pickle"
    blob.write_bytes(dumps(online))
    # The copy also works here, beside the original, and the original is unharmed.
    copy = pickle.loads(blob.read_bytes())
    assert copy.stats["written"] == 1 and copy._lock is not online._lock
    copy.online_write_batch(store.config, view, rows(["u0002"], "mid"), None)
    assert r.hget("fs:user:u0002", "risk_segment") == b"mid"

    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(store.repo_path), str(blob), "high"],
        capture_output=True, text=True, timeout=120, cwd=store.repo_path,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report == {"read": "high", "type": "RedisHexpireOnlineStore", "written": 2}
    assert r.hget("fs:user:u0042", "risk_segment") == b"high"
    online.online_write_batch(store.config, view, rows(["u0003"], "low"), None)  # the original still works
    assert r.hget("fs:user:u0003", "risk_segment") == b"low"


# ---- one client pool per process and connection settings ----


def test_store_instances_share_one_pool(store, r):
    view = store.get_feature_view(BATCH_VIEW)
    first = RedisHexpireOnlineStore()
    first.online_write_batch(store.config, view, rows(["u0001"], "low"), None)
    before = server_connections(r)
    for i in range(20):  # a compute engine building a store per batch
        online = RedisHexpireOnlineStore()
        online.online_write_batch(store.config, view, rows([f"u{i:04d}"], "mid"), None)
        assert online.online_read(store.config, view, [user_key(f"u{i:04d}")])[0][0] is not None
        assert online.client(store.config) is first.client(store.config)
    assert server_connections(r) == before
    assert r.info("clients")["connected_clients"] == before + 1


def _child_uses_the_store(repo: str, parent_client_id: int, out: Any) -> None:
    from feast import FeatureStore

    fs = FeatureStore(repo_path=repo)
    online = RedisHexpireOnlineStore()
    view = fs.get_feature_view(BATCH_VIEW)
    online.online_write_batch(fs.config, view, rows(["u0077"], "child"), None)
    out.put((id(online.client(fs.config)) != parent_client_id, online.stats["written"]))


def test_fork_builds_its_own_client(store, r):
    view = store.get_feature_view(BATCH_VIEW)
    online = RedisHexpireOnlineStore()
    online.online_write_batch(store.config, view, rows(["u0001"], "low"), None)
    parent_client = online.client(store.config)
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_child_uses_the_store, args=(str(store.repo_path), id(parent_client), out))
    child.start()
    child.join(120)
    assert child.exitcode == 0
    assert out.get(timeout=5) == (True, 1)
    assert r.hget("fs:user:u0077", "risk_segment") == b"child"
    # The parent's pool was not disturbed by the child.
    online.online_write_batch(store.config, view, rows(["u0002"], "after"), None)
    assert online.client(store.config) is parent_client
    assert r.hget("fs:user:u0002", "risk_segment") == b"after"


# ---- issue 8.7: asyncio clients per loop are closed; threads ----


def test_thirty_asyncio_runs_leave_no_connection_behind(store, r):
    online = online_store_of(store)
    view = store.get_feature_view(BATCH_VIEW)
    online.online_write_batch(store.config, view, rows(["u0001"], "low"), None)
    before = server_connections(r)

    async def read() -> Any:
        return await store.get_online_features_async(
            features=[f"{BATCH_VIEW}:risk_segment"], entity_rows=[{"user_id": "u0001"}]
        )

    # No garbage collection meanwhile: a client left to the collector would keep its socket.
    gc.disable()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            for _ in range(30):
                assert asyncio.run(read()).to_dict()["risk_segment"] == ["low"]
            # Each loop's client was closed inside its loop; the server sees the sockets go.
            wait_for("the asyncio connections to close", lambda: server_connections(r) <= before)
            gc.collect()
    finally:
        gc.enable()
    assert not [str(w.message) for w in caught if "unclosed" in str(w.message)]
    assert not [k for k in clients._async if k[0].is_closed()]


def test_close_ends_the_loops_clients_and_a_later_loop_starts_afresh(store, r):
    online = online_store_of(store)
    view = store.get_feature_view(BATCH_VIEW)
    online.online_write_batch(store.config, view, rows(["u0001"], "low"), None)
    before = server_connections(r)

    async def serve() -> int:
        await online.initialize(store.config)
        await online.online_read_async(store.config, view, [user_key("u0001")])
        during = server_connections(r)
        await online.close()
        return during

    assert asyncio.run(serve()) == before + 1
    wait_for("close() to drop the connection", lambda: server_connections(r) <= before)
    assert asyncio.run(serve()) == before + 1


def test_threads_count_every_row_and_share_the_registry(make_repo, r, monkeypatch):
    from conftest import apply_repo

    store = apply_repo(make_repo(write_batch_size=1))  # one tally per row: many counter updates
    online = online_store_of(store)
    view = store.get_feature_view(BATCH_VIEW)
    base = server_connections(r)  # other tests' shared clients of this process may hold some
    monkeypatch.setattr(sys, "getswitchinterval", sys.getswitchinterval)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up
    errors: list[BaseException] = []
    threads_n, rows_n = 8, 60

    def worker(n: int) -> None:
        try:
            when = datetime.now(UTC) - timedelta(seconds=n)
            online.online_write_batch(
                store.config, view, rows([f"t{n}-{i}" for i in range(rows_n)], "x", when), None
            )

            async def read() -> None:  # each thread runs its own event loops
                await online.online_read_async(store.config, view, [user_key(f"t{n}-0")])

            for _ in range(5):
                asyncio.run(read())
        except BaseException as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    try:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    finally:
        sys.setswitchinterval(previous)
    assert not errors, errors
    assert online.stats["written"] == threads_n * rows_n
    assert sum(1 for _ in r.scan_iter(match="fs:user:t*")) == threads_n * rows_n
    # 40 event loops ran; what stays is the shared sync pool (at most one connection per thread).
    wait_for("the threads' asyncio connections to close", lambda: server_connections(r) <= base + threads_n)


def test_registry_is_keyed_by_connection_settings(make_repo):
    from conftest import apply_repo

    a = apply_repo(make_repo())
    b = apply_repo(make_repo(socket_timeout=7.0))
    online = RedisHexpireOnlineStore()
    assert online.client(a.config) is RedisHexpireOnlineStore().client(a.config)
    assert online.client(a.config) is not online.client(b.config)
    assert Path(a.repo_path) != Path(b.repo_path)
