"""The demo's batch builder and streaming worker, in process, on a real Redis 8.2 and real Feast."""

from __future__ import annotations

import time

import pytest
from conftest import assert_expiry, wait_for, write_window
from feast import FeatureStore

from feast_redis_hexpire.demo import repo as demo_repo
from feast_redis_hexpire.demo.builder import bulk_load
from feast_redis_hexpire.demo.core import check_prefix
from feast_redis_hexpire.demo.errors import InputError
from feast_redis_hexpire.demo.worker import StreamingWorker, next_tick
from feast_redis_hexpire.synth import batch_rows

STREAM_TS = "_ts:user_streaming_features"
BATCH_TS = "_ts:user_batch_features"


@pytest.fixture(scope="module")
def module_store(redis_server, tmp_path_factory) -> FeatureStore:
    repo = demo_repo.write_repo(tmp_path_factory.mktemp("demo") / "repo", redis_server.connection_string)
    return demo_repo.apply(repo)


@pytest.fixture
def store(module_store, redis_server):
    redis_server.client().flushall()
    demo_repo.clear_offline_rows(module_store)
    return module_store


@pytest.fixture
def r(redis_server):
    client = redis_server.client()
    yield client
    client.close()


def test_bulk_load_materializes_seed_rows_with_the_requested_key_ttl(store, r):
    with write_window() as window:
        result = bulk_load(store, 25, 120, seed=3)
    assert result.count == 25 and result.population == 25
    assert r.dbsize() == 25
    assert_expiry([r.pexpiretime("fs:user:u0025")], window, 120, "u0025")
    expected = batch_rows(25, 3).set_index("user_id")
    stored = r.hgetall("fs:user:u0007")
    assert stored[b"risk_segment"].decode() == expected.loc["u0007", "risk_segment"]
    assert int(stored[b"account_age_days"]) == expected.loc["u0007", "account_age_days"]
    # The per-call TTL does not leak into the store's configuration.
    assert store.config.online_store.key_ttl_seconds == 86400


@pytest.mark.parametrize(
    "count, ttl, field",
    [
        (0, 60, "count"),
        (-1, 60, "count"),
        ("x", 60, "count"),
        (5, 0, "ttl_seconds"),
        (5, -5, "ttl_seconds"),
        (5, "soon", "ttl_seconds"),
    ],
)
def test_bad_count_or_ttl_is_refused_and_changes_nothing(store, r, count, ttl, field):
    bulk_load(store, 3, 600)
    before = {k: r.pexpiretime(k) for k in r.keys()}
    with pytest.raises(InputError) as err:
        bulk_load(store, count, ttl)
    assert err.value.field == field
    assert {k: r.pexpiretime(k) for k in r.keys()} == before  # not deleted, not clamped, not re-pinned
    assert demo_repo.read_population(store) == ["u0001", "u0002", "u0003"]


def test_worker_picks_from_the_whole_population_not_the_first_500(store, r):
    bulk_load(store, 1200, 600)
    worker = StreamingWorker(store, lambda: demo_repo.read_population(store), users_per_tick=40, seed=5)
    for _ in range(3):
        worker.tick()
    touched = [int(k.decode().rsplit("u", 1)[1]) for k in r.keys() if r.hexists(k, STREAM_TS)]
    assert worker.counters.writes == 120 and 0 < len(touched) <= 120  # a user may be picked twice
    assert sum(n > 500 for n in touched) > len(touched) // 3  # 58% of the population is past 500
    assert worker.counters.ticks == 3 and worker.counters.failed_writes == 0


def test_worker_never_recreates_an_expired_user(store, r):
    bulk_load(store, 10, 1)  # every key expires after one second
    wait_for("the 1 s key TTLs to end every user", lambda: r.dbsize() == 0, timeout=30, interval=0.1)
    bulk_load(store, 5, 600)  # u0001..u0005 come back; u0006..u0010 stay gone
    worker = StreamingWorker(store, lambda: demo_repo.read_population(store), users_per_tick=10, seed=1)
    worker.tick()
    assert worker.counters.writes == 5 and worker.counters.skipped_missing == 5
    assert sorted(k.decode() for k in r.keys()) == [f"fs:user:u000{i}" for i in range(1, 6)]
    for i in range(1, 6):
        assert r.hexists(f"fs:user:u000{i}", STREAM_TS) and r.hexists(f"fs:user:u000{i}", BATCH_TS)


def test_partial_tick_counts_each_write_exactly(store, r, redis_server):
    """A real partial failure: an ACL user that may write only two of the four hashes."""
    bulk_load(store, 4, 600)
    r.acl_setuser(
        "limited", enabled=True, passwords=["+pw"], commands=["+@all"],
        keys=["%R~*", "~fs:user:u0001", "~fs:user:u0002"],
    )  # fmt: skip
    limited = FeatureStore(repo_path=str(store.repo_path))
    limited.config.online_store.connection_string = (
        f"{redis_server.connection_string},username=limited,password=pw"
    )
    worker = StreamingWorker(limited, lambda: demo_repo.read_population(limited), users_per_tick=4, seed=2)
    worker.tick()
    c = worker.counters
    assert (c.ticks, c.writes, c.failed_writes, c.skipped_missing) == (1, 2, 2, 0)
    assert "NOPERM" in (c.last_error or "") or "permission" in (c.last_error or "").lower()
    written = sorted(k.decode() for k in r.keys() if r.hexists(k, STREAM_TS))
    assert written == ["fs:user:u0001", "fs:user:u0002"]


def test_schedule_keeps_absolute_deadlines():
    # A tick that costs 0.3 of the interval does not push the next deadline back.
    assert next_tick(100.0, 1.0, 1, now=101.3) == (2, 0)
    assert next_tick(100.0, 1.0, 7, now=107.99) == (8, 0)
    # A tick that overruns by 2.5 intervals skips the two missed deadlines, no burst.
    assert next_tick(100.0, 1.0, 3, now=105.5) == (6, 2)


def test_pause_resume_and_wait_for_idle(store, r):
    bulk_load(store, 20, 600)
    worker = StreamingWorker(store, lambda: demo_repo.read_population(store), users_per_tick=2,
                             interval=0.05, seed=1).start()  # fmt: skip
    try:
        wait_for("two ticks", lambda: worker.counters.ticks >= 2, timeout=30)
        worker.pause()
        assert worker.wait_for_idle(10) is True
        ticks, writes = worker.counters.ticks, worker.counters.writes
        time.sleep(0.4)  # eight periods: a paused worker runs none of them
        assert (worker.counters.ticks, worker.counters.writes) == (ticks, writes)
        assert worker.status()["running"] is False
        worker.resume()
        wait_for("a tick after resume", lambda: worker.counters.ticks > ticks, timeout=30)
        assert worker.counters.writes == 2 * worker.counters.ticks
    finally:
        worker.stop()


@pytest.mark.parametrize("prefix", ["", " ", "*", "*:", "?", "[]", "{}:", "\\*"])
def test_reset_refuses_empty_or_glob_only_prefixes(prefix):
    with pytest.raises(InputError) as err:
        check_prefix(prefix)
    assert err.value.field == "key_prefix"


def test_reset_accepts_real_prefixes_with_glob_characters():
    for prefix in ("fs:", "fs:u?", "team[1]:"):
        assert check_prefix(prefix) == prefix
