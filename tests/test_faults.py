"""Faults on real servers: down at start, killed mid-materialization, restarted with AOF on, a
server that accepts connections but never answers, and one whose accept queue is full.

Each error must name host:port (and, for writes, what was not written); retries must be bounded
by the configured ``retries``/timeouts; rerunning a failed materialization must converge.
"""

from __future__ import annotations

import random
import signal
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from conftest import SERVER_KINDS, apply_repo, write_data, write_repo

from feast_redis_hexpire.codec import encode_ts
from feast_redis_hexpire.exceptions import StoreUnavailableError
from feast_redis_hexpire.local_redis import LocalRedis, free_port
from feast_redis_hexpire.synth import BATCH_FEATURES, batch_rows, streaming_frame, user_id

AOF = ["--appendonly", "yes", "--appendfsync", "always"]


class Blackhole:
    """A TCP listener on loopback that accepts connections and never answers; counts them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        for conn in self.accepted:
            conn.close()
        self.sock.close()


def expected_hash(row: Any, ts: datetime) -> dict[bytes, bytes]:
    """The batch view's fields of one synth row, as the text encoding stores them."""
    out = {b"_ts:user_batch_features": str(encode_ts(ts)).encode()}
    for name in BATCH_FEATURES:
        value = row[name]
        text = repr(float(value)) if name == "avg_amount_30d" else str(value)
        out[name.encode()] = text.encode()
    return out


def test_server_down_at_start(tmp_path):
    port = free_port()  # nothing listens there
    repo = write_repo(tmp_path / "repo", f"127.0.0.1:{port}", retries=1)
    write_data(repo)
    with pytest.raises(StoreUnavailableError, match=f"cannot reach Redis at 127.0.0.1:{port}"):
        apply_repo(repo)


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_server_gone_after_apply_every_operation_names_the_address(tmp_path, kind):
    with LocalRedis(kind) as server:
        repo = write_repo(tmp_path / "repo", server.connection_string, retries=1)
        write_data(repo, count=5)
        store = apply_repo(repo)
    where = server.connection_string  # stopped now
    with pytest.raises(StoreUnavailableError) as err:
        store.materialize_incremental(end_date=datetime.now(UTC))
    text = str(err.value)
    assert f"to {where} failed" in text and "rows 0..4 of this batch may not be written" in text
    with pytest.raises(StoreUnavailableError, match=f"to {where} failed.*rows 0..1 "):
        store.push("user_events_push", streaming_frame(["u0001", "u0002"], random.Random(1)))
    with pytest.raises(redis.exceptions.ConnectionError, match=where):
        store.get_online_features(
            features=["user_batch_features:risk_segment"], entity_rows=[{"user_id": "u1"}]
        )


@pytest.mark.parametrize("retries", [0, 3])
def test_unresponsive_server_retries_exactly_as_configured(tmp_path, retries):
    hole = Blackhole()
    try:
        repo = write_repo(tmp_path / "repo", f"127.0.0.1:{hole.port}", retries=retries, socket_timeout=0.2)
        write_data(repo, count=2)
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as err:
            apply_repo(repo)
        elapsed = time.monotonic() - started
        assert f"127.0.0.1:{hole.port}" in str(err.value) and "Timeout" in str(err.value)
        # One connection per attempt: the first try plus `retries`, then it gives up.
        assert len(hole.accepted) == retries + 1
        # Each attempt waited its socket_timeout (a lower bound: a slow machine only adds to it);
        # the upper bound is the test's timeout, not a guess at the machine's speed.
        assert (retries + 1) * 0.2 <= elapsed
    finally:
        hole.close()


def test_connect_timeout_is_configurable(tmp_path):
    # A listener that never accepts, with its accept queue full: the kernel drops further SYNs,
    # so connecting hangs until socket_connect_timeout.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.2)
    try:
        for retries in (0, 2):
            repo = write_repo(
                tmp_path / f"repo{retries}", f"127.0.0.1:{port}",
                retries=retries, socket_connect_timeout=0.3, socket_timeout=30,
            )  # fmt: skip
            write_data(repo, count=2)
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}.*Timeout connecting"):
                apply_repo(repo)
            elapsed = time.monotonic() - started
            # Each attempt waited its connect timeout; socket_timeout=30 never came into play (a
            # single attempt bounded by it would take 30 s: a bound far above any machine's slowness).
            assert (retries + 1) * 0.3 <= elapsed < 30
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def _kill_when(server: LocalRedis, probe: Any, keys: int, done: threading.Event) -> None:
    """SIGKILL the server once it holds ``keys`` keys (mid-materialization)."""
    while not done.is_set():
        try:
            if probe.dbsize() >= keys:
                assert server.process is not None
                server.process.send_signal(signal.SIGKILL)
                return
        except redis.exceptions.RedisError:
            return
        time.sleep(0.002)


