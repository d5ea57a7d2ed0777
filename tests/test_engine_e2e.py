"""The Arrow materialization engine end to end (slower than tests/test_engine.py, so not in the
Feast 0.55 matrix run): through the real `feast` CLI, `feast materialize` and
`feast materialize-incremental` write through it (with its progress bar) and `feast apply`
refuses it, naming the setting, when the online store is not this plugin (Redis only: the CLI's
wiring does not depend on the server); and on a 3-master cluster it writes what Feast's default
engine writes (both servers)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from conftest import SERVER_KINDS, apply_repo
from test_engine import ENGINE, make_engine_repo, run_both, set_engine

from feast_redis_hexpire.synth import user_id
from feast_redis_hexpire.topology import LocalCluster

FEAST = Path(sys.executable).with_name("feast")


def feast(repo: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """Run the real `feast` CLI in ``repo``; ``ok``: whether it must succeed or fail."""
    run = subprocess.run(
        [str(FEAST), *args], cwd=repo, env=dict(os.environ), capture_output=True, text=True, timeout=300
    )
    assert (run.returncode == 0) == ok, f"feast {' '.join(args)}: {run.returncode}\n{run.stderr[-3000:]}"
    return run


@pytest.mark.timeout(600)  # two `feast` CLI runs on a busy machine
@pytest.mark.parametrize("server", ["redis"], indirect=True)
def test_feast_materialize_and_materialize_incremental_through_the_engine(tmp_path, server, r, monkeypatch):
    now = datetime.now(UTC)
    monkeypatch.setenv("REDIS_CONNECTION_STRING", server.connection_string)
    repo = make_engine_repo(tmp_path / "repo", server.connection_string, now)
    set_engine(repo, {"type": "feast_redis_hexpire.ArrowMaterializationEngine"})  # the short name
    apply_repo(repo)  # in this process: `feast apply` with the engine is the next test's (and a CLI start)
    start = (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    end = (now - timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%S")
    run = feast(repo, "materialize", start, end, "--views", "user_batch_features")
    assert "40/40" in run.stderr  # the engine's progress bar
    assert r.dbsize() == 40 and r.hget("fs:user:u0001", "_ts:user_batch_features")
    feast(repo, "materialize-incremental", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    assert r.hget("fs:user:u0001", "t_str") == b"low"  # user_types, written by the incremental run
    assert r.hget(f"fs:user:{user_id(1)}", "tx_count_5m") is not None  # streaming rows, 30 s old


@pytest.mark.timeout(300)
@pytest.mark.parametrize("server", ["redis"], indirect=True)
def test_feast_apply_refuses_the_engine_on_another_online_store(tmp_path, server, r, monkeypatch):
    monkeypatch.setenv("REDIS_CONNECTION_STRING", server.connection_string)
    repo = make_engine_repo(tmp_path / "repo", server.connection_string, datetime.now(UTC))
    path = repo / "feature_store.yaml"
    config = yaml.safe_load(path.read_text())
    config["online_store"] = {"type": "redis", "connection_string": server.connection_string}
    config["batch_engine"] = {"type": ENGINE}
    path.write_text(yaml.safe_dump(config))
    run = feast(repo, "apply", ok=False)
    assert "batch_engine:" in run.stderr and "online_store type is 'redis'" in run.stderr
    assert "set online_store type: feast_redis_hexpire.RedisHexpireOnlineStore" in run.stderr
    assert r.dbsize() == 0


@pytest.mark.cluster
@pytest.mark.timeout(600)  # six nodes
@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_cluster_contents_match_the_default_engine(tmp_path, kind):
    """Rows grouped by hash slot, one script call per slot group: the same hashes and TTLs."""
    import redis

    now = datetime.now(UTC)
    with LocalCluster(kind) as cluster:
        node = cluster.live_masters()[0]
        rc = redis.RedisCluster(host="127.0.0.1", port=node.port)
        try:
            repo = make_engine_repo(
                tmp_path / "repo", cluster.connection_string, now, redis_type="redis_cluster"
            )
            apply_repo(repo)
            both = run_both(rc, repo, lambda store: store.materialize(now - timedelta(days=1), now))
            (default, default_ttl, default_stats), (engine, engine_ttl, engine_stats) = both
            assert engine == default and engine_ttl == default_ttl and engine_stats == default_stats
            assert len(engine) == 40 + 6 + 10 + 3 and engine_stats["written"] > 0
        finally:
            rc.close()
