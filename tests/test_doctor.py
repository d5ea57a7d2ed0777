"""`feast-hexpire doctor` against servers deliberately misconfigured for each check (Redis 8.2 and
Valkey 9.1), through its Python API and the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import apply_repo, cli_main, write_data, write_repo
from feast import FeatureStore
from test_apply_teardown import old_redis  # noqa: F401 -- Debian's redis-server 7.0, as a fixture
from test_security import ACL_DOC, documented_acl

from feast_redis_hexpire.doctor import (
    ACL_ACK,
    ACL_ACK_AOF,
    ACL_OPTIONAL,
    ACL_REQUIRED,
    Finding,
    diagnose,
    exit_code,
)
from feast_redis_hexpire.local_redis import LocalRedis, free_port
from feast_redis_hexpire.topology import LocalCluster

SECRET = "d0ct0r-Pa55"


def by_check(findings: list[Finding], check: str) -> list[Finding]:
    found = [f for f in findings if f.check == check]
    assert found, f"no {check!r} finding in {findings}"
    return found


def one(findings: list[Finding], check: str) -> Finding:
    (found,) = by_check(findings, check)
    return found


@pytest.fixture
def config_set(r: Any) -> Iterator[Any]:
    """CONFIG SET on the test server, restored afterwards."""
    saved: dict[str, str] = {}

    def set_(name: str, value: str) -> None:
        saved.setdefault(name, r.config_get(name)[name])
        r.config_set(name, value)

    yield set_
    for name, value in saved.items():
        r.config_set(name, value)


@pytest.fixture
def loaded(store: FeatureStore) -> FeatureStore:
    store.materialize_incremental(end_date=datetime.now(UTC))
    return store


def cli(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["feast-hexpire", "doctor", "--repo", str(repo), *args],
        capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )  # fmt: skip


def in_process(capsys: pytest.CaptureFixture[str], repo: Path, *args: str) -> tuple[int, str]:
    """The same command in this process: each test runs it once as a process (:func:`cli`)."""
    return cli_main(capsys, "doctor", "--repo", str(repo), *args)


def test_healthy_server_reports_every_check(loaded, server):
    findings = diagnose(loaded)
    server_line = one(findings, "server")
    assert server_line.status == "ok"
    assert ("Redis 8.2" if server.kind == "redis" else "Valkey 9.1") in server_line.message
    assert "HEXPIRE yes, HSETEX yes, WAITAOF yes" in server_line.message
    assert one(findings, "eviction").status == "ok"
    assert one(findings, "listpack").status == "ok"
    assert one(findings, "replication").status == "ok"
    assert one(findings, "acl").status == "ok"
    ttls = {f.message.split()[0]: f for f in by_check(findings, "view ttl")}
    assert "key TTL 86400 s" in ttls["user_batch_features"].message
    assert "expire 300 s after the write" in ttls["user_streaming_features"].message
    memory = one(findings, "memory")
    assert (
        memory.status == "ok" and "B per entity" in memory.message and "20 sampled key(s)" in memory.message
    )
    # The test servers run without AOF and RDB: a warning, not an error.
    assert one(findings, "persistence").status == "warning"
    assert exit_code(findings) == 0


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_eviction_policy(store, config_set, policy):
    config_set("maxmemory-policy", policy)
    unlimited = one(diagnose(store), "eviction")
    assert unlimited.status == "ok" and "if a maxmemory is ever set" in unlimited.message
    config_set("maxmemory", str(1 << 30))
    found = one(diagnose(store), "eviction")
    assert found.status == "warning" and policy in found.message
    assert "noeviction" in found.fix
    if policy.startswith("allkeys"):
        assert "any entity hash can be evicted before its TTL" in found.message
    else:
        assert "only keys with a key TTL" in found.message and "batch view" in found.message


def test_persistence(store, config_set):
    found = one(diagnose(store), "persistence")
    assert found.status == "warning" and "AOF and RDB are both off" in found.message
    config_set("save", "3600 1")
    found = one(diagnose(store), "persistence")
    assert found.status == "ok" and "RDB snapshots on" in found.message
    config_set("save", "")
    config_set("appendonly", "yes")
    assert one(diagnose(store), "persistence").message == "AOF on"


def test_listpack_limits_against_the_widest_hash_and_values(loaded, config_set):
    config_set("hash-max-listpack-entries", "8")  # the sample's user hash has 13 fields
    found = one(diagnose(loaded), "listpack")
    assert found.status == "warning" and "widest hash 13 fields" in found.message
    assert "more than 8 fields" in found.message and "hash-max-listpack-entries 13" in found.fix
    config_set("hash-max-listpack-entries", "512")
    config_set("hash-max-listpack-value", "10")  # sampled values are longer than 10 bytes
    found = one(diagnose(loaded), "listpack")
    assert found.status == "warning" and "longer than 10 B" in found.message


def test_connected_to_a_replica_is_an_error(tmp_path, server, r, monkeypatch):
    with LocalRedis(server.kind, args=["--replicaof", "127.0.0.1", str(server.port)]) as replica:
        repo = write_repo(tmp_path / "repo", server.connection_string)
        write_data(repo, count=3)
        store = apply_repo(repo)
        deadline = time.monotonic() + 60
        while r.info("replication").get("slave0", {}).get("state") != "online":
            found = one(diagnose(store), "replication")  # still syncing: "not online", a warning
            assert (
                found.status == "warning" or r.info("replication").get("slave0", {}).get("state") == "online"
            )
            assert time.monotonic() < deadline, "the replica did not come online"
            time.sleep(0.1)
        found = one(diagnose(store), "replication")
        assert found.status == "ok" and f"1 replica(s) online: 127.0.0.1:{replica.port}" in found.message
        replica_repo = write_repo(tmp_path / "replica", replica.connection_string)
        (replica_repo / "data").rmdir()
        (replica_repo / "data").symlink_to(repo / "data")  # the same registry
        findings = diagnose(FeatureStore(repo_path=str(replica_repo)))
        found = one(findings, "replication")
        assert found.status == "error" and "connected to a replica" in found.message
        assert exit_code(findings) == 1
        assert cli(replica_repo).returncode == 1


def test_acl_of_the_configured_user(tmp_path, server, r, loaded):
    store = loaded
    name = f"doc-{uuid.uuid4().hex[:6]}"
    r.execute_command(*documented_acl(name, SECRET))
    try:
        repo = write_repo(tmp_path / "acl", f"{server.connection_string},username={name},password={SECRET}")
        (repo / "data").rmdir()
        (repo / "data").symlink_to(Path(store.repo_path) / "data")
        as_user = FeatureStore(repo_path=str(repo))
        findings = diagnose(as_user)
        assert one(findings, "acl").status == "ok", one(findings, "acl")
        # No CONFIG for this user: the checks that need it say so instead of failing.
        assert "may not run CONFIG GET" in one(findings, "listpack").message
        memory = one(findings, "memory")
        assert memory.status == "warning" and "MEMORY USAGE refused" in memory.message
        assert SECRET not in json.dumps([f.as_dict() for f in findings])
        # A command run inside the write script, then an inspect-only command.
        r.execute_command("ACL", "SETUSER", name, "-hpexpire")
        found = one(diagnose(as_user), "acl")
        assert found.status == "error" and "hpexpire" in found.message and "docs/ACL.md" in found.fix
        r.execute_command("ACL", "SETUSER", name, "+hpexpire", "-hgetall")
        found = one(diagnose(as_user), "acl")
        assert found.status == "warning" and "hgetall" in found.message
        # A key pattern that does not cover the prefix.
        r.execute_command("ACL", "SETUSER", name, "+hgetall", "resetkeys", "~other:*")
        found = one(diagnose(as_user), "acl")
        assert (
            found.status == "error" and "scripts on fs:*" in found.message and "access a key" in found.message
        )
        # No EVALSHA (so the check script cannot run) and no ACL DRYRUN: said, not crashed.
        r.execute_command("ACL", "SETUSER", name, "~fs:*", "-evalsha")
        found = one(diagnose(as_user), "acl")
        assert found.status == "error" and "may not run the store's scripts" in found.message
        assert "ACL DRYRUN" in found.message
    finally:
        r.execute_command("ACL", "DELUSER", name)


def test_acl_commands_match_docs():
    documented = {t[1:] for t in documented_acl("x", "y") if t.startswith("+")}
    checked = {"|".join(c[:2]) if c[0] in ("command", "script", "client", "object") else c[0]
               for c in (*ACL_REQUIRED, *ACL_OPTIONAL)}  # fmt: skip
    assert checked == documented


def test_ack_commands_match_docs():
    line = next(x for x in ACL_DOC.read_text().splitlines() if x.startswith("ACL SETUSER feast +wait"))
    assert {t[1:] for t in line.split()[3:]} == {c[0] for c in (*ACL_ACK, *ACL_ACK_AOF)}


def test_ack_settings_replicas_aof_and_acl(tmp_path, server, r, loaded):
    # With ack_replicas / ack_aof set, doctor checks each master's online replicas, its AOF, and
    # that the configured user may run WAIT / WAITAOF (a user with only the base ACL may not).
    name = f"ack-{uuid.uuid4().hex[:6]}"
    r.execute_command(*documented_acl(name, SECRET))

    def as_user(label: str, **settings: Any) -> FeatureStore:
        connection = f"{server.connection_string},username={name},password={SECRET}"
        repo = write_repo(tmp_path / label, connection, **settings)
        (repo / "data").rmdir()
        (repo / "data").symlink_to(Path(loaded.repo_path) / "data")  # the applied registry
        return FeatureStore(repo_path=str(repo))

    try:
        plain = diagnose(as_user("plain"))
        assert one(plain, "acl").status == "ok" and not [f for f in plain if f.check == "acks"]
        waits = as_user("wait", ack_replicas=1, ack_timeout_seconds=0.5)
        findings = diagnose(waits)
        found = one(findings, "acks")
        assert (
            found.status == "error"
            and "ack_replicas: 1, but the master has 0 replica(s) online" in found.message
        )
        found = one(findings, "acl")
        assert found.status == "error" and "may not run wait on fs:*" in found.message, found
        assert exit_code(findings) == 1
        r.execute_command("ACL", "SETUSER", name, "+wait")
        with LocalRedis(server.kind, args=["--replicaof", "127.0.0.1", str(server.port)]) as replica:
            deadline = time.monotonic() + 60
            while r.info("replication").get("slave0", {}).get("state") != "online":
                assert time.monotonic() < deadline, "the replica did not come online"
                time.sleep(0.05)
            findings = diagnose(waits)
            assert one(findings, "acl").status == "ok", one(findings, "acl")
            found = one(findings, "acks")
            assert found.status == "ok" and f"1 replica(s) online (127.0.0.1:{replica.port})" in found.message
            aof = diagnose(as_user("aof", ack_replicas=1, ack_aof=True, ack_timeout_seconds=0.5))
            found = one(aof, "acl")
            assert found.status == "error" and "may not run waitaof" in found.message, found
            found = one(aof, "acks")
            assert (
                found.status == "error" and "ack_aof: true, but the master runs without AOF" in found.message
            )
        assert SECRET not in json.dumps([f.as_dict() for f in findings])
    finally:
        r.execute_command("ACL", "DELUSER", name)


def test_view_ttls_as_the_store_applies_them(make_repo):
    store = apply_repo(make_repo(key_ttl_seconds=None))
    found = {f.message.split()[0]: f for f in by_check(diagnose(store), "view ttl")}
    assert found["user_batch_features"].status == "warning"
    assert "no key TTL" in found["user_batch_features"].message
    store = apply_repo(make_repo(key_ttl_seconds=60, stream_field_ttl_seconds=600, ttl_from="event"))
    found = {f.message.split()[0]: f for f in by_check(diagnose(store), "view ttl")}
    assert "key TTL 60 s" in found["user_batch_features"].message
    stream = found["user_streaming_features"]
    assert stream.status == "warning" and "600 s after the event time" in stream.message
    assert "user_batch_features (60 s) is shorter" in stream.message


def test_unreachable_server_is_one_line(tmp_path, monkeypatch, capsys):
    address = f"127.0.0.1:{free_port()}"
    repo = write_repo(tmp_path / "repo", address, retries=0, socket_connect_timeout=2)
    done = cli(repo)
    assert done.returncode == 2
    assert done.stdout.strip().count("\n") == 0 and f"cannot reach Redis at {address}" in done.stdout
    code, out = in_process(capsys, repo, "--json")
    assert code == 2 and json.loads(out)["ok"] is False


def test_server_without_hash_field_expiration_is_one_line(tmp_path, old_redis):  # noqa: F811
    address, _ = old_redis
    repo = write_repo(tmp_path / "repo", address)
    done = cli(repo)
    assert done.returncode == 2, done.stderr
    assert done.stdout.strip().count("\n") == 0
    assert "has no HEXPIRE" in done.stdout and address in done.stdout


def test_cli_json_and_exit_code(loaded, config_set, capsys):
    repo = Path(loaded.repo_path)
    done = cli(repo, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    expected = {"server", "eviction", "persistence", "listpack", "replication", "acl", "view ttl", "memory"}
    assert {c["check"] for c in report["checks"]} >= expected
    assert all(set(c) == {"check", "status", "message", "fix"} for c in report["checks"])
    code, text = in_process(capsys, repo)
    assert code == 0 and text.startswith("OK       server")


@pytest.mark.cluster
@pytest.mark.parametrize("kind", ["redis", "valkey"])
def test_cluster_slot_coverage(tmp_path, kind, monkeypatch):
    with LocalCluster(kind, replicas_per_master=0) as cluster:
        repo = write_repo(tmp_path / "repo", cluster.connection_string, redis_type="redis_cluster")
        write_data(repo, count=5)
        store = apply_repo(repo)
        findings = diagnose(store)
        found = one(findings, "cluster")
        assert found.status == "ok" and "16384 of 16384 slots assigned" in found.message
        assert len(by_check(findings, "server")) == 3  # every primary is checked
        # One master gives up some of its slots: nobody serves them.
        first = cluster.masters[0].client()
        first.execute_command("CLUSTER", "DELSLOTSRANGE", 0, 99)
        for node in cluster.masters[1:]:  # the others forget them too (DELSLOTS is per node)
            node.client().execute_command("CLUSTER", "DELSLOTSRANGE", 0, 99)
        findings = diagnose(FeatureStore(repo_path=str(repo)))
        found = one(findings, "cluster")
        assert found.status == "error" and exit_code(findings) == 1