@pytest.mark.timeout(600)  # 30000 rows, twice, with fsync always
@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_killed_mid_materialization_aof_restart_rerun_converges(tmp_path, kind):
    users, pushed = 30000, 50
    ts = datetime.now(UTC).replace(microsecond=123456) - timedelta(minutes=10)
    data_dir = tmp_path / "data"
    server = LocalRedis(kind, data_dir=str(data_dir), args=AOF).start()
    try:
        repo = write_repo(tmp_path / "repo", server.connection_string, write_batch_size=100, retries=2)
        write_data(repo, count=users, event_time=ts)
        store = apply_repo(repo)
        probe = server.client(socket_timeout=2)
        # Acknowledged streaming writes before the crash: their values and field TTLs must survive.
        store.push("user_events_push", streaming_frame([user_id(i) for i in range(1, pushed + 1)],
                                                       random.Random(3)))  # fmt: skip
        streamed = {user_id(i): probe.hgetall(f"fs:user:{user_id(i)}") for i in range(1, pushed + 1)}

        done = threading.Event()
        killer = threading.Thread(target=_kill_when, args=(server, probe, users // 5, done))
        killer.start()
        try:
            with pytest.raises(StoreUnavailableError) as err:
                store.materialize_incremental(end_date=datetime.now(UTC))
        finally:
            done.set()
            killer.join()
        text = str(err.value)
        assert f"to {server.connection_string} failed" in text and "may not be written" in text
        first_unwritten = int(text.split("rows ")[1].split("..")[0])
        server.process.wait()  # type: ignore[union-attr]
        server.process = None

        # Restart on the same port and directory: AOF (fsync always) replays what was acknowledged.
        restarted = LocalRedis(kind, port=server.port, data_dir=str(data_dir), args=AOF).start()
        server = restarted
        probe = server.client()
        present = probe.dbsize()
        assert present >= max(first_unwritten, pushed), "an acknowledged write was lost"
        print(
            f"\n{kind}: SIGKILL during materialization of {users} rows; error: rows "
            f"{first_unwritten}.. not written; after AOF restart {present} keys, 0 acknowledged lost"
        )
        for uid, fields in streamed.items():
            key = f"fs:user:{uid}"
            assert {k: v for k, v in probe.hgetall(key).items() if k in fields} == fields
            ttls = probe.httl(key, *[k for k in fields])
            assert all(0 < t <= 300 for t in ttls), f"{key}: streaming field without TTL after replay"

        # The same FeatureStore (its cached client reconnects) reruns the materialization.
        store.materialize_incremental(end_date=datetime.now(UTC))
        frame = batch_rows(users, 1, ts)
        assert probe.dbsize() == users
        with probe.pipeline(transaction=False) as pipe:
            for uid in frame["user_id"]:
                pipe.hgetall(f"fs:user:{uid}")
                pipe.ttl(f"fs:user:{uid}")
            replies = pipe.execute()
        for i, row in enumerate(frame.to_dict("records")):
            stored, ttl = replies[2 * i], replies[2 * i + 1]
            want = {**expected_hash(row, ts), **streamed.get(row["user_id"], {})}
            assert stored == want, row["user_id"]
            assert 0 < ttl <= 86400, f"{row['user_id']}: key TTL {ttl}"
    finally:
        server.stop()


def test_restart_keeps_ttls_with_aof(tmp_path):
    """A clean restart with AOF keeps key TTLs and per-field TTLs (no field loses its TTL)."""
    data_dir = tmp_path / "data"
    with LocalRedis("redis", data_dir=str(data_dir), args=AOF) as server:
        repo = write_repo(tmp_path / "repo", server.connection_string)
        write_data(repo, count=10)
        store = apply_repo(repo)
        store.materialize_incremental(end_date=datetime.now(UTC))
        store.push("user_events_push", streaming_frame(["u0001", "u0002"], random.Random(5)))
        before = {k: server.client().hgetall(k) for k in server.client().keys("fs:*")}
        streaming = ("tx_count_5m", "_ts:user_streaming_features")
        key_expiries = {k: server.client().pexpiretime(k) for k in before}
        field_expiries = server.client().hpexpiretime("fs:user:u0001", *streaming)
    with LocalRedis("redis", port=server.port, data_dir=str(data_dir), args=AOF) as server:
        client = server.client()
        assert {k: client.hgetall(k) for k in client.keys("fs:*")} == before
        # The absolute expiry times survive the restart exactly (no TTL reset, none lost).
        assert all(t > 0 for t in key_expiries.values()) and all(t > 0 for t in field_expiries)
        assert {k: client.pexpiretime(k) for k in before} == key_expiries
        assert client.hpexpiretime("fs:user:u0001", *streaming) == field_expiries
        assert client.httl("fs:user:u0001", "risk_segment") == [-1]
        result = store.get_online_features(
            features=["user_batch_features:risk_segment", "user_streaming_features:tx_count_5m"],
            entity_rows=[{"user_id": "u0001"}],
        ).to_dict()
        assert result["tx_count_5m"][0] == int(before[b"fs:user:u0001"][b"tx_count_5m"])
